"""Server settings, filled from `guardserve serve` flags (names mirror `vllm serve`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ServerConfig(BaseModel):
    """Everything `guardserve serve` can be told; each field's description is its flag's help
    (after "; None: " comes what a None default means)."""

    model: str | None = Field(
        None,
        description="Model name, HF folder or .gguf; None: the embedded default, "
        "smollm2-135m-instruct-balto.",
    )
    served_model_name: list[str] | None = Field(
        None,
        description="Names the API answers to; None: the model's name, or its folder's or "
        "file's name without .gguf.",
    )
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    api_key: str | None = Field(
        None,
        description="Bearer key that /v1/* requires; None: $GUARDSERVE_API_KEY, else no key.",
    )
    max_model_len: int | None = Field(
        None,
        ge=16,
        description="Context length of both engines; None: the model's, within the torch KV "
        "cache budget.",
    )
    max_num_seqs: int = Field(
        16,
        ge=1,
        le=1024,
        description="Sequences decoded at once per engine, and the most one request may ask "
        "for: n x guard chains.",
    )
    max_prefill_tokens: int = Field(
        2048,
        ge=1,
        le=1 << 20,
        description="Prompt tokens the torch engine puts into its cache per step (chunked "
        "prefill): lower keeps running streams moving while long prompts arrive, higher "
        "gives a burst of new requests their first token sooner.",
    )
    prefix_cache_bytes: int = Field(
        256 << 20,
        ge=0,
        description="Memory of each torch runner for prompts kept after their requests end: a "
        "new prompt that starts with a kept one (a system prompt, a document asked about "
        "again) prefills only the rest; 0 keeps none.",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Intra-op threads of each torch runner's worker thread (every other "
        "server thread runs its torch work on one); None: torch's own count.",
    )
    max_queue: int = Field(
        256,
        ge=0,
        description="Sequences admitted to wait beyond --max-num-seqs; past them a request gets "
        "429.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor-parallel GPUs.")
    data_parallel_size: int = Field(1, ge=1, description="vLLM data-parallel replicas.")
    gpu_memory_utilization: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="vLLM's share of GPU memory, on GPUs without --kv-cache-memory-bytes.",
    )
    kv_cache_memory_bytes: int | None = Field(
        None,
        ge=1 << 20,
        description="KV cache bytes of vLLM and of each torch runner; None: for vLLM 1 GiB on "
        "CPU and --gpu-memory-utilization on GPUs, for the torch slot cache 4 GiB, which it "
        "grows to on demand.",
    )
    plain_engine: Literal["vllm", "torch", "auto"] = Field(
        "auto", description="Engine of unguarded requests; auto: vLLM when installed."
    )
    guard_default: Literal["on", "off"] = Field(
        "off",
        description="Guard the requests that say nothing about it, in neither the body's guard "
        "field nor an X-Guard header.",
    )
    guard_probe: str = Field(
        "auto",
        description="Folder with guard_probe.json (and guard_calibration.json); auto: the "
        "model folder's, else the one committed for the served model; none: no probe.",
    )
    device: str = Field(
        "auto", description="Torch runner device: auto (every visible GPU, else cpu), cpu, cuda:N."
    )
    torch_runners: int | None = Field(
        None,
        ge=1,
        description="Torch runners, behind a least-loaded dispatcher; None: one per visible GPU "
        "with --device auto, else one.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Dtype of both engines; auto: bfloat16 on CUDA, else float32.",
    )
    enforce_eager: bool = Field(
        True,
        description="Run vLLM eagerly, a quick start; --no-enforce-eager lets vLLM compile the "
        "model and capture CUDA graphs, minutes of warm-up.",
    )
    seed: int = Field(0, description="Seed of vLLM's engine; requests may bring their own.")
    request_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds a request may run before the server cuts it off: a 504, or an "
        "error event that ends its stream.",
    )
    shutdown_grace_period: float = Field(
        30.0, ge=0, description="Seconds SIGTERM waits for in-flight requests to finish."
    )
    max_body_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="Largest accepted request body in bytes; a larger one gets 413.",
    )
    cache_dir: str | None = Field(
        None,
        description="Where models are prepared; None: $GUARDSERVE_CACHE, else ~/.cache/guardserve.",
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
