"""Tokens/s of the engine stepped in process, without the server: plain or guarded rows.

Loads the default model (and its probe, for guarded rows), runs one warm-up round, then a
timed round of `--batch` rows of `--max-tokens` tokens each (end-of-sequence ignored, so every
row runs to the end) and, with `--profile`, prints cProfile's busiest functions. Comparing its
figures with `benchmarks.serving` separates the engine's cost from the serving path's.

    python -m benchmarks.engine_loop --batch 32 --dtype bfloat16 --mode plain guard --profile
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from benchmarks.prompts import PROMPTS
from engine.llm_engine import LLMEngine
from engine.model_runner import ModelRunner
from engine.model_store import resolve_model
from engine.sampling import SamplingParams
from engine.sequence import Sequence
from guard.config import GuardConfig, GuardRun
from guard.guarded_sequence import GuardedSequence, RiskScorer
from guard.probe import GuardAssets, find_guard_dir


def add_round(
    engine: LLMEngine,
    tokenizer: PreTrainedTokenizerBase,
    guard: tuple[GuardConfig, RiskScorer] | None,
    batch: int,
    max_tokens: int,
) -> None:
    """Queue `batch` rows: plain, or guarded with these settings and probe."""
    runner = engine.runner
    eos = runner.eos_token_ids(tokenizer)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for row in range(batch):
        messages = [{"role": "user", "content": PROMPTS[row % len(PROMPTS)]}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if guard is None:
            seq = Sequence(str(row), ids, params, tokenizer, eos, runner.max_model_len)
        else:
            seq = GuardedSequence(
                str(row),
                ids,
                params,
                tokenizer,
                eos,
                runner.max_model_len,
                GuardRun(guard[0]),
                runner.embed,
                risk=guard[1],
            )
        engine.add(seq)


def run_round(engine: LLMEngine, profile: cProfile.Profile | None) -> tuple[int, float]:
    """Step until every row is done; the number of steps and the wall seconds."""
    steps, started = 0, time.perf_counter()
    if profile is not None:
        profile.enable()
    while engine.has_work():
        engine.step()
        steps += 1
    if profile is not None:
        profile.disable()
    return steps, time.perf_counter() - started


def main() -> None:
    """Parse flags, time a round per mode, print tokens/s (and a profile)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="Rows (default: %(default)s).")
    parser.add_argument("--max-tokens", type=int, default=64, help="Tokens a row (default: 64).")
    modes = ["plain", "guard", "guard-paper"]
    parser.add_argument("--mode", nargs="+", choices=modes, default=["plain"])
    parser.add_argument("--dtype", default="auto", help="Model dtype (auto: float32 on CPU).")
    parser.add_argument("--profile", action="store_true", help="Print cProfile's top functions.")
    args = parser.parse_args()
    model_dir = resolve_model(None)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    guard_dir = find_guard_dir(model_dir, model_dir.name)
    assets = GuardAssets.load(guard_dir) if guard_dir is not None else None
    runner = ModelRunner.load(
        model_dir,
        num_slots=args.batch,
        max_model_len=1024,
        max_candidates=8,
        device="cpu",
        dtype=args.dtype,
        probe_layer=assets.probe.layer if assets is not None else None,
    )
    for mode in args.mode:
        if mode != "plain" and assets is None:
            raise SystemExit("guarded rows need the model's probe (guard/probes/MODEL)")
        engine = LLMEngine(runner)
        guard = None
        if assets is not None and mode != "plain":
            paper = mode == "guard-paper"
            config = GuardConfig.paper(enabled=True) if paper else assets.defaults(enabled=True)
            guard = (config, assets.probe.risk)
        add_round(engine, tokenizer, guard, args.batch, args.max_tokens)
        run_round(engine, None)  # warm-up
        add_round(engine, tokenizer, guard, args.batch, args.max_tokens)
        profile = cProfile.Profile() if args.profile else None
        steps, wall = run_round(engine, profile)
        tokens = args.batch * args.max_tokens
        print(
            f"{mode:11} {args.dtype} batch {args.batch}: {steps} steps, "
            f"{wall / steps * 1000:.1f} ms/step, {tokens / wall:.1f} tokens/s",
            flush=True,
        )
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
