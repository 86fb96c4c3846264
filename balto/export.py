"""Merge a trained LoRA adapter into its base model and save an HF folder the server loads."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

DEFAULT_ADAPTER = Path(__file__).parent / "checkpoints" / "smollm2-135m-balto"
MARKER_FILE = "balto_adapter.json"
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_base(adapter_dir: Path) -> str:
    """The base model (name or folder) an adapter records in its adapter_config.json."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    return str(config["base_model_name_or_path"])


def adapter_digest(adapter_dir: Path) -> str:
    """SHA-256 over the adapter's config and weights: names one adapter version."""
    digest = hashlib.sha256()
    for name in _ADAPTER_FILES:
        digest.update((adapter_dir / name).read_bytes())
    return digest.hexdigest()


def merged_digest(model_dir: Path) -> str | None:
    """The digest of the adapter a merged folder was made from, or None if it has no marker."""
    marker = model_dir / MARKER_FILE
    if not marker.exists():
        return None
    return str(json.loads(marker.read_text())["adapter_sha256"])


def merge_adapter(adapter_dir: Path, base_dir: Path, out_dir: Path) -> Path:
    """Load ``base_dir`` in float32, merge the adapter into its weights and save to ``out_dir``.

    The folder holds the merged weights, the base tokenizer (with its chat template) and a
    marker naming the adapter digest. It is written beside ``out_dir`` and renamed into place,
    replacing an older ``out_dir`` (one already made from the same adapter is kept).
    """
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        merged.save_pretrained(partial)
        AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(partial)
        digest = adapter_digest(adapter_dir)
        marker = {"adapter_sha256": digest, "base": str(base_dir)}
        (partial / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        if merged_digest(out_dir) == digest:  # another process finished the same merge first
            return out_dir
        if out_dir.exists():
            shutil.rmtree(out_dir)
        partial.rename(out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir


def export_adapter(
    adapter_dir: Path, out_dir: Path, base: str | None = None, cache_dir: str | None = None
) -> Path:
    """`guardserve balto export`: merge an adapter into its base (default: the one it records).

    ``base`` is anything `guardserve serve --model` accepts (a model name, folder or .gguf).
    """
    from server.model_store import resolve_model

    base_dir = resolve_model(base or adapter_base(adapter_dir), cache_dir)
    return merge_adapter(adapter_dir, base_dir, out_dir)
