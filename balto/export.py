"""Merge a trained LoRA adapter into its base model and save an HF folder the server loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engine.model_store import merge_adapter, resolve_model
from finetune.run import SUMMARY_FILE


def adapter_base(adapter_dir: Path) -> str:
    """The base model (name or folder) an adapter records in its adapter_config.json."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    return str(config["base_model_name_or_path"])


def export_adapter(
    adapter_dir: Path, out_dir: Path, base: str | None = None, cache_dir: str | None = None
) -> Path:
    """`guardserve balto export`: merge an adapter into its base (default: the one it records).

    ``base`` is anything `guardserve serve --model` accepts (a model name, folder or .gguf).
    The adapter's training summary (training.json) goes along, so the benchmarks can check
    which lines the merged weights were trained on.
    """
    base_dir = resolve_model(base or adapter_base(adapter_dir), cache_dir)
    merged = merge_adapter(adapter_dir, base_dir, out_dir)
    summary = adapter_dir / SUMMARY_FILE
    if summary.exists():
        shutil.copyfile(summary, merged / SUMMARY_FILE)
    return merged
