"""A training run's frame: its base model and tokenizer, LoRA, the saved adapter, its summary."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import BaseModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from engine.model_store import BASE_MODEL, resolve_model
from finetune.config import LoraSettings, RunSettings

LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "training.json"  # BALTO's and HALT's trainers both write it; benchmarks read it


def resolve_base(settings: RunSettings) -> tuple[str, Path, PreTrainedTokenizerBase]:
    """Apply the run's torch threads; the base model's name, its prepared folder and tokenizer.

    The name is ``settings.model``, or the base SmolLM2 when that is None.
    """
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    name = settings.model or BASE_MODEL
    path = resolve_model(name, settings.cache_dir)
    return name, path, AutoTokenizer.from_pretrained(str(path))


def load_float32(path: Path) -> PreTrainedModel:
    """The causal LM of an HF folder in float32 with sdpa attention, as training runs it."""
    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="sdpa"
    )


def lora_model(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """`model` wrapped with a fresh LoRA adapter of the given shape (causal LM)."""
    lora = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def save_adapter(peft: PeftModel, out_dir: Path, base_model: str) -> None:
    """Write the LoRA adapter into ``out_dir``, recording ``base_model`` (a model name or
    folder) as its base."""
    out_dir.mkdir(parents=True, exist_ok=True)
    card = out_dir / "README.md"
    had_card = card.exists()
    peft.save_pretrained(out_dir)
    if not had_card:
        card.unlink(missing_ok=True)  # peft's empty model-card template
    config_path = out_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = base_model
    config_path.write_text(json.dumps(adapter_config, indent=2) + "\n")


def append_log(path: Path | None, line: BaseModel) -> None:
    """Append one step's log line to a JSONL log (nothing when there is no log)."""
    if path is not None:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line.model_dump_json() + "\n")


def halueval_lines(first: int, last: int, skipped: int) -> dict[str, Any]:
    """The `data` record of a run over HaluEval development lines ``first..last``."""
    return {
        "dataset": "halueval_qa",
        "split": "dev",
        "lines": [first, last],
        "skipped_long_prompts": skipped,
    }


def trained_with() -> dict[str, Any]:
    """The torch threads and library versions a training run used, for its summary."""
    return {
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "peft": version("peft")},
    }


def write_summary(
    path: Path,
    command: str,
    config: BaseModel,
    base_model: str,
    data: dict[str, Any],
    **figures: Any,
) -> None:
    """Write a run's summary JSON: the command, its settings, base model and data, then its
    own figures."""
    summary = {
        "command": command,
        "config": config.model_dump(mode="json"),
        "base_model": base_model,
        "data": data,
        **figures,
    }
    path.write_text(json.dumps(summary, indent=2) + "\n")
