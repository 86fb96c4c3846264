"""Held-out development lines of a checkpoint benchmark, checked against what entries trained on."""

from __future__ import annotations

import json
from pathlib import Path

from finetune.run import SUMMARY_FILE
from groundedqa.halueval import check_dev_lines


def parse_entries(specs: list[str]) -> dict[str, Path]:
    """`NAME=DIR` flags as a name -> folder mapping."""
    return {name: Path(path) for name, path in (spec.split("=", 1) for spec in specs)}


def trained_lines(entry: Path) -> set[int]:
    """Every HaluEval line in the entry's training range (from its training.json)."""
    first, last = json.loads((entry / SUMMARY_FILE).read_text())["data"]["lines"]
    return set(range(first, last + 1))


def held_out_lines(first_line: int, limit: int, entries: dict[str, Path]) -> range:
    """Lines ``first_line .. first_line + limit - 1``; stops the benchmark when they reach the
    reserved release lines or any entry was trained on one of them."""
    last = first_line + limit - 1
    try:
        check_dev_lines(first_line, last)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    lines = range(first_line, last + 1)
    for name, path in entries.items():
        if overlap := set(lines) & trained_lines(path):
            raise SystemExit(f"{name} was trained on evaluation lines {sorted(overlap)[:5]}...")
    return lines
