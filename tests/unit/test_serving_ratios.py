"""The serving benchmark's ratio lines compare torch plain and guarded with vLLM plain."""

from __future__ import annotations

from dataclasses import replace

from benchmarks.serving import Row, ratios


def row(engine: str, mode: str, concurrency: int, tokens_per_s: float, ttft: float) -> Row:
    return Row(engine, mode, concurrency, 8, 100, 1.0, tokens_per_s, ttft, 1.0, 1.0)


def test_ratios_per_concurrency_against_vllm_plain() -> None:
    rows = [
        row("vllm", "plain", 8, 200.0, 0.5),
        row("torch", "plain", 8, 100.0, 1.0),
        row("torch", "guard", 8, 50.0, 2.0),
        row("torch", "plain", 32, 300.0, 1.0),
    ]
    lines = ratios(rows)
    assert len(lines) == 3
    assert "torch plain / vllm plain" in lines[0] and "tokens/s  0.50" in lines[0]
    assert "torch guard / vllm plain" in lines[1] and "tokens/s  0.25" in lines[1]
    assert "ttft50  4.00" in lines[1]
    assert "torch guard / torch plain" in lines[2] and "tokens/s  0.50" in lines[2]


def test_ratios_pair_cells_within_a_repeat_and_give_median_and_range() -> None:
    rows = [
        replace(row("vllm", "plain", 8, 200.0, 0.5), repeat=0),
        replace(row("torch", "plain", 8, 100.0, 1.0), repeat=0),
        replace(row("vllm", "plain", 8, 100.0, 0.5), repeat=1),
        replace(row("torch", "plain", 8, 90.0, 0.5), repeat=1),
        replace(row("vllm", "plain", 8, 150.0, 0.5), repeat=2),
        replace(row("torch", "plain", 8, 120.0, 1.0), repeat=2),
    ]
    (line,) = ratios(rows)
    # Within repeats: 0.50, 0.90, 0.80 -> median 0.80, range 0.50-0.90 (TTFT 2, 1, 2).
    assert "tokens/s  0.80 [0.50-0.90]" in line
    assert "ttft50  2.00 [1.00-2.00]" in line
