"""Model preparation into a shared cache: once, whole, under a lock, across processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from engine.model_store import prepare_once

SPAWN = multiprocessing.get_context("spawn")


def write_model(folder: Path, builds: Path, pause_s: float = 0.0) -> None:
    """A stand-in for dequantising: records the build, waits, then writes the folder's files."""
    with builds.open("a") as log:
        log.write(f"{os.getpid()}\n")
    (folder / "weights.bin").write_bytes(b"half")
    time.sleep(pause_s)
    (folder / "weights.bin").write_bytes(b"whole")
    (folder / "config.json").write_text("{}")


def prepare(target: Path, builds: Path, pause_s: float) -> str:
    """One process's preparation of `target` (a spawn target: module level)."""
    done = prepare_once(
        target,
        lambda: (target / "config.json").exists(),
        lambda folder: write_model(folder, builds, pause_s),
    )
    return (done / "weights.bin").read_text()


def leftovers(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f"{target.name}.partial*"))


def test_a_ready_folder_is_used_as_it_is(tmp_path: Path) -> None:
    target, builds = tmp_path / "model", tmp_path / "builds"
    assert prepare(target, builds, 0.0) == "whole"
    assert prepare(target, builds, 0.0) == "whole"
    assert len(builds.read_text().split()) == 1
    assert leftovers(target) == []
    assert oct((target).stat().st_mode & 0o777) == "0o755"


def test_processes_preparing_at_once_build_it_once(tmp_path: Path) -> None:
    target, builds = tmp_path / "models" / "model", tmp_path / "builds"
    with SPAWN.Pool(3) as pool:
        results = pool.starmap(prepare, [(target, builds, 1.0)] * 3)
    assert results == ["whole"] * 3
    assert len(builds.read_text().split()) == 1
    assert leftovers(target) == []


def test_a_killed_preparer_leaves_no_target_and_the_next_one_cleans_up(tmp_path: Path) -> None:
    target, builds = tmp_path / "model", tmp_path / "builds"
    child = SPAWN.Process(target=prepare, args=(target, builds, 60.0))
    child.start()
    deadline = time.monotonic() + 60
    while not (leftovers(target) and builds.exists()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert not target.exists()
    assert len(leftovers(target)) == 1  # the half-written folder stays until the next start
    began = time.monotonic()
    assert prepare(target, builds, 0.0) == "whole"
    assert time.monotonic() - began < 5  # the dead process's lock went with it
    assert leftovers(target) == []


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "model"

    def fail(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        prepare_once(target, lambda: (target / "config.json").exists(), fail)
    assert not target.exists()
    assert leftovers(target) == []


def test_an_outdated_folder_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "version").write_text("1")

    def build(folder: Path) -> None:
        (folder / "version").write_text("2")

    prepare_once(target, lambda: (target / "version").read_text() == "2", build)
    assert (target / "version").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.lock"]
