"""Server settings, filled from `guardserve serve` flags (names mirror `vllm serve`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ServerConfig(BaseModel):
    """Everything `guardserve serve` can be told; each field's description is its flag's help."""

    model: str | None = Field(None, description="HF folder or .gguf; default: the embedded model.")
    served_model_name: list[str] | None = Field(
        None, description="Names the API answers to; default: the model folder's name."
    )
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    api_key: str | None = Field(
        None, description="Bearer key /v1/* requires; default: $GUARDSERVE_API_KEY, else none."
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Context length; default: the model's, within the KV budget."
    )
    max_num_seqs: int = Field(
        16,
        ge=1,
        le=1024,
        description="Sequences decoded at once per engine; also the most one request may ask "
        "for (n x guard chains).",
    )
    max_prefill_tokens: int = Field(
        2048,
        ge=1,
        le=1 << 20,
        description="Prompt tokens the torch engine puts into its cache per step (chunked "
        "prefill): lower keeps running streams moving while long prompts arrive, higher "
        "gives a burst of new requests their first token sooner.",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Intra-op threads of each torch runner; default: torch's (the CPU count). "
        "The server's other threads run their torch work on one thread.",
    )
    max_queue: int = Field(
        256, ge=0, description="Sequences allowed to wait beyond max_num_seqs before 429."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor-parallel GPUs.")
    data_parallel_size: int = Field(1, ge=1, description="vLLM data-parallel replicas.")
    gpu_memory_utilization: float = Field(
        0.1, gt=0.0, le=1.0, description="vLLM's share of GPU memory (GPUs only)."
    )
    kv_cache_memory_bytes: int | None = Field(
        None,
        ge=1 << 20,
        description="KV cache bytes of each engine. vLLM's default: 1 GiB on CPU, the share "
        "on GPUs; the torch slot cache's default: 4 GiB (it grows to that on demand).",
    )
    plain_engine: Literal["vllm", "torch", "auto"] = Field(
        "auto", description="Engine of unguarded requests; auto: vLLM when installed."
    )
    guard_default: Literal["on", "off"] = Field(
        "off", description="Guard requests that say nothing about it (body field or X-Guard)."
    )
    guard_probe: str = Field(
        "auto",
        description="Folder with guard_probe.json (and guard_calibration.json); auto: the "
        "model folder's, else the one committed for the served model; none: no probe.",
    )
    device: str = Field("auto", description="Torch runner device: auto, cpu, cuda:N.")
    torch_runners: int | None = Field(
        None, ge=1, description="Torch runners; default one per visible GPU, or one on CPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Dtype of both engines; auto: bf16 on CUDA, else fp32.",
    )
    enforce_eager: bool = Field(
        True, description="Run vLLM eagerly; --no-enforce-eager allows CUDA graphs."
    )
    seed: int = Field(0, description="Seed of vLLM's engine (requests may bring their own).")
    request_timeout: float = Field(
        600.0, gt=0, description="Seconds a request may take before it is cut off (504)."
    )
    shutdown_grace_period: float = Field(
        30.0, ge=0, description="Seconds SIGTERM waits for in-flight requests to finish."
    )
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="Largest accepted request body in bytes (413 past it)."
    )
    cache_dir: str | None = Field(
        None, description="Where models are prepared; default: $GUARDSERVE_CACHE or ~/.cache."
    )
    exit_on_load_failure: bool = Field(
        True,
        description="Exit with status 1 when the model cannot load, as `vllm serve` does, so a "
        "supervisor restarts it; --no-exit-on-load-failure stays up, /health and chat 503.",
    )
    stream_keepalive_interval: float = Field(
        10.0,
        gt=0,
        description="Seconds a stream may stay silent (a guarded answer held until checked) "
        "before it sends an SSE comment line, so proxies' idle timeouts do not cut it.",
    )
