"""Base vs HALT-trained adapters on held-out HaluEval dev lines: HALT's figures, greedy decoding.

Every model answers the same grounded prompts (groundedqa.prompts) greedily in one batched engine
run (engine.offline). Each response's content (without the truncation marker) is verified
against the item's knowledge (verify.verifier) and split into judged fragments
(halt.fragments: wrong when a claim is unsupported, or when the response lacks the gold answer
and the fragment is the first). Figures (halt.metrics, plain means over items):

- correctness   mean share of correct fragments, over responses that state any;
- completeness  fragments stated relative to the base model's on the same item, capped at 1;
- F1            harmonic mean of the two;
- answered      share of responses that state at least one fragment (not a bare marker);
- truncated     share of responses that end with the truncation marker;
- gold          share of responses containing the normalised gold answer (groundedqa.metrics).

An entry is a LoRA adapter applied to the base model, or a whole model folder (one with a
config.json, e.g. BALTO merged by `guardserve balto export`, then a HALT adapter trained on it
merged the same way), so BALTO and BALTO followed by HALT are judged against the same base.
Gold in answer comes with a 95% percentile-bootstrap interval (groundedqa.metrics). The evaluation
lines must not overlap an entry's training lines (checked from its training.json); only dev
lines are used.

    python -m benchmarks.halt_compare --adapter halt-0.5=runs/halt/cut-0.5 --limit 400
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.compare import Comparison, comparison_parser
from groundedqa.halueval import HaluEvalItem
from groundedqa.metrics import bootstrap_interval, gold_in_answer, mean
from halt.fragments import Fragment, is_truncated, judge_fragments, stated_content
from halt.metrics import halt_figures
from verify.verifier import Verifier


def parse_args() -> argparse.Namespace:
    return comparison_parser(__doc__.splitlines()[0], 48, Path("runs/halt_compare")).parse_args()


def judge(
    items: list[HaluEvalItem], responses: list[str], verifier: Verifier
) -> tuple[list[list[Fragment]], list[dict[str, object]]]:
    """Each response's judged fragments, and a per-item row for the JSONL record."""
    judged, rows = [], []
    for item, response in zip(items, responses, strict=True):
        verification = verifier.verify(stated_content(response), item.knowledge)
        fragments = judge_fragments(response, verification, item.right_answer)
        judged.append(fragments)
        rows.append(
            {
                "line": item.line,
                "response": response,
                "fragments": [f.model_dump() for f in fragments],
                "gold": gold_in_answer(stated_content(response), item.right_answer),
                "truncated": is_truncated(response),
            }
        )
    return judged, rows


def markdown_table(results: dict[str, dict]) -> str:
    """The comparison as a markdown table (percentages)."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    lines = [
        "| model | correctness | completeness | F1 | answered | truncated | gold [95% CI] "
        "| fragments |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {pct(r['correctness'])} | {pct(r['completeness'])} | {pct(r['f1'])} "
            f"| {pct(r['answered'])} | {pct(r['truncated'])} | {pct(r['gold'])} "
            f"[{pct(r['gold_low'])}, {pct(r['gold_high'])}] "
            f"| {r['fragments']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    comparison = Comparison.start(args)
    verifier = Verifier()
    results: dict[str, dict] = {}
    base: list[list[Fragment]] = []
    for answers in comparison.answers():
        judged, rows = judge(comparison.items, answers.texts, verifier)
        base = base or judged
        gold = bootstrap_interval([float(bool(r["gold"])) for r in rows])
        results[answers.name] = {
            **halt_figures(judged, base).model_dump(),
            "truncated": mean([bool(r["truncated"]) for r in rows]),
            "gold": gold.estimate,
            "gold_low": gold.low,
            "gold_high": gold.high,
            "generate_seconds": round(answers.seconds, 1),
        }
        comparison.write_rows(answers.name, (json.dumps(row) for row in rows))
        print(f"{answers.name}: {json.dumps(results[answers.name])}", flush=True)
    report = {
        "lines": comparison.lines,
        "max_new_tokens": args.max_new_tokens,
        "adapters": {k: str(v) for k, v in comparison.entries.items()},
        "results": results,
    }
    comparison.write_report(report, markdown_table(results), "table.md")


if __name__ == "__main__":
    main()
