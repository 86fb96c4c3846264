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
import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from benchmarks.held_out import held_out_lines, parse_entries
from engine.model_runner import ModelRunner, pick_device
from engine.model_store import BASE_MODEL, resolve_model
from engine.offline import sample_responses
from engine.sampling import SamplingParams
from groundedqa.halueval import HaluEvalItem, load_dev_lines
from groundedqa.metrics import bootstrap_interval, gold_in_answer, mean
from groundedqa.prompts import grounded_prompt_ids
from halt.fragments import Fragment, is_truncated, judge_fragments, stated_content
from halt.metrics import halt_figures
from verify.verifier import Verifier


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=BASE_MODEL, help="base model (name, folder, .gguf)")
    parser.add_argument(
        "--adapter", action="append", default=[], metavar="NAME=DIR", help="adapter to compare"
    )
    parser.add_argument("--first-line", type=int, default=4001)
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch", type=int, default=32, help="sequences decoded together")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/halt_compare"))
    return parser.parse_args()


def generate(
    model_dir: Path,
    adapter_dir: Path | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    args: argparse.Namespace,
) -> list[str]:
    """Greedy responses of the base model, with the adapter merged in, or of a whole model
    folder given in the adapter's place."""
    whole = adapter_dir is not None and (adapter_dir / "config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(
        str(adapter_dir if whole else model_dir), dtype=torch.float32, attn_implementation="sdpa"
    )
    if adapter_dir is not None and not whole:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model = model.requires_grad_(False).to(pick_device(args.device))
    runner = ModelRunner(
        model,
        num_slots=args.batch,
        max_model_len=max(len(p) for p in prompts) + args.max_new_tokens,
        max_candidates=1,
    )
    params = SamplingParams(max_tokens=args.max_new_tokens, temperature=0.0)
    groups = sample_responses(runner, tokenizer, prompts, params, n=1, seed=0)
    return [tokenizer.decode(g[0].output_ids, skip_special_tokens=True).strip() for g in groups]


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
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    adapters = parse_entries(args.adapter)
    last = held_out_lines(args.first_line, args.limit, adapters)[-1]

    model_dir = resolve_model(args.model, args.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    items = load_dev_lines(args.first_line, last)
    prompts = [grounded_prompt_ids(tokenizer, i.knowledge, i.question) for i in items]
    verifier = Verifier()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    base: list[list[Fragment]] = []
    for name, adapter in [("base", None), *adapters.items()]:
        started = time.perf_counter()
        responses = generate(model_dir, adapter, tokenizer, prompts, args)
        generated = time.perf_counter() - started
        judged, rows = judge(items, responses, verifier)
        base = base or judged
        gold = bootstrap_interval([float(bool(r["gold"])) for r in rows])
        results[name] = {
            **halt_figures(judged, base).model_dump(),
            "truncated": mean([bool(r["truncated"]) for r in rows]),
            "gold": gold.estimate,
            "gold_low": gold.low,
            "gold_high": gold.high,
            "generate_seconds": round(generated, 1),
        }
        with (args.out / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    report = {
        "lines": [args.first_line, last],
        "max_new_tokens": args.max_new_tokens,
        "adapters": {k: str(v) for k, v in adapters.items()},
        "results": results,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(results)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
