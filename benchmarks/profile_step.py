"""Times one engine decode step (plain and 4-candidate tree) at several batch sizes; profiles it.

Short by design (seconds): loads the default model, prefills B short prompts, then times
`tree_step` + `commit` + `logits` + batched sampling, best of `--repeats`, and with `--profile`
prints torch.profiler's top operators for one step. `--prefill` also times one prefill of B
prompts of the serving benchmark's lengths; `--prepack both` times every cell with plain and
with prepacked weights, alternated in one process (the machine's slow spells fall on both).

    python -m benchmarks.profile_step --batch 1 8 32 [--candidates 1 4] [--eager-hf] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

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


def time_steps(runner: ModelRunner, batch: int, width: int, steps: int, repeats: int) -> float:
    """Best mean seconds per step over `repeats` runs of `steps` steps after a 64-token prompt."""
    slots = list(range(batch))
    best = float("inf")
    for _ in range(repeats):
        for slot in slots:
            runner.truncate(slot, 0)
        out = runner.extend(slots, [[100 + (i + j) % 500 for j in range(64)] for i in slots])
        tokens = [int(t) for t in out.logits.argmax(-1)]
        tokens = one_step(runner, slots, width, tokens)
        start = time.perf_counter()
        for _ in range(steps):
            tokens = one_step(runner, slots, width, tokens)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


# Token counts of the serving benchmark's four prompts under the default model's chat template.
PROMPT_LENGTHS = (71, 41, 54, 40)


def time_prefill(runner: ModelRunner, batch: int, repeats: int) -> float:
    """Best seconds for one `extend` of `batch` prompts of PROMPT_LENGTHS (cycled)."""
    slots = list(range(batch))
    lengths = [PROMPT_LENGTHS[i % len(PROMPT_LENGTHS)] for i in slots]
    prompts = [[100 + (7 * i + j) % 900 for j in range(n)] for i, n in enumerate(lengths)]
    best = float("inf")
    for _ in range(repeats):
        for slot in slots:
            runner.truncate(slot, 0)
        start = time.perf_counter()
        runner.extend(slots, prompts)
        best = min(best, time.perf_counter() - start)
    return best


def set_prepacked(forward: LlamaForward, prepacked: bool) -> None:
    """Hold every projection prepacked, or drop the prepacked copies (plain `F.linear`)."""
    for projection in forward.projections():
        projection.packed = None
        if prepacked:
            projection.repack()


def main() -> None:
    """Parse flags, load the default model, print per-step times (and a profile)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--candidates", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eager-hf", action="store_true", help="Use the transformers forward.")
    parser.add_argument("--dtype", default="auto", help="Model dtype (auto: float32 on CPU).")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default).")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--prefill", action="store_true", help="Also time one prefill per batch.")
    parser.add_argument(
        "--prepack",
        choices=["auto", "both"],
        default="auto",
        help="both: every cell with plain and prepacked weights, alternated (bf16, compact).",
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
        device="cpu",
        dtype=args.dtype,
        native=False if args.eager_hf else None,
    )
    print(f"load (and warm-up): {time.perf_counter() - started:.1f}s, forward: {runner.backend}")
    variants = {"weights as loaded": None}
    if args.prepack == "both":
        if runner.native is None:
            raise SystemExit("--prepack both needs the compact forward")
        variants = {"plain weights": False, "prepacked": True}
    for batch in args.batch:
        cells = [("prefill", 0)] if args.prefill else []
        cells += [("step", width) for width in args.candidates]
        for kind, width in cells:
            timings: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, prepacked in variants.items():
                    if prepacked is not None:
                        set_prepacked(runner.native, prepacked)
                    if kind == "prefill":
                        timings[name].append(time_prefill(runner, batch, 1))
                    else:
                        timings[name].append(time_steps(runner, batch, width, args.steps, 1))
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
