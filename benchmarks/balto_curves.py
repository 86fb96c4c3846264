"""Training curves of BALTO / GRPO_D runs (reward, faithful and gold shares, length, KL, gradient
norm per step).

Reads each run's train_log.jsonl (balto.trainer.StepLog lines), draws six panels with the runs
overlaid (each step thin, a trailing moving average bold) and prints the gradient-norm figures
behind the paper's "steadier gradients" claim (Figure 4), over the steps that made an update:
mean, std, max, coefficient of variation (std / mean) and the std of the step-to-step changes.

    python -m benchmarks.balto_curves --run balto=balto/checkpoints/smollm2-135m-balto \\
        --run grpo_d=runs/grpo_d --out curves.png
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from balto.trainer import StepLog
from finetune.run import LOG_FILE

PANELS = (
    ("reward", "Reward (share of supported claims)"),
    ("faithful", "Faithful share (no unsupported claim)"),
    ("gold", "Gold share (contains the gold answer)"),
    ("response_tokens", "Mean response length (tokens)"),
    ("kl", "KL to the start policy (per token)"),
    ("grad_norm", "Gradient norm before clipping"),
)


class GradNormSummary(BaseModel):
    """Gradient-norm figures of one run over the steps that made an optimizer update."""

    steps: int
    steps_with_update: int
    mean: float
    std: float
    max: float
    cv: float | None
    step_std: float | None


def read_log(run_dir: Path) -> list[StepLog]:
    """The step logs of one training run, in file order."""
    text = (run_dir / LOG_FILE).read_text(encoding="utf-8")
    return [StepLog.model_validate_json(line) for line in text.splitlines() if line.strip()]


def grad_norm_summary(logs: Sequence[StepLog]) -> GradNormSummary:
    """Mean, population std and max of the gradient norms of steps with an update; their
    coefficient of variation (None when the mean is 0) and the std of the differences between
    consecutive such steps (None with fewer than two).
    """
    norms = np.array([log.grad_norm for log in logs if log.updates > 0], dtype=float)
    if norms.size == 0:
        raise ValueError("no step made an update")
    mean = float(norms.mean())
    std = float(norms.std())
    return GradNormSummary(
        steps=len(logs),
        steps_with_update=int(norms.size),
        mean=mean,
        std=std,
        max=float(norms.max()),
        cv=std / mean if mean > 0 else None,
        step_std=float(np.diff(norms).std()) if norms.size > 1 else None,
    )


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over the last `window` values (fewer at the start)."""
    if window < 1:
        raise ValueError("the window must hold at least one value")
    data = np.asarray(values, dtype=float)
    totals = np.concatenate([[0.0], np.cumsum(data)])
    ends = np.arange(1, data.size + 1)
    starts = np.maximum(ends - window, 0)
    return (totals[ends] - totals[starts]) / (ends - starts)


def plot_curves(runs: Mapping[str, Sequence[StepLog]], out_png: Path, window: int = 10) -> None:
    """Six panels (``PANELS``) against the step, runs overlaid.

    The gradient-norm panel shows only the steps that made an update; a run whose log predates a
    field (gold) is left out of that panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10.0, 10.0), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(3, 2, sharex=True)
    for axes, (field, title) in zip(grid.flat, PANELS, strict=True):
        for name, logs in runs.items():
            kept = [log for log in logs if field != "grad_norm" or log.updates > 0]
            kept = [log for log in kept if getattr(log, field) is not None]
            if not kept:
                continue
            steps = [log.step for log in kept]
            values = [getattr(log, field) for log in kept]
            (raw,) = axes.plot(steps, values, linewidth=0.8, alpha=0.35)
            axes.plot(
                steps,
                moving_average(values, window),
                color=raw.get_color(),
                linewidth=1.8,
                label=f"{name} (mean of {window})",
            )
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
    for axes in grid[-1]:
        axes.set_xlabel("Step")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    grid[0, 0].legend(fontsize=8)
    figure.suptitle("Training curves (thin: each step; bold: trailing moving average)")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=120)


def summary_table(summaries: Mapping[str, GradNormSummary]) -> str:
    """The gradient-norm figures of each run as a markdown table."""
    rows = [
        "| run | steps (updated) | grad norm mean | std | max | CV | step-to-step std |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        cv = "-" if s.cv is None else f"{s.cv:.3f}"
        step_std = "-" if s.step_std is None else f"{s.step_std:.3f}"
        rows.append(
            f"| {name} | {s.steps} ({s.steps_with_update}) | {s.mean:.3f} | {s.std:.3f} | "
            f"{s.max:.3f} | {cv} | {step_std} |"
        )
    return "\n".join(rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", action="append", required=True, metavar="NAME=DIR", help="a training run"
    )
    parser.add_argument("--out", type=Path, default=Path("curves.png"))
    parser.add_argument("--window", type=int, default=10, help="moving-average window (steps)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    runs = {name: read_log(Path(path)) for name, path in (r.split("=", 1) for r in args.run)}
    plot_curves(runs, args.out, args.window)
    print(summary_table({name: grad_norm_summary(logs) for name, logs in runs.items()}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
