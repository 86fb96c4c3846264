"""Builds the engines a server runs: the torch runner always, vLLM for plain requests if chosen."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from guard.config import MAX_CANDIDATES
from guard.model_runner import ModelRunner
from server.config import ServerConfig
from server.engines.base import Engine
from server.engines.torch_engine import TorchEngine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Engines:
    """The tokenizer shared by both paths, and the engine for each kind of request."""

    tokenizer: PreTrainedTokenizerBase
    plain: Engine
    guard: Engine


def eos_token_ids(model_path: Path, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Every token id that ends generation (generation config and tokenizer)."""
    ids: set[int] = set()
    if (model_path / "generation_config.json").exists():
        eos = GenerationConfig.from_pretrained(str(model_path)).eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def choose_plain_engine(choice: str) -> str:
    """'auto' means vLLM when it is installed, else the torch runner."""
    if choice == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "torch"
    return choice


def build_torch_engine(model_path: Path, config: ServerConfig) -> TorchEngine:
    """Load the model into a slot-cache runner and start its worker thread."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    runner = ModelRunner.load(
        model_path,
        num_slots=config.max_num_seqs,
        max_model_len=config.max_model_len,
        max_candidates=MAX_CANDIDATES,
        device=config.device,
        dtype=config.dtype,
    )
    return TorchEngine(runner, tokenizer, eos_token_ids(model_path, tokenizer))


def build_engines(model_path: Path, config: ServerConfig) -> Engines:
    """The torch engine (guarded requests) and the plain engine chosen by --plain-engine."""
    torch_engine = build_torch_engine(model_path, config)
    if choose_plain_engine(config.plain_engine) == "torch":
        return Engines(torch_engine.tokenizer, torch_engine, torch_engine)
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
    return Engines(torch_engine.tokenizer, plain, torch_engine)
