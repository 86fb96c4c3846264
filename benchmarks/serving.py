"""Serving benchmark: concurrent streaming requests per engine and mode; tokens/s and latency.

Starts every engine's server at once on 127.0.0.1 and measures their cells interleaved: per
repeat, per concurrency, each engine and mode in turn, so a slow spell of the machine falls on
all of them alike. Prints every cell, then per concurrency the ratios torch plain / vLLM plain
and guarded / vLLM plain (tokens/s and TTFT p50) as the median over repeats with their range.
Not a test: run it by hand on an idle machine and read the figures.

    python -m benchmarks.serving --engines vllm torch --concurrency 1 8 32 --modes plain guard \
        --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil
from openai import AsyncOpenAI

from benchmarks.launcher import RunningServer, serve
from benchmarks.prompts import PROMPTS
from engine.model_store import DEFAULT_MODEL


@dataclass(frozen=True)
class Row:
    """Figures of one (engine, mode, concurrency) cell."""

    engine: str
    mode: str
    concurrency: int
    requests: int
    tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_s: float
    latency_p50_s: float
    latency_p95_s: float
    # Peak resident memory of the server's whole process tree (vLLM's engine core included)
    # while the cell ran.
    peak_rss_mib: float | None = None
    # Guarded cells: where a request's time went (means over requests, from the guard report).
    first_segment_words: float | None = None
    guard_token_s: float | None = None
    guard_segment_s: float | None = None
    guard_refinement_s: float | None = None
    # Which pass over all cells this is (cells of one repeat ran back to back).
    repeat: int = 0


# The guard settings of each mode. `guard` decodes one chain and streams it segment by segment
# (the mode the speed targets are set for); `guard-clause` closes segments at clause ends too;
# `guard-chains` is the model's calibrated default, which may decode several chains and hold
# the answer until they all end.
GUARD_SETTINGS: dict[str, dict[str, object]] = {
    "plain": {"enabled": False},
    "guard": {"enabled": True, "chains": 1},
    "guard-clause": {"enabled": True, "chains": 1, "segment_boundary": "clause"},
    "guard-chains": {"enabled": True},
}


async def one_request(
    client: AsyncOpenAI, prompt: str, max_tokens: int, mode: str
) -> tuple[float, float, int, dict | None]:
    """Stream one request; return (ttft, latency, completion tokens, guard report)."""
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    report = None
    stream = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"guard": GUARD_SETTINGS[mode]},
    )
    async for chunk in stream:
        if not first and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        report = (chunk.model_extra or {}).get("guard") or report
    latency = time.perf_counter() - start
    return first or latency, latency, tokens, report


async def measure(
    base_url: str, engine: str, mode: str, concurrency: int, rounds: int, max_tokens: int
) -> Row:
    """Run `rounds` waves of `concurrency` simultaneous requests."""
    client = AsyncOpenAI(base_url=base_url, api_key="unused", timeout=600)
    results: list[tuple[float, float, int, dict | None]] = []
    start = time.perf_counter()
    for wave in range(rounds):
        batch = [
            one_request(client, PROMPTS[(wave + i) % len(PROMPTS)], max_tokens, mode)
            for i in range(concurrency)
        ]
        results += await asyncio.gather(*batch)
    wall = time.perf_counter() - start
    await client.close()
    latencies = sorted(r[1] for r in results)
    tokens = sum(r[2] for r in results)
    return Row(
        engine=engine,
        mode=mode,
        concurrency=concurrency,
        requests=len(results),
        tokens=tokens,
        wall_s=round(wall, 2),
        tokens_per_s=round(tokens / wall, 1),
        ttft_p50_s=round(statistics.median(r[0] for r in results), 3),
        latency_p50_s=round(statistics.median(latencies), 3),
        latency_p95_s=round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3),
        **guard_breakdown([r[3] for r in results if r[3]]),
    )


def tree_rss_bytes(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


@contextmanager
def peak_rss(pid: int, every_s: float = 0.1) -> Iterator[list[int]]:
    """Sample the process tree's RSS while the block runs; the list holds the peak after it."""
    peak = [tree_rss_bytes(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every_s):
            peak[0] = max(peak[0], tree_rss_bytes(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


def guard_breakdown(reports: list[dict]) -> dict[str, float]:
    """Mean first-segment length and stage times of guarded requests (empty for plain ones)."""
    if not reports:
        return {}

    def mean(values: list[float]) -> float:
        return round(statistics.mean(values), 3)

    segments = [r["segments"][0]["text"] for r in reports if r.get("segments")]
    return {
        "first_segment_words": mean([len(text.split()) for text in segments] or [0]),
        "guard_token_s": mean([r["timings"]["token_s"] for r in reports]),
        "guard_segment_s": mean([r["timings"]["segment_s"] for r in reports]),
        "guard_refinement_s": mean([r["timings"]["refinement_s"] for r in reports]),
    }


def start_servers(args: argparse.Namespace, stack: ExitStack) -> dict[str, RunningServer]:
    """One server per engine (same dtype and batch size), all running until the stack closes."""
    servers = {}
    for engine in args.engines:
        flags = ["--plain-engine", engine, "--max-num-seqs", str(max(args.concurrency))]
        flags += ["--dtype", args.dtype]
        log = Path(args.out).with_suffix(f".{engine}.log")
        servers[engine] = stack.enter_context(serve(flags, log))
    return servers


def run_cells(args: argparse.Namespace, servers: dict[str, RunningServer]) -> list[Row]:
    """Every (repeat, concurrency, engine, mode) cell in that order; vLLM runs plain only."""
    rows: list[Row] = []
    for repeat in range(args.repeats):
        for concurrency in args.concurrency:
            for engine, server in servers.items():
                for mode in args.modes if engine == "torch" else ["plain"]:
                    rounds = max(1, args.requests // concurrency)
                    with peak_rss(server.process.pid) as peak:
                        row = asyncio.run(
                            measure(
                                server.openai_base_url,
                                engine,
                                mode,
                                concurrency,
                                rounds,
                                args.max_tokens,
                            )
                        )
                    row = replace(row, peak_rss_mib=round(peak[0] / 2**20, 1), repeat=repeat)
                    print(json.dumps(asdict(row)), flush=True)
                    rows.append(row)
    return rows


def ratios(rows: list[Row]) -> list[str]:
    """Per concurrency: torch plain / vLLM plain, torch guarded / vLLM plain and guarded / plain
    on torch, in tokens/s and TTFT p50; each the median over repeats of the ratio within a
    repeat, with the lowest and highest (a ratio is left out when a side is missing)."""
    cells = {(r.engine, r.mode, r.concurrency, r.repeat): r for r in rows}
    repeats = sorted({r.repeat for r in rows})
    pairs = [
        ("torch plain / vllm plain", ("torch", "plain"), ("vllm", "plain")),
        ("torch guard / vllm plain", ("torch", "guard"), ("vllm", "plain")),
        ("torch guard / torch plain", ("torch", "guard"), ("torch", "plain")),
        ("torch guard-clause / vllm plain", ("torch", "guard-clause"), ("vllm", "plain")),
    ]
    lines = []
    for concurrency in sorted({r.concurrency for r in rows}):
        for label, top, bottom in pairs:
            speed, ttft = [], []
            for repeat in repeats:
                a = cells.get((*top, concurrency, repeat))
                b = cells.get((*bottom, concurrency, repeat))
                if a is None or b is None or not b.tokens_per_s or not b.ttft_p50_s:
                    continue
                speed.append(a.tokens_per_s / b.tokens_per_s)
                ttft.append(a.ttft_p50_s / b.ttft_p50_s)
            if speed:
                lines.append(
                    f"conc {concurrency:>3}  {label:32} tokens/s {spread(speed)}"
                    f"  ttft50 {spread(ttft)}"
                )
    return lines


def spread(values: list[float]) -> str:
    """The median, and with several values their range: '0.85 [0.80-0.91]'."""
    text = f"{statistics.median(values):5.2f}"
    if len(values) > 1:
        text += f" [{min(values):.2f}-{max(values):.2f}]"
    return text


def print_table(rows: list[Row]) -> None:
    """Side-by-side table of every cell, then the throughput and TTFT ratios."""
    header = (
        f"{'rep':>3} {'engine':6} {'mode':12} {'conc':>4} {'req':>4} {'tok/s':>7} {'ttft50':>7}"
    )
    print(
        f"\n{header} {'lat50':>7} {'lat95':>7} {'RSS MiB':>8} {'seg1 words':>10}"
        f" {'token/seg/refine s':>20}"
    )
    for r in rows:
        stages = (
            f"{r.guard_token_s}/{r.guard_segment_s}/{r.guard_refinement_s}"
            if r.guard_token_s is not None
            else ""
        )
        print(
            f"{r.repeat:>3} {r.engine:6} {r.mode:12} {r.concurrency:>4} {r.requests:>4}"
            f" {r.tokens_per_s:>7}"
            f" {r.ttft_p50_s:>7} {r.latency_p50_s:>7} {r.latency_p95_s:>7}"
            f" {r.peak_rss_mib or '':>8} {r.first_segment_words or '':>10} {stages:>20}"
        )
    print()
    for line in ratios(rows):
        print(line)


def main() -> None:
    """Parse flags, run the engines, write JSON and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["vllm", "torch"])
    parser.add_argument(
        "--modes", nargs="+", choices=sorted(GUARD_SETTINGS), default=["plain", "guard"]
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=32, help="Requests per cell (at least).")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--repeats", type=int, default=1, help="Passes over all cells (default: %(default)s)."
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="The servers' --dtype, the same for every engine (default: %(default)s).",
    )
    parser.add_argument("--out", default="runs/bench/serving.json")
    args = parser.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        rows = run_cells(args, start_servers(args, stack))
    Path(args.out).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    print_table(rows)


if __name__ == "__main__":
    main()
