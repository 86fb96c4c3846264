"""Base vs GRPO_D- vs BALTO-trained adapters on held-out HaluEval dev prompts, greedy decoding.

Every model answers the same grounded prompts (groundedqa.prompts) with greedy decoding, batched in
one engine run per model. Two judges, as in evals.report:

- gold in answer   the normalised gold answer occurs in the response (groundedqa.metrics);
- verifier         each response's claims are checked against the item's knowledge
                   (verify.verifier): hallucination = share of responses with at least one
                   unsupported claim, Faith. = 1 - that, Info. = share with at least as many
                   claims as the base model's response, Q-Score = Faith. x Info. (BALTO, App. E.2).

Every figure comes with a 95% percentile-bootstrap interval over the items (2000 resamples,
seeded; the same resampled indices for every model). Each adapter is also compared with the
base model item by item (paired resampling): the difference in gold in answer and in verifier
hallucination, and the ratio of its hallucination to the base model's. Gradient-norm figures of
each adapter's training come from its train_log.jsonl (benchmarks.balto_curves). The evaluation
lines must not overlap the lines an adapter was trained on (checked); only dev lines are used.

    python -m benchmarks.balto_compare --adapter grpo_d=runs/grpo_d \\
        --adapter balto=balto/checkpoints/smollm2-135m-balto --first-line 4001 --limit 400
"""

from __future__ import annotations

import argparse
import math
from functools import partial
from pathlib import Path

from pydantic import BaseModel

from benchmarks.balto_curves import GradNormSummary, grad_norm_summary, read_log, summary_table
from benchmarks.compare import Comparison, comparison_parser
from engine.model_runner import pick_device
from finetune.run import LOG_FILE
from groundedqa import metrics
from groundedqa.halueval import HaluEvalItem
from verify.verifier import Verifier

JUDGED_BY = {
    "gold_in_answer": "gold: normalised gold answer in the response (word-bounded)",
    "verifier_hallucination": "verifier: share of responses with >= 1 unsupported claim",
    "faith": "verifier: share of responses without an unsupported claim",
    "info": "claim count (verifier's extractor) >= the base model's on the same item",
    "q_score": "verifier: Faith. x Info.",
    "em": "gold: exact match",
    "f1": "gold: token F1",
    "claims": "claims per response (verifier's extractor)",
    "words": "words per response (whitespace split)",
    "tokens": "generated tokens per response (end-of-sequence not counted)",
}


class ItemRow(BaseModel):
    """One model's response to one item and how each judge scored it."""

    line: int
    response: str
    tokens: int
    words: int
    claims: int
    unsupported: int
    gold_in_answer: bool
    em: float
    f1: float


def parse_args() -> argparse.Namespace:
    parser = comparison_parser(__doc__.splitlines()[0], 64, Path("runs/balto_compare"))
    parser.add_argument("--resamples", type=int, default=metrics.BOOTSTRAP_RESAMPLES)
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return parser.parse_args()


def score(
    items: list[HaluEvalItem], outputs: list[tuple[str, int]], verifier: Verifier
) -> list[ItemRow]:
    """Verdict counts and gold-answer matches of one model's responses, item by item."""
    rows = []
    for item, (response, tokens) in zip(items, outputs, strict=True):
        verification = verifier.verify(response, item.knowledge)
        rows.append(
            ItemRow(
                line=item.line,
                response=response,
                tokens=tokens,
                words=len(response.split()),
                claims=len(verification.verdicts),
                unsupported=verification.n_unsupported,
                gold_in_answer=metrics.gold_in_answer(response, item.right_answer),
                em=metrics.exact_match(response, item.right_answer),
                f1=metrics.f1_score(response, item.right_answer),
            )
        )
    return rows


def _interval(interval: metrics.Interval | None) -> dict[str, float | None] | None:
    """An interval for JSON: non-finite bounds (a ratio over a zero base share) become None."""
    if interval is None:
        return None
    return {k: v if math.isfinite(v) else None for k, v in interval._asdict().items()}


def _flags(rows: list[ItemRow]) -> tuple[list[float], list[float]]:
    """Per item: gold answer in the response, and at least one unsupported claim (as 1.0/0.0)."""
    return [float(r.gold_in_answer) for r in rows], [float(r.unsupported > 0) for r in rows]


def figures(
    rows: list[ItemRow], base_rows: list[ItemRow], resamples: int, seed: int
) -> dict[str, dict[str, float | None] | None]:
    """Every figure of one model with its bootstrap interval (Info. against `base_rows`)."""
    single = partial(metrics.bootstrap_interval, n_resamples=resamples, seed=seed)
    gold, hallucinated = _flags(rows)
    faithful = [1.0 - h for h in hallucinated]
    informative = [float(r.claims >= b.claims) for r, b in zip(rows, base_rows, strict=True)]
    q_score = metrics.paired_bootstrap_interval(
        faithful, informative, metrics.mean_product, n_resamples=resamples, seed=seed
    )
    intervals = {
        "gold_in_answer": single(gold),
        "verifier_hallucination": single(hallucinated),
        "faith": single(faithful),
        "info": single(informative),
        "q_score": q_score,
        "em": single([r.em for r in rows]),
        "f1": single([r.f1 for r in rows]),
        "claims": single([r.claims for r in rows]),
        "words": single([r.words for r in rows]),
        "tokens": single([r.tokens for r in rows]),
    }
    return {k: _interval(v) for k, v in intervals.items()}


def versus_base(
    rows: list[ItemRow], base_rows: list[ItemRow], resamples: int, seed: int
) -> dict[str, dict[str, float | None] | None]:
    """Paired comparisons with the base model: differences in gold in answer and verifier
    hallucination, and the hallucination ratio (None when the base model never hallucinated).
    """
    paired = partial(metrics.paired_bootstrap_interval, n_resamples=resamples, seed=seed)
    gold, hallucinated = _flags(rows)
    base_gold, base_hallucinated = _flags(base_rows)
    ratio = None
    if any(base_hallucinated):
        ratio = paired(hallucinated, base_hallucinated, metrics.mean_ratio)
    intervals = {
        "gold_in_answer_difference": paired(gold, base_gold),
        "verifier_hallucination_difference": paired(hallucinated, base_hallucinated),
        "verifier_hallucination_ratio": ratio,
    }
    return {k: _interval(v) for k, v in intervals.items()}


def _cell(interval: dict[str, float | None] | None, scale: float = 100.0, digits: int = 1) -> str:
    """`estimate [low, high]`, shares in percent (or points for differences)."""
    if interval is None:
        return "-"

    def fmt(value: float | None) -> str:
        return "?" if value is None else f"{scale * value:.{digits}f}"

    return f"{fmt(interval['estimate'])} [{fmt(interval['low'])}, {fmt(interval['high'])}]"


def markdown_table(results: dict[str, dict]) -> str:
    """The comparison as a markdown table: shares in %, differences in points, 95% intervals."""
    rows = [
        "| model | gold in answer % | Δ gold vs base (pt) | verifier halluc. % "
        "| Δ halluc. vs base (pt) | halluc. / base | Faith. % | Info. % | Q-Score % "
        "| words | tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        vs_base = r.get("vs_base", {})
        cells = [
            _cell(r["gold_in_answer"]),
            _cell(vs_base.get("gold_in_answer_difference")),
            _cell(r["verifier_hallucination"]),
            _cell(vs_base.get("verifier_hallucination_difference")),
            _cell(vs_base.get("verifier_hallucination_ratio"), scale=1.0, digits=2),
            _cell(r["faith"]),
            _cell(r["info"]),
            _cell(r["q_score"]),
            _cell(r["words"], scale=1.0),
            _cell(r["tokens"], scale=1.0),
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    args = parse_args()
    comparison = Comparison.start(args)
    verifier = Verifier()
    results: dict[str, dict] = {}
    training: dict[str, GradNormSummary] = {}
    base_rows: list[ItemRow] = []
    for answers in comparison.answers():
        name, adapter = answers.name, answers.entry
        outputs = list(zip(answers.texts, answers.tokens, strict=True))
        rows = score(comparison.items, outputs, verifier)
        base_rows = base_rows or rows
        results[name] = {
            **figures(rows, base_rows, args.resamples, args.seed),
            "generate_seconds": round(answers.seconds, 1),
        }
        if adapter is not None:
            results[name]["vs_base"] = versus_base(rows, base_rows, args.resamples, args.seed)
        if adapter is not None and (adapter / LOG_FILE).exists():
            training[name] = grad_norm_summary(read_log(adapter))
        comparison.write_rows(name, (row.model_dump_json() for row in rows))
        print(f"{name}: generated in {answers.seconds:.1f} s", flush=True)
    first, last = comparison.lines
    report = {
        "lines": [first, last],
        "n": len(comparison.items),
        "max_new_tokens": args.max_new_tokens,
        "device": str(pick_device(args.device)),
        "bootstrap": {
            "method": "percentile over items; paired (same indices) for vs_base and Q-Score",
            "resamples": args.resamples,
            "confidence": 0.95,
            "seed": args.seed,
        },
        "judged_by": JUDGED_BY,
        "adapters": {k: str(v) for k, v in comparison.entries.items()},
        "results": results,
        "training_grad_norm": {k: v.model_dump() for k, v in training.items()},
    }
    table = (
        f"HaluEval dev lines {first}-{last} (n={len(comparison.items)}), greedy, "
        f"{args.max_new_tokens} new tokens; 95% percentile-bootstrap intervals "
        f"({args.resamples} resamples, paired against base for Δ and ratio).\n\n"
        + markdown_table(results)
    )
    if training:
        table += "\n\nTraining gradient norms (steps with an update):\n\n" + summary_table(training)
    comparison.write_report(report, table, "results.md")


if __name__ == "__main__":
    main()
