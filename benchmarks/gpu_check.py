"""In-process check of the torch engine on GPUs: plain vs guarded streams, dispatcher, memory.

Builds the server's torch engine(s) (one runner per visible GPU, two at most, behind
the least-loaded dispatcher when there are several), runs `n` concurrent plain and then
guarded requests for each `--streams n`, and prints tokens/s, TTFT p50, the guarded/plain
ratio, each runner's forward and the CUDA memory figures. No HTTP, no network.

    python -m benchmarks.gpu_check [--model HF_FOLDER] [--streams 1 8 32]
    python -m benchmarks.gpu_check --cpu-smoke     # the same code path on the CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from benchmarks.prompts import PROMPTS
from engine.model_store import DEFAULT_MODEL, resolve_model
from engine.sampling import SamplingParams
from guard.config import GuardConfig, GuardRun
from server.config import ServerConfig
from server.engine_factory import (
    build_torch_engines,
    engine_dtype,
    load_guard_assets,
    runner_devices,
)
from server.engines.base import GuardEngine


@dataclass(frozen=True)
class Cell:
    """Figures of one (mode, streams) run."""

    mode: str
    streams: int
    tokens: int
    wall_s: float
    ttft_p50_s: float

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens per second over the whole wave."""
        return self.tokens / self.wall_s if self.wall_s else 0.0


def prompt_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a one-message chat with the generation prompt."""
    chat = [{"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(str(rendered), add_special_tokens=False)


async def one(
    engine: GuardEngine, rid: str, ids: list[int], max_tokens: int, guard: GuardRun | None
) -> tuple[float, int]:
    """Stream one request to its end; (ttft, completion tokens)."""
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    if guard is None:
        stream = engine.generate(rid, ids, params)
    else:
        stream = engine.generate_guarded(rid, ids, params, guard)
    async for output in stream:
        if not first and output.text:
            first = time.perf_counter() - start
        tokens = output.completion_tokens
    return first or time.perf_counter() - start, tokens


async def wave(
    engine: GuardEngine, prompts: list[list[int]], streams: int, max_tokens: int, guarded: bool
) -> Cell:
    """`streams` simultaneous requests, plain or guarded."""
    guard = GuardRun(GuardConfig(), stream=True) if guarded else None
    mode = "guard" if guarded else "plain"
    start = time.perf_counter()
    results = await asyncio.gather(
        *[
            one(engine, f"{mode}-{streams}-{i}", prompts[i % len(prompts)], max_tokens, guard)
            for i in range(streams)
        ]
    )
    wall = time.perf_counter() - start
    ttft = statistics.median(r[0] for r in results)
    return Cell(mode, streams, sum(r[1] for r in results), wall, ttft)


def memory_report(devices: list[str]) -> list[str]:
    """Allocated, peak allocated, reserved and free/total memory of each CUDA device used."""
    lines = []
    for device in sorted(set(devices)):
        if not device.startswith("cuda"):
            continue
        index = torch.device(device).index or 0
        free, total = torch.cuda.mem_get_info(index)
        gib = 1 << 30
        lines.append(
            f"{device}: allocated {torch.cuda.memory_allocated(index) / gib:.2f} GiB, peak"
            f" {torch.cuda.max_memory_allocated(index) / gib:.2f} GiB, reserved"
            f" {torch.cuda.memory_reserved(index) / gib:.2f} GiB, free {free / gib:.2f}"
            f" of {total / gib:.2f} GiB"
        )
    return lines


async def run(args: argparse.Namespace) -> None:
    """Build the engines, warm them up, run every wave and print the figures."""
    model = Path(args.model) if args.model else resolve_model(None)
    config = ServerConfig(
        device=args.device,
        torch_runners=args.runners,
        max_num_seqs=max(args.streams),
        max_model_len=args.max_model_len,
        dtype=args.dtype,
    )
    devices = runner_devices(config)
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    started = time.perf_counter()
    assets = load_guard_assets(model, config, DEFAULT_MODEL)
    dtype = engine_dtype(config)
    engine = build_torch_engines(model, config, tokenizer, dtype, args.max_model_len, assets)
    runners = getattr(engine, "engines", [engine])
    forwards = ", ".join(f"{e.label}: {e.runner.backend}" for e in runners)
    print(f"model {model} ({dtype})\nrunners {len(runners)} ({forwards})")
    print(f"load: {time.perf_counter() - started:.1f}s", flush=True)
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    await wave(engine, prompts, 1, 4, guarded=True)  # warm-up
    cells: list[Cell] = []
    for streams in args.streams:
        for guarded in (False, True):
            cell = await wave(engine, prompts, streams, args.max_tokens, guarded)
            cells.append(cell)
            print(
                f"{cell.mode:5} streams {streams:>3}: {cell.tokens_per_s:8.1f} tok/s"
                f"  ttft50 {cell.ttft_p50_s:6.3f}s  ({cell.tokens} tokens, {cell.wall_s:.1f}s)",
                flush=True,
            )
    plain = {c.streams: c for c in cells if c.mode == "plain"}
    for cell in cells:
        if cell.mode == "guard" and plain[cell.streams].tokens_per_s:
            ratio = cell.tokens_per_s / plain[cell.streams].tokens_per_s
            print(f"guarded/plain tokens/s at {cell.streams} streams: {ratio:.2f}")
    for line in memory_report(devices):
        print(line)
    await engine.shutdown()


def main() -> None:
    """Parse flags and run the check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF model folder (default: the embedded model).")
    parser.add_argument("--device", default="auto", help="auto: every visible GPU.")
    parser.add_argument("--runners", type=int, help="Torch runners (default: 2 GPUs at most).")
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="Engine dtype (auto: bf16 on CUDA, fp32 on the CPU).",
    )
    parser.add_argument(
        "--no-cudnn-attention",
        action="store_true",
        help="Disable the cuDNN attention backend (it builds a graph per new shape).",
    )
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="Run on the CPU with tiny sizes (no GPU needed)."
    )
    args = parser.parse_args()
    if args.cpu_smoke:
        args.device, args.streams, args.max_tokens = "cpu", [1, 2], 4
        args.runners = args.runners or 2
    elif not torch.cuda.is_available():
        parser.error("no CUDA device visible (use --cpu-smoke to try the code path on the CPU)")
    elif args.runners is None and args.device == "auto":
        args.runners = min(2, torch.cuda.device_count())
    if args.no_cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
