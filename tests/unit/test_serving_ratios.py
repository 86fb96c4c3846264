"""The serving benchmark's ratio lines compare torch plain and guarded with vLLM plain."""

from __future__ import annotations

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
