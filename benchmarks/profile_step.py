"""Times one engine decode step (plain and 4-candidate tree) at several batch sizes; profiles it.

Short by design (seconds): loads the default model, prefills B short prompts, then times
`tree_step` + `commit` + `logits` + batched sampling, best of `--repeats`, and with `--profile`
prints torch.profiler's top operators for one step. `--prefill` also times one prefill of B
prompts of the serving benchmark's lengths; `--prepack both` times every cell with plain and
with prepacked weights (`all`: also prepacked for every row count, where float32 products of few
rows otherwise stay on MKL: `engine.llama.MKL_SMALL_ROWS`), `--attention both` with SDPA and with
grouped-matmul attention, alternated in one process (the machine's slow spells fall on both).

    python -m benchmarks.profile_step --batch 1 8 32 [--candidates 1 4] [--eager-hf] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from benchmarks.prompts import PROMPTS
from engine.llama import LlamaForward
from engine.model_runner import ModelRunner
from engine.model_store import resolve_model
from engine.sampling import SamplingParams, sample_batch


def one_step(runner: ModelRunner, slots: list[int], width: int, tokens: list[int]) -> list[int]:
    """A tree step with `width` candidates per row, commit candidate 0, project, sample."""
    candidates = [[t + i for i in range(width)] for t in tokens]
    out = runner.tree_step(slots, candidates)
    runner.commit(slots, [0] * len(slots))
    logits = runner.logits(out.final[:, 0])
    params = [SamplingParams(max_tokens=1, temperature=0.0)] * len(slots)
    return sample_batch(logits, params, [None] * len(slots))


def time_steps(runner: ModelRunner, batch: int, width: int, steps: int) -> float:
    """Mean seconds per step over `steps` steps after a 64-token prompt (and one untimed step)."""
    slots = list(range(batch))
    for slot in slots:
        runner.truncate(slot, 0)
    out = runner.extend(slots, [[100 + (i + j) % 500 for j in range(64)] for i in slots])
    tokens = [int(t) for t in out.logits.argmax(-1)]
    tokens = one_step(runner, slots, width, tokens)
    start = time.perf_counter()
    for _ in range(steps):
        tokens = one_step(runner, slots, width, tokens)
    return (time.perf_counter() - start) / steps


def prompt_lengths(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token counts of the serving benchmark's prompts under the model's chat template."""
    messages = [[{"role": "user", "content": prompt}] for prompt in PROMPTS]
    encoded = [
        tokenizer.apply_chat_template(m, add_generation_prompt=True, return_dict=True)
        for m in messages
    ]
    return [len(e["input_ids"]) for e in encoded]


def time_prefill(runner: ModelRunner, batch: int, lengths: list[int]) -> float:
    """Seconds for one `extend` of `batch` prompts whose lengths cycle through `lengths`."""
    slots = list(range(batch))
    sizes = [lengths[i % len(lengths)] for i in slots]
    prompts = [[100 + (7 * i + j) % 900 for j in range(n)] for i, n in enumerate(sizes)]
    for slot in slots:
        runner.truncate(slot, 0)
    start = time.perf_counter()
    runner.extend(slots, prompts)
    return time.perf_counter() - start


def prepack_setting(prepacked: bool, plain_below: int) -> Callable[[LlamaForward], None]:
    """A variant: every projection prepacked or plain, products of fewer rows on `F.linear`."""

    def apply(native: LlamaForward) -> None:
        native.set_prepacked(prepacked)
        for projection in native.projections():
            projection.plain_below = plain_below

    return apply


def main() -> None:
    """Parse flags, load the default model, print per-step times (and a profile)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--candidates", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eager-hf", action="store_true", help="Use the transformers forward.")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype", default="auto", help="Model dtype (auto: bf16 on CUDA, fp32 on the CPU)."
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default).")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--prefill", action="store_true", help="Also time one prefill per batch.")
    parser.add_argument(
        "--prepack",
        choices=["auto", "both", "all"],
        default="auto",
        help="both: every cell with plain and prepacked weights, alternated (compact); all: also "
        "prepacked for every row count.",
    )
    parser.add_argument(
        "--attention",
        choices=["auto", "both"],
        default="auto",
        help="both: every cell with SDPA and with grouped-matmul attention, alternated (compact).",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    runner = ModelRunner.load(
        resolve_model(None),
        num_slots=max(args.batch),
        max_model_len=512,
        max_candidates=16,
        device=args.device,
        dtype=args.dtype,
        native=False if args.eager_hf else None,
    )
    print(f"load (and warm-up): {time.perf_counter() - started:.1f}s, forward: {runner.backend}")
    lengths = prompt_lengths(AutoTokenizer.from_pretrained(str(resolve_model(None))))
    # Each variant: a setting of the compact forward (None: as loaded).
    variants: dict[str, Callable[[LlamaForward], None] | None] = {"as loaded": None}
    if (args.prepack != "auto" or args.attention != "auto") and runner.native is None:
        raise SystemExit("--prepack/--attention need the compact forward")
    if args.prepack != "auto":
        plain_below = runner.native.head.plain_below
        variants = {
            "plain weights": prepack_setting(False, plain_below),
            "prepacked": prepack_setting(True, plain_below),
        }
        if args.prepack == "all":
            variants["prepacked, every row"] = prepack_setting(True, 0)
    elif args.attention == "both":
        variants = {
            "sdpa": lambda native: setattr(native, "grouped_attention", False),
            "grouped": lambda native: setattr(native, "grouped_attention", True),
        }
    for batch in args.batch:
        cells = [("prefill", 0)] if args.prefill else []
        cells += [("step", width) for width in args.candidates]
        for kind, width in cells:
            timings: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, setting in variants.items():
                    if setting is not None and runner.native is not None:
                        setting(runner.native)
                    if kind == "prefill":
                        timings[name].append(time_prefill(runner, batch, lengths))
                    else:
                        timings[name].append(time_steps(runner, batch, width, args.steps))
            label = f"batch {batch:>3} " + (
                "prefill      " if kind == "prefill" else f"candidates {width:>2}"
            )
            figures = ", ".join(
                f"{name} {min(t) * 1000:7.1f} ms (median {statistics.median(t) * 1000:.1f})"
                for name, t in timings.items()
            )
            print(f"{label}: {figures}", flush=True)
    if args.profile:
        batch = max(args.batch)
        slots = list(range(batch))
        tokens = [7] * batch
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            one_step(runner, slots, max(args.candidates), tokens)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
