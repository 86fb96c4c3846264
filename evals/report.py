"""Run summaries (summary.json), the run files on disk, and the faithfulness/informativeness plot.

Figures are computed over the answered items (requests that failed are counted in `n_errors`
only). Abstentions (refused or truncated answers) are part of Faith.: a refusal has no claims,
so it is faithful; a truncated answer is faithful when its kept prefix is. They are left out of
the hallucination rate, which is over the answers that did not abstain.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from evals import metrics
from evals.harness import EvalSettings, Mode, ResponseRecord

RESPONSES = "responses.jsonl"
SUMMARY = "summary.json"
SELF_REFERENCE_NOTE = (
    "no --reference run: each response is compared with itself, so Info. = 1.0 and Q-Score = Faith."
)


class Summary(BaseModel):
    """summary.json: the run's figures and the settings that produced them."""

    n: int
    n_scored: int
    n_errors: int
    n_abstained: int
    faithfulness: float | None
    informativeness: float | None
    q_score: float | None
    info_reference: str | None
    info_matched: int
    info_note: str
    em: float | None
    f1: float | None
    hallucination_rate: float | None
    abstention_rate: float | None
    mean_claims: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    completion_tokens: int
    wall_s: float
    tokens_per_s: float | None
    mode: Mode
    model: str
    dataset: str
    offset: int
    limit: int | None
    seed: int
    temperature: float
    max_tokens: int
    concurrency: int
    guard_options: dict[str, Any]
    base_url: str
    timestamp: str


def _info(
    scored: Sequence[ResponseRecord], reference: Sequence[ResponseRecord] | None
) -> tuple[float | None, int]:
    """Info. over the items the reference run answered too, and how many those are."""
    if reference is None:
        claims = [r.n_claims for r in scored]
        return (metrics.informativeness(claims, claims) if scored else None), len(scored)
    baseline = {r.id: r.n_claims for r in reference if r.error is None}
    matched = [r for r in scored if r.id in baseline]
    if scored and not matched:
        raise ValueError("the reference run has none of this run's items")
    if not matched:
        return None, 0
    n_claims = [r.n_claims for r in matched]
    return metrics.informativeness(n_claims, [baseline[r.id] for r in matched]), len(matched)


def build_summary(
    records: Sequence[ResponseRecord],
    settings: EvalSettings,
    model: str,
    dataset: str,
    offset: int,
    limit: int | None,
    wall_s: float,
    reference: Sequence[ResponseRecord] | None = None,
    reference_dir: Path | None = None,
) -> Summary:
    """The figures of one run; Info. against `reference` (matched by item id) when given."""
    scored = [r for r in records if r.error is None]
    hallucinated = [r.hallucinated for r in scored]
    abstained = [r.abstained for r in scored]
    latencies = [r.latency_s for r in scored]
    tokens = sum(r.completion_tokens for r in scored)
    faith = metrics.faithfulness(hallucinated) if scored else None
    info, matched = _info(scored, reference)
    note = SELF_REFERENCE_NOTE
    if reference is not None:
        note = f"Info. against {reference_dir}, over the {matched} items both runs scored"
    return Summary(
        n=len(records),
        n_scored=len(scored),
        n_errors=len(records) - len(scored),
        n_abstained=sum(abstained),
        faithfulness=faith,
        informativeness=info,
        q_score=metrics.q_score(faith, info) if faith is not None and info is not None else None,
        info_reference=str(reference_dir) if reference is not None else None,
        info_matched=matched,
        info_note=note,
        em=metrics.mean([r.em for r in scored]) if scored else None,
        f1=metrics.mean([r.f1 for r in scored]) if scored else None,
        hallucination_rate=metrics.hallucination_rate(hallucinated, abstained),
        abstention_rate=metrics.abstention_rate(abstained) if scored else None,
        mean_claims=metrics.mean([r.n_claims for r in scored]) if scored else None,
        latency_p50_s=metrics.percentile(latencies, 50) if scored else None,
        latency_p95_s=metrics.percentile(latencies, 95) if scored else None,
        completion_tokens=tokens,
        wall_s=wall_s,
        tokens_per_s=metrics.tokens_per_second(tokens, wall_s) if wall_s > 0 else None,
        mode=settings.mode,
        model=model,
        dataset=dataset,
        offset=offset,
        limit=limit,
        seed=settings.seed,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        concurrency=settings.concurrency,
        guard_options=settings.guard_options,
        base_url=settings.base_url,
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def write_run(out_dir: Path, records: Sequence[ResponseRecord], summary: Summary) -> None:
    """Write DIR/responses.jsonl (one record a line) and DIR/summary.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(record.model_dump_json() + "\n" for record in records)
    (out_dir / RESPONSES).write_text(lines, encoding="utf-8")
    (out_dir / SUMMARY).write_text(summary.model_dump_json(indent=2) + "\n", encoding="utf-8")


def read_records(run_dir: Path) -> list[ResponseRecord]:
    """The response records of a previous run."""
    text = (run_dir / RESPONSES).read_text(encoding="utf-8")
    return [ResponseRecord.model_validate_json(line) for line in text.splitlines() if line]


def read_summary(run_dir: Path) -> Summary:
    """The summary of a previous run."""
    return Summary.model_validate_json((run_dir / SUMMARY).read_text(encoding="utf-8"))


def _run_label(run_dir: Path, summary: Summary) -> str:
    name = run_dir.name if summary.mode in run_dir.name else f"{run_dir.name} ({summary.mode})"
    return f"{name}: Q={summary.q_score:.2f}"


def plot_runs(run_dirs: Sequence[Path], out_png: Path) -> None:
    """Faithfulness against informativeness, one labelled point per run, iso-Q curves behind.

    Runs at the same point share it; their labels are stacked. Labels near the right edge
    are written to the left of their point.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 5.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    info_axis = np.linspace(0.01, 1.0, 200)
    for q in (0.25, 0.5, 0.75):
        shown = info_axis >= q
        axes.plot(info_axis[shown], q / info_axis[shown], color="0.85", linestyle="--", zorder=0)
        axes.annotate(
            f"Q = {q}",
            (q, 1.0),
            xytext=(-3, 2),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=8,
            color="0.55",
        )
    placed: Counter[tuple[float, float]] = Counter()
    for run_dir in run_dirs:
        summary = read_summary(run_dir)
        if summary.faithfulness is None or summary.informativeness is None:
            raise ValueError(f"{run_dir} has no scored items to plot")
        point = (summary.informativeness, summary.faithfulness)
        key = (round(point[0], 3), round(point[1], 3))
        if not placed[key]:
            axes.scatter(*point, s=40, zorder=2)
        right_edge = point[0] > 0.7
        axes.annotate(
            _run_label(run_dir, summary),
            point,
            xytext=(-6 if right_edge else 6, 5 - 11 * placed[key]),
            textcoords="offset points",
            ha="right" if right_edge else "left",
            fontsize=8,
        )
        placed[key] += 1
    axes.set_xlim(0.0, 1.05)
    axes.set_ylim(0.0, 1.05)
    axes.set_xlabel("Informativeness (Info.)")
    axes.set_ylabel("Faithfulness (Faith.)")
    axes.set_title("Faithfulness vs informativeness")
    axes.grid(alpha=0.3)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=120)
