"""Builds the engines a server runs: the torch runner always, vLLM for plain requests if chosen."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from engine.kv_cache import kv_bytes_per_token
from engine.model_runner import ModelRunner, pick_device, pick_dtype
from guard.config import MAX_CANDIDATES
from guard.probe import GuardAssets, find_guard_dir
from server.config import ServerConfig
from server.engines.base import Engine, GuardEngine
from server.engines.dispatcher import LeastLoadedDispatcher
from server.engines.torch_engine import TorchEngine

logger = logging.getLogger(__name__)


# vLLM on CPU sizes its KV cache as a share of RAM, which fails or wastes memory depending on
# the machine; a fixed byte budget behaves the same everywhere (45 KiB a token in fp32 for the
# default model: 1 GiB holds ~23k tokens across all running requests).
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30
# The torch runner's slot cache holds max_num_seqs rows as long as the longest live sequence;
# it grows on demand up to this many bytes, which bounds max_model_len (fp32 default model,
# 16 slots: 4 GiB allow ~5.8k tokens; bf16 on a GPU: the model's full 8192).
DEFAULT_TORCH_KV_CACHE_BYTES = 4 << 30
# Context of a model whose config does not say, and the shortest context worth serving.
DEFAULT_MAX_MODEL_LEN = 2048
MIN_MODEL_LEN = 16


@dataclass(frozen=True)
class Engines:
    """The tokenizer shared by both paths, the engine for each kind of request, their dtype
    and the context length they serve."""

    tokenizer: PreTrainedTokenizerBase
    plain: Engine
    guard: GuardEngine
    dtype: str
    max_model_len: int
    guard_assets: GuardAssets | None = None


def choose_plain_engine(choice: str) -> str:
    """'auto' means vLLM when it is installed, else the torch runner."""
    if choice == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "torch"
    return choice


def runner_devices(config: ServerConfig) -> list[str]:
    """One device per torch runner: every visible GPU under 'auto', else the one asked for."""
    if config.device == "auto" and torch.cuda.is_available():
        count = config.torch_runners or torch.cuda.device_count()
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(count)]
    device = "cpu" if config.device == "auto" else config.device
    return [device] * (config.torch_runners or 1)


def engine_dtype(config: ServerConfig) -> str:
    """The one dtype both engines run in, so toggling guard never changes the numerics."""
    device = pick_device(runner_devices(config)[0])
    return str(pick_dtype(config.dtype, device)).removeprefix("torch.")


def vllm_kv_cache_bytes(config: ServerConfig) -> int | None:
    """vLLM's KV budget in bytes: as given, else a fixed default on CPU, else None (the share)."""
    if config.kv_cache_memory_bytes is not None:
        return config.kv_cache_memory_bytes
    return None if torch.cuda.is_available() else DEFAULT_CPU_KV_CACHE_BYTES


def load_guard_assets(model_path: Path, config: ServerConfig, name: str) -> GuardAssets | None:
    """The model's hallucination probe and calibration, as --guard-probe says."""
    if config.guard_probe == "none":
        return None
    if config.guard_probe != "auto":
        return GuardAssets.load(Path(config.guard_probe))
    directory = find_guard_dir(model_path, name)
    return None if directory is None else GuardAssets.load(directory)


def torch_kv_cache_bytes(config: ServerConfig) -> int:
    """The torch slot cache's byte budget: --kv-cache-memory-bytes, else a fixed default."""
    return config.kv_cache_memory_bytes or DEFAULT_TORCH_KV_CACHE_BYTES


def resolve_max_model_len(model_path: Path, config: ServerConfig) -> int:
    """The context served: --max-model-len, else the model's own, bounded by the KV budget.

    A max-length sequence in every torch slot (plus the candidate positions of a tree step and
    the scratch one) must fit the torch budget; an explicit length that does not is an error.
    """
    model_config = AutoConfig.from_pretrained(str(model_path))
    per_token = kv_bytes_per_token(model_config, getattr(torch, engine_dtype(config)))
    budget = torch_kv_cache_bytes(config)
    fits = budget // (per_token * config.max_num_seqs) - MAX_CANDIDATES - 1
    if config.max_model_len is not None:
        if config.max_model_len > fits:
            raise ValueError(
                f"--max-model-len {config.max_model_len} with {config.max_num_seqs} sequences "
                f"needs more than the {budget} bytes of KV cache (at most {fits} tokens fit): "
                "raise --kv-cache-memory-bytes or lower --max-num-seqs or --max-model-len"
            )
        return config.max_model_len
    native = int(getattr(model_config, "max_position_embeddings", 0) or DEFAULT_MAX_MODEL_LEN)
    chosen = min(native, fits)
    if chosen < MIN_MODEL_LEN:
        raise ValueError(
            f"the KV cache budget of {budget} bytes holds only {fits} tokens per sequence: "
            "raise --kv-cache-memory-bytes or lower --max-num-seqs"
        )
    logger.info(
        "max_model_len %d (model: %d; %d sequences of %d B a token in %d B of torch KV cache)",
        chosen,
        native,
        config.max_num_seqs,
        per_token,
        budget,
    )
    return chosen


def build_torch_engines(
    model_path: Path,
    config: ServerConfig,
    tokenizer: PreTrainedTokenizerBase,
    dtype: str,
    max_model_len: int,
    assets: GuardAssets | None,
) -> GuardEngine:
    """A slot-cache runner per device, each with its worker thread, behind one dispatcher.

    Each runner's metrics carry its own `engine` label (`torch-<device>`, numbered when several).
    """
    devices = runner_devices(config)
    engines = [
        TorchEngine(
            ModelRunner.load(
                model_path,
                num_slots=config.max_num_seqs,
                max_model_len=max_model_len,
                max_candidates=MAX_CANDIDATES,
                device=device,
                dtype=dtype,
                probe_layer=None if assets is None else assets.probe.layer,
            ),
            tokenizer,
            label=f"torch-{device}" if len(devices) == 1 else f"torch-{index}-{device}",
            probe=None if assets is None else assets.probe,
            max_prefill_tokens=config.max_prefill_tokens,
            prefix_cache_bytes=config.prefix_cache_bytes,
            threads=config.torch_threads,
        )
        for index, device in enumerate(devices)
    ]
    return engines[0] if len(engines) == 1 else LeastLoadedDispatcher(engines)


def build_engines(model_path: Path, config: ServerConfig, name: str) -> Engines:
    """The torch engine(s) for guarded requests and the plain engine chosen by --plain-engine.

    `name` is the served model name, which finds the probe committed for the default model.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    dtype = engine_dtype(config)
    max_model_len = resolve_max_model_len(model_path, config)
    assets = load_guard_assets(model_path, config, name)
    if assets is not None:
        logger.info("guard probe: layer %d from %s", assets.probe.layer, assets.directory)
    torch_engine = build_torch_engines(model_path, config, tokenizer, dtype, max_model_len, assets)
    if choose_plain_engine(config.plain_engine) == "torch":
        return Engines(tokenizer, torch_engine, torch_engine, dtype, max_model_len, assets)
    from server.engines.vllm_engine import VllmEngine

    plain = VllmEngine.start(
        str(model_path),
        max_model_len=max_model_len,
        max_num_seqs=config.max_num_seqs,
        tensor_parallel_size=config.tensor_parallel_size,
        data_parallel_size=config.data_parallel_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        kv_cache_memory_bytes=vllm_kv_cache_bytes(config),
        dtype=dtype,
        enforce_eager=config.enforce_eager,
        seed=config.seed,
    )
    return Engines(tokenizer, plain, torch_engine, dtype, max_model_len, assets)
