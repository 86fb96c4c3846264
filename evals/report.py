"""Run summaries (summary.json), the run files on disk, and the plots of runs.

Figures are computed over the scored items (requests that failed are counted in `n_errors`
only). Two judges: the gold answer (`gold_in_answer_*`, coverage, abstention precision, risk and
AURC) and the claim verifier (`verifier_*`: Faith., Q-Score, hallucination rate), as
`judged_by` in every summary says.

An abstention is a refusal (see evals.harness): it has no claims, so it is verifier-faithful,
and it never contains the gold answer. A truncated (HALT) answer counts as answered, partially:
it is judged by its kept prefix and counted in `n_truncated`. Coverage = 1 - abstention rate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import AliasChoices, BaseModel, Field

from evals.harness import EvalSettings, Mode, ResponseRecord
from groundedqa import metrics

RESPONSES = "responses.jsonl"
SUMMARY = "summary.json"
SELF_REFERENCE_NOTE = (
    "no --reference run: each response is compared with itself, so Info. = 1.0 and Q-Score = Faith."
)
RUN_MARKERS = "osD^v<>"
JUDGED_BY = {
    "verifier_faith": "verifier: share of responses with no unsupported claim",
    "verifier_q_score": "verifier: Faith. x Info.",
    "verifier_hallucination_rate": "verifier: share with an unsupported claim, among answered",
    "informativeness": "claim count (verifier's extractor) against the reference run's",
    "gold_in_answer_answered": "gold: normalised gold answer in the response, among answered",
    "gold_in_answer_overall": "gold: as above, over all scored items (abstentions count 0)",
    "em": "gold: exact match",
    "f1": "gold: token F1",
    "coverage": "share answered (truncated counts as answered); 1 - abstention_rate",
    "abstention_precision": "gold: share of abstentions the reference run got wrong",
    "aurc": "gold: area under risk (1 - gold_in_answer) vs coverage, ranked by confidence",
}


def _renamed(name: str, old: str) -> Any:
    """A field that older summaries wrote under another key."""
    return Field(validation_alias=AliasChoices(name, old))


class Summary(BaseModel):
    """summary.json: the run's figures and the settings that produced them.

    Fields added after the first runs default to None (or 0), so older summaries still load;
    verifier-judged figures were once written without the `verifier_` prefix.
    """

    n: int
    n_scored: int
    n_errors: int
    n_abstained: int
    n_truncated: int = 0
    verifier_faith: float | None = _renamed("verifier_faith", "faithfulness")
    informativeness: float | None
    verifier_q_score: float | None = _renamed("verifier_q_score", "q_score")
    info_reference: str | None
    info_matched: int
    info_note: str
    gold_in_answer_answered: float | None = None
    gold_in_answer_overall: float | None = None
    coverage: float | None = None
    abstention_precision: float | None = None
    abstention_precision_matched: int = 0
    aurc: float | None = None
    risk_coverage_n: int = 0
    em: float | None
    f1: float | None
    verifier_hallucination_rate: float | None = _renamed(
        "verifier_hallucination_rate", "hallucination_rate"
    )
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
    first_line: int | None = None
    last_line: int | None = None
    seed: int
    temperature: float
    max_tokens: int
    concurrency: int
    guard_options: dict[str, Any]
    base_url: str
    timestamp: str
    judged_by: dict[str, str] = Field(default_factory=lambda: dict(JUDGED_BY))


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


def _abstention_precision(
    scored: Sequence[ResponseRecord], reference: Sequence[ResponseRecord] | None
) -> tuple[float | None, int]:
    """Abstention precision over the abstained items the reference run scored, and their count."""
    if reference is None:
        return None, 0
    wrong = {r.id: not r.gold_in_answer for r in reference if r.error is None}
    matched = [r for r in scored if r.id in wrong]
    abstained = [r.abstained for r in matched]
    precision = metrics.abstention_precision(abstained, [wrong[r.id] for r in matched])
    return precision, sum(abstained)


def confident_records(records: Sequence[ResponseRecord]) -> list[ResponseRecord]:
    """The scored records that carry a confidence: the items a risk-coverage curve ranks."""
    return [r for r in records if r.error is None and r.confidence is not None]


def risk_coverage_curve(records: Sequence[ResponseRecord]) -> list[metrics.RiskCoveragePoint]:
    """Risk (1 - gold_in_answer) against coverage over the records with a confidence.

    An abstained item has no answer, so keeping it counts as wrong. Empty when none has one.
    """
    ranked = confident_records(records)
    if not ranked:
        return []
    confidences = [r.confidence for r in ranked if r.confidence is not None]
    return metrics.risk_coverage(confidences, [r.gold_in_answer for r in ranked])


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
    """The figures of one run; against `reference` (matched by item id) when given.

    The reference run gives Info. and abstention precision; without it, Info. compares each
    response with itself and abstention precision is None.
    """
    scored = [r for r in records if r.error is None]
    answered = [r for r in scored if not r.abstained]
    hallucinated = [r.hallucinated for r in scored]
    abstained = [r.abstained for r in scored]
    gold = [r.gold_in_answer for r in scored]
    curve = risk_coverage_curve(scored)
    precision, precision_matched = _abstention_precision(scored, reference)
    lines = [r.line for r in records]
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
        n_truncated=sum(r.outcome == "truncated" for r in scored),
        verifier_faith=faith,
        informativeness=info,
        verifier_q_score=(
            metrics.q_score(faith, info) if faith is not None and info is not None else None
        ),
        info_reference=str(reference_dir) if reference is not None else None,
        info_matched=matched,
        info_note=note,
        gold_in_answer_answered=(
            metrics.mean([r.gold_in_answer for r in answered]) if answered else None
        ),
        gold_in_answer_overall=metrics.mean(gold) if scored else None,
        coverage=metrics.coverage(abstained) if scored else None,
        abstention_precision=precision,
        abstention_precision_matched=precision_matched,
        aurc=metrics.aurc(curve) if curve else None,
        risk_coverage_n=len(confident_records(scored)),
        em=metrics.mean([r.em for r in scored]) if scored else None,
        f1=metrics.mean([r.f1 for r in scored]) if scored else None,
        verifier_hallucination_rate=metrics.hallucination_rate(hallucinated, abstained),
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
        first_line=min(lines) if lines else None,
        last_line=max(lines) if lines else None,
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
    return f"{name}: Q={summary.verifier_q_score:.2f}"


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
        if summary.verifier_faith is None or summary.informativeness is None:
            raise ValueError(f"{run_dir} has no scored items to plot")
        point = (summary.informativeness, summary.verifier_faith)
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
    axes.set_ylabel("Faithfulness (Faith., judged by the verifier)")
    axes.set_title("Faithfulness vs informativeness")
    axes.grid(alpha=0.3)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=120)


def risk_coverage_png(out_png: Path) -> Path:
    """Where `eval plot --out X.png` puts the risk-coverage plot: X_risk_coverage.png beside."""
    return out_png.with_name(f"{out_png.stem}_risk_coverage{out_png.suffix or '.png'}")


def plot_risk_coverage(run_dirs: Sequence[Path], out_png: Path) -> None:
    """Risk (1 - gold_in_answer among kept) against coverage, several runs in one plot.

    Each run's operating point (its own coverage and risk among the answered) is a marker; a
    run whose responses carry a confidence also gets its curve, labelled with its AURC.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 5.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, run_dir in enumerate(run_dirs):
        summary = read_summary(run_dir)
        scored = [r for r in read_records(run_dir) if r.error is None]
        answered = [r.gold_in_answer for r in scored if not r.abstained]
        if not answered:
            raise ValueError(f"{run_dir} has no answered items to plot")
        name = run_dir.name if summary.mode in run_dir.name else f"{run_dir.name} ({summary.mode})"
        operating = (
            metrics.coverage([r.abstained for r in scored]),
            1.0 - metrics.mean([float(g) for g in answered]),
        )
        curve = risk_coverage_curve(scored)
        label = f"{name}: AURC={metrics.aurc(curve):.3f}" if curve else f"{name} (no confidence)"
        shape = RUN_MARKERS[index % len(RUN_MARKERS)]
        (marker,) = axes.plot(*operating, marker=shape, linestyle="none", label=label, zorder=3)
        if curve:
            coverages = [0.0] + [p.coverage for p in curve]
            risks = [curve[0].risk] + [p.risk for p in curve]
            axes.step(coverages, risks, where="pre", color=marker.get_color(), linewidth=1.2)
    axes.set_xlim(0.0, 1.02)
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("Coverage (share kept)")
    axes.set_ylabel("Risk (1 - gold answer in response, among kept)")
    axes.set_title("Risk vs coverage (judged by the gold answer)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=120)


TABLE_COLUMNS = (
    ("lines", "lines"),
    ("n", "n"),
    ("coverage", "coverage"),
    ("gold_in_answer_answered", "gold in answer, answered (gold)"),
    ("gold_in_answer_overall", "gold in answer, all (gold)"),
    ("abstention_precision", "abst. precision (gold)"),
    ("aurc", "AURC (gold)"),
    ("verifier_faith", "Faith. (verifier)"),
    ("informativeness", "Info."),
    ("verifier_q_score", "Q-Score (verifier)"),
    ("em", "EM"),
    ("f1", "F1"),
)


def _cell(key: str, summary: Summary) -> str:
    if key == "lines":
        if summary.first_line is None:
            return "?"
        return f"{summary.dataset} {summary.first_line}-{summary.last_line}"
    value = getattr(summary, key)
    if value is None:
        return "-"
    if key == "n":
        return str(value)
    return f"{value:.3f}" if key == "aurc" else f"{100 * value:.1f}"


def markdown_table(run_dirs: Sequence[Path]) -> str:
    """A markdown table of runs (shares in %), each figure's judge named in its header."""
    header = ["run", *(title for _, title in TABLE_COLUMNS)]
    rows = [header, ["---"] * len(header)]
    for run_dir in run_dirs:
        summary = read_summary(run_dir)
        cells = [_cell(key, summary) for key, _ in TABLE_COLUMNS]
        rows.append([f"{run_dir.name} ({summary.mode})", *cells])
    return "".join("| " + " | ".join(row) + " |\n" for row in rows)
