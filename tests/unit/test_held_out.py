"""Held-out lines of the checkpoint benchmarks: release lines and trained-on lines stop them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.held_out import held_out_lines, parse_entries


def _entry(tmp_path: Path, name: str, first: int, last: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "training.json").write_text(json.dumps({"data": {"lines": [first, last]}}))
    return folder


def test_held_out_lines_refuse_release_lines_and_lines_an_entry_trained_on(
    tmp_path: Path,
) -> None:
    entries = parse_entries([f"a={_entry(tmp_path, 'a', 1, 4000)}"])
    assert entries == {"a": tmp_path / "a"}
    assert held_out_lines(4001, 400, entries) == range(4001, 4401)
    with pytest.raises(SystemExit, match="trained on evaluation lines \\[4000\\]"):
        held_out_lines(4000, 10, entries)
    with pytest.raises(SystemExit, match="reserved for release"):
        held_out_lines(7990, 20, {})
