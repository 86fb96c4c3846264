"""Builds the engines a server runs: the torch runner always, vLLM for plain requests if chosen."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from guard.config import MAX_CANDIDATES
from guard.model_runner import ModelRunner
from server.config import ServerConfig
from server.engines.base import Engine
from server.engines.dispatcher import LeastLoadedDispatcher
from server.engines.torch_engine import TorchEngine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Engines:
    """The tokenizer shared by both paths, and the engine for each kind of request."""

    tokenizer: PreTrainedTokenizerBase
    plain: Engine
    guard: Engine


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


def build_torch_engines(
    model_path: Path, config: ServerConfig, tokenizer: PreTrainedTokenizerBase
) -> Engine:
    """A slot-cache runner per device, each with its worker thread, behind one dispatcher."""
    engines = [
        TorchEngine(
            ModelRunner.load(
                model_path,
                num_slots=config.max_num_seqs,
                max_model_len=config.max_model_len,
                max_candidates=MAX_CANDIDATES,
                device=device,
                dtype=config.dtype,
            ),
            tokenizer,
        )
        for device in runner_devices(config)
    ]
    return engines[0] if len(engines) == 1 else LeastLoadedDispatcher(engines)


def build_engines(model_path: Path, config: ServerConfig) -> Engines:
    """The torch engine(s) for guarded requests and the plain engine chosen by --plain-engine."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    torch_engine = build_torch_engines(model_path, config, tokenizer)
    if choose_plain_engine(config.plain_engine) == "torch":
        return Engines(tokenizer, torch_engine, torch_engine)
    from server.engines.vllm_engine import VllmEngine

    plain = VllmEngine.start(
        str(model_path),
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        tensor_parallel_size=config.tensor_parallel_size,
        data_parallel_size=config.data_parallel_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        enforce_eager=config.enforce_eager,
        seed=config.seed,
    )
    return Engines(tokenizer, plain, torch_engine)
