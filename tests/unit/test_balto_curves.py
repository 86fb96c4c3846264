"""Training-curve figures of BALTO runs: gradient-norm summary by hand, and the PNG is written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from balto.trainer import LOG_FILE, StepLog
from benchmarks.balto_curves import grad_norm_summary, moving_average, plot_curves, read_log


def step_log(step: int, grad_norm: float, updates: int = 1, gold: float | None = None) -> StepLog:
    return StepLog(
        step=step,
        reward=0.1 * step,
        faithful=0.05 * step,
        n_H=3,
        n_F=5,
        loss=0.2,
        grad_norm=grad_norm,
        kl=0.001 * step,
        clip_fraction=0.0,
        seconds=1.0,
        updates=updates,
        response_tokens=20.0,
        retokenized=0.0,
        rollout_seconds=0.5,
        label_seconds=0.1,
        gold=gold,
    )


def write_log(run_dir: Path, logs: list[StepLog]) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / LOG_FILE).write_text("".join(log.model_dump_json() + "\n" for log in logs))


# Step 2 made no update (every advantage 0): its norm is left out of every figure.
LOGS = [
    step_log(0, 1.0),
    step_log(1, 3.0),
    step_log(2, 0.0, updates=0),
    step_log(3, 2.0),
    step_log(4, 4.0),
]


def test_grad_norm_summary_by_hand() -> None:
    summary = grad_norm_summary(LOGS)
    assert (summary.steps, summary.steps_with_update) == (5, 4)
    # Norms 1, 3, 2, 4: mean 2.5, deviations +-1.5, +-0.5 -> population std sqrt(5/4).
    assert summary.mean == pytest.approx(2.5)
    assert summary.std == pytest.approx(math.sqrt(1.25))
    assert summary.max == 4.0
    assert summary.cv == pytest.approx(math.sqrt(1.25) / 2.5)
    # Step-to-step changes 2, -1, 2: mean 1, deviations 1, -2, 1 -> std sqrt(2).
    assert summary.step_std == pytest.approx(math.sqrt(2.0))
    single = grad_norm_summary([step_log(0, 0.7)])
    assert single.std == 0.0 and single.step_std is None
    with pytest.raises(ValueError):
        grad_norm_summary([step_log(0, 0.0, updates=0)])


def test_moving_average_is_trailing_with_a_short_start() -> None:
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == pytest.approx([1.0, 2.0, 4.0, 6.0])
    assert moving_average([2.0, 4.0], 10) == pytest.approx([2.0, 3.0])
    with pytest.raises(ValueError):
        moving_average([1.0], 0)


def test_plot_curves_writes_a_png_from_logs_on_disk(tmp_path: Path) -> None:
    write_log(tmp_path / "balto", LOGS)
    # Only the second run logged the gold share: the first is left out of that panel.
    write_log(tmp_path / "grpo_d", [step_log(i, 0.5 + i, gold=0.1 * i) for i in range(3)])
    runs = {name: read_log(tmp_path / name) for name in ("balto", "grpo_d")}
    assert [log.grad_norm for log in runs["balto"]] == [1.0, 3.0, 0.0, 2.0, 4.0]
    assert runs["balto"][0].gold is None and runs["grpo_d"][2].gold == pytest.approx(0.2)
    out = tmp_path / "plots" / "curves.png"
    plot_curves(runs, out, window=2)
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert out.stat().st_size > 10_000
