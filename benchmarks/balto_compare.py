"""Base vs GRPO_D- vs BALTO-trained adapters on held-out HaluEval dev prompts, greedy decoding.

Every model answers the same grounded prompts (balto.rollout / evals.prompts) with greedy
decoding, batched in one LLMEngine run. Each response's claims are verified against the item's
knowledge (verify.verifier), as in seed 003, App. E.2:

- Faith.  share of responses without an unsupported claim;
- Info.   share of responses with at least as many claims as the base model's response;
- Q       Faith. x Info.;
- EM, F1  against `right_answer` after SQuAD-style normalisation (lowercase, punctuation and
          the articles a/an/the removed, whitespace collapsed); F1 over normalised words;
- Hit     share of responses whose normalised text contains the normalised right answer.

Gradient-norm statistics (mean, std, max over training steps that made an update, before
clipping) come from each adapter's train_log.jsonl, as in the paper's Figure 4. The evaluation
lines must not overlap the lines an adapter was trained on (checked); only dev lines are used.

    python -m benchmarks.balto_compare --adapter grpo_d=runs/grpo_d \\
        --adapter balto=balto/checkpoints/smollm2-135m-balto --first-line 4001 --limit 200
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import string
import time
from collections import Counter
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from balto.config import DEV_LAST_LINE
from balto.rollout import Prompt, sample_groups
from balto.trainer import LOG_FILE, SUMMARY_FILE
from engine.model_runner import ModelRunner
from engine.model_store import BASE_MODEL, resolve_model
from engine.sampling import SamplingParams
from evals.halueval import HaluEvalItem, load_halueval
from evals.prompts import grounded_prompt_ids
from verify.verifier import Verifier

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised texts are equal."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Word-overlap F1 of the normalised texts."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def contains_answer(prediction: str, gold: str) -> float:
    """1.0 when the normalised right answer occurs in the normalised response (word-bounded)."""
    answer = normalize_answer(gold)
    return float(bool(answer) and f" {answer} " in f" {normalize_answer(prediction)} ")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=BASE_MODEL, help="base model (name, folder, .gguf)")
    parser.add_argument(
        "--adapter", action="append", default=[], metavar="NAME=DIR", help="adapter to compare"
    )
    parser.add_argument("--first-line", type=int, default=4001)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch", type=int, default=32, help="sequences decoded together")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/balto_compare"))
    return parser.parse_args()


def trained_lines(adapter_dir: Path) -> set[int]:
    """Every HaluEval line in the adapter's training range (from its training.json)."""
    summary = json.loads((adapter_dir / SUMMARY_FILE).read_text())
    first, last = summary["data"]["lines"]
    return set(range(first, last + 1))


def grad_norm_stats(adapter_dir: Path) -> dict[str, float]:
    """Mean, std and max of the per-step gradient norms (steps with an update), and the count."""
    logs = [json.loads(line) for line in (adapter_dir / LOG_FILE).read_text().splitlines()]
    norms = [log["grad_norm"] for log in logs if log["updates"] > 0]
    return {
        "grad_norm_mean": statistics.fmean(norms) if norms else 0.0,
        "grad_norm_std": statistics.pstdev(norms) if norms else 0.0,
        "grad_norm_max": max(norms, default=0.0),
        "steps_with_update": len(norms),
        "steps": len(logs),
    }


def generate(
    model_dir: Path,
    adapter_dir: Path | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Prompt],
    max_new_tokens: int,
    batch: int,
) -> list[str]:
    """Greedy responses of the base model (with the adapter merged in, if one is given)."""
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="sdpa"
    )
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    runner = ModelRunner(
        model,
        num_slots=batch,
        max_model_len=max(len(p.ids) for p in prompts) + max_new_tokens,
        max_candidates=1,
    )
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
    groups = sample_groups(runner, tokenizer, prompts, params, group_size=1, seed=0)
    return [tokenizer.decode(g[0].output_ids, skip_special_tokens=True).strip() for g in groups]


def score(
    items: list[HaluEvalItem], responses: list[str], verifier: Verifier
) -> list[dict[str, object]]:
    """Per-item verdict counts and answer matches of one model's responses."""
    rows = []
    for item, response in zip(items, responses, strict=True):
        verification = verifier.verify(response, item.knowledge)
        rows.append(
            {
                "line": item.line,
                "response": response,
                "claims": len(verification.verdicts),
                "unsupported": verification.n_unsupported,
                "em": exact_match(response, item.right_answer),
                "f1": f1_score(response, item.right_answer),
                "hit": contains_answer(response, item.right_answer),
            }
        )
    return rows


def summarize(rows: list[dict[str, object]], base_rows: list[dict[str, object]]) -> dict:
    """Faith., Info. (against the base model's claim counts), Q-Score, EM, F1, Hit."""
    n = len(rows)
    faith = sum(r["unsupported"] == 0 for r in rows) / n
    info = sum(r["claims"] >= b["claims"] for r, b in zip(rows, base_rows, strict=True)) / n
    return {
        "faith": faith,
        "info": info,
        "q_score": faith * info,
        "em": sum(r["em"] for r in rows) / n,
        "f1": sum(r["f1"] for r in rows) / n,
        "hit": sum(r["hit"] for r in rows) / n,
        "claims": sum(r["claims"] for r in rows) / n,
        "words": sum(len(str(r["response"]).split()) for r in rows) / n,
    }


def markdown_table(results: dict[str, dict]) -> str:
    """The comparison as a markdown table (percentages; gradient norms where trained)."""
    header = (
        "| model | Faith. | Info. | Q-Score | EM | F1 | Hit | claims | words "
        "| grad norm mean | std | max |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for name, r in results.items():
        grads = (
            f"{r['grad_norm_mean']:.3f} | {r['grad_norm_std']:.3f} | {r['grad_norm_max']:.3f}"
            if "grad_norm_mean" in r
            else "- | - | -"
        )
        lines.append(
            f"| {name} | {100 * r['faith']:.1f} | {100 * r['info']:.1f} | "
            f"{100 * r['q_score']:.1f} | {100 * r['em']:.1f} | {100 * r['f1']:.1f} | "
            f"{100 * r['hit']:.1f} | {r['claims']:.2f} | {r['words']:.1f} | {grads} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    last = args.first_line + args.limit - 1
    if last > DEV_LAST_LINE:
        raise SystemExit(f"lines past {DEV_LAST_LINE} are reserved for release evaluation")
    adapters = {name: Path(path) for name, path in (a.split("=", 1) for a in args.adapter)}
    eval_lines = set(range(args.first_line, last + 1))
    for name, path in adapters.items():
        if overlap := eval_lines & trained_lines(path):
            raise SystemExit(f"{name} was trained on evaluation lines {sorted(overlap)[:5]}...")

    model_dir = resolve_model(args.model, args.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    items = load_halueval("dev", limit=last)[args.first_line - 1 :]
    prompts = [
        Prompt(grounded_prompt_ids(tokenizer, i.knowledge, i.question), i.knowledge, str(i.line))
        for i in items
    ]
    verifier = Verifier()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    base_rows: list[dict[str, object]] = []
    for name, adapter in [("base", None), *adapters.items()]:
        started = time.perf_counter()
        responses = generate(
            model_dir, adapter, tokenizer, prompts, args.max_new_tokens, args.batch
        )
        generated = time.perf_counter() - started
        rows = score(items, responses, verifier)
        base_rows = base_rows or rows
        results[name] = {
            **summarize(rows, base_rows),
            "generate_seconds": round(generated, 1),
            **(grad_norm_stats(adapter) if adapter is not None else {}),
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
