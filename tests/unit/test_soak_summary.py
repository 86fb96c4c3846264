"""Tests of loadtests/soak.py's summary maths and loadtests/bad_inputs.py's request list."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from guard.config import GuardConfig
from loadtests import soak
from loadtests.bad_inputs import BAD_INPUTS, bad_body, check_error_response
from server.protocol import ChatCompletionRequest

METRICS = """# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 2.097152e+08
# TYPE guardserve_requests_running gauge
guardserve_requests_running{engine="torch"} 3.0
guardserve_requests_running{engine="vllm"} 1.0
# TYPE guardserve_requests_waiting gauge
guardserve_requests_waiting{engine="torch"} 2.0
# TYPE guardserve_requests_total counter
guardserve_requests_total{mode="plain",status="200"} 40.0
guardserve_requests_total{mode="plain",status="499"} 3.0
guardserve_requests_total{mode="unknown",status="400"} 7.0
guardserve_requests_total{mode="guard",status="500"} 1.0
"""


def sample(t: float, rss_mib: float, running: float = 0, waiting: float = 0, **totals: float):
    return soak.MetricsSample(
        t=t, rss_bytes=rss_mib * 2**20, running=running, waiting=waiting, requests_total=totals
    )


def rec(t: float, mode: str, ms: float, ok: bool = True, error: str | None = None):
    return soak.LatencyRecord(t=t, mode=mode, ms=ms, ok=ok, error=error)


def test_parse_metrics_sums_gauges_over_engines() -> None:
    s = soak.parse_metrics(METRICS, 12.5)
    assert s.t == 12.5
    assert s.rss_bytes == 200 * 2**20
    assert (s.running, s.waiting) == (4.0, 2.0)
    assert s.requests_total == {
        "plain/200": 40.0,
        "plain/499": 3.0,
        "unknown/400": 7.0,
        "guard/500": 1.0,
    }


def test_parse_metrics_without_guardserve_series() -> None:
    s = soak.parse_metrics("# TYPE up gauge\nup 1.0\n", 0.0)
    assert (s.rss_bytes, s.running, s.waiting, s.requests_total) == (None, 0.0, 0.0, {})


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert soak.percentile(values, 50) == 50.0
    assert soak.percentile(values, 99) == 99.0
    assert soak.percentile([7.0], 99) == 7.0
    assert soak.percentile([1.0, 2.0, 3.0], 50) == 2.0


def test_window_latency_keeps_only_the_window_and_splits_modes() -> None:
    records = [rec(100 + i, "plain", 10.0 * (i + 1)) for i in range(10)]  # 10..100 ms
    records += [rec(105, "stream", 900.0), rec(500, "plain", 5000.0), rec(99, "plain", 1.0)]
    windows = soak.window_latency(records, 100, 110)
    assert list(windows) == ["plain", "stream"]
    assert windows["plain"] == soak.WindowLatency(requests=10, p50_ms=50.0, p99_ms=100.0)
    assert windows["stream"] == soak.WindowLatency(requests=1, p50_ms=900.0, p99_ms=900.0)


def test_rss_at_start_takes_first_sample_after_warmup() -> None:
    samples = [sample(0, 100), sample(60, 150), sample(120, 180), sample(180, 185)]
    assert soak.rss_at_start(samples, 100) == 180 * 2**20
    assert soak.rss_at_start(samples, 999) == 100 * 2**20  # none after: the first one
    assert soak.rss_at_start([], 10) is None


def run_summary(records, samples, max_rss_growth: float = 0.10) -> soak.SoakSummary:
    return soak.build_summary(
        {"users": 4}, records, samples, 1000.0, 1600.0, 120.0, 60.0, max_rss_growth
    )


def test_clean_soak_passes() -> None:
    records = [rec(1010, "plain", 100), rec(1590, "plain", 120), rec(1020, "bad", 5)]
    records += [rec(1030, "disconnect", 300)]
    samples = [sample(0, 180), sample(130, 200, running=4, waiting=2), sample(610, 210)]
    samples[-1].requests_total = {"plain/200": 2.0, "unknown/404": 1.0, "plain/499": 1.0}
    s = run_summary(records, samples)
    assert s.problems == []
    assert s.requests_by_mode == {
        "plain": soak.Outcomes(success=2),
        "disconnect": soak.Outcomes(success=1),
        "bad": soak.Outcomes(success=1),
    }
    assert s.requests_by_status == {"plain/200": 2, "plain/499": 1, "unknown/404": 1}
    assert (s.server_5xx, s.lost, s.shed_429) == (0, 0, 0)
    assert s.rss_start_bytes == 200 * 2**20  # first sample after the 120 s warm-up
    assert s.rss_change == pytest.approx(0.05)
    assert s.gauges_end == {"running": 0.0, "waiting": 0.0}
    # Start window 1000..1060, end window 1540..1600.
    assert s.latency_start["plain"].p50_ms == 100
    assert s.latency_end["plain"].p50_ms == 120
    assert "disconnect" not in s.latency_end
    assert "**PASS**" in soak.render_markdown(s)


def test_failures_5xx_gauges_and_rss_growth_are_problems() -> None:
    records = [
        rec(1010, "plain", 100, ok=False, error="HTTP 429: queue full"),
        rec(1011, "plain", 100, ok=False, error="HTTP 429: queue full"),
        rec(1012, "guard", 100, ok=False, error="HTTP 500: boom"),
        rec(1013, "stream", 100, ok=False, error="stream ended without [DONE]"),
        rec(1014, "stream", 100),
    ]
    samples = [sample(130, 200), sample(600, 260, running=1)]
    samples[-1].requests_total = {"guard/500": 1.0, "guard/503": 2.0, "plain/429": 2.0}
    s = run_summary(records, samples)
    assert s.shed_429 == 2
    assert s.lost == 2
    assert s.server_5xx == 3
    assert s.requests_by_mode["stream"] == soak.Outcomes(success=1, failure=1)
    assert s.failures["plain: HTTP 429: queue full"] == 2
    assert s.rss_change == pytest.approx(0.30)
    assert s.problems == [
        "3 responses with a 5xx status",
        "2 lost requests (locust failures other than 429)",
        "gauges not back to 0: running=1.0 waiting=0.0",
        "RSS grew 30.0%, above 10%",
    ]
    markdown = soak.render_markdown(s)
    assert "| guard | 500 | 1 |" in markdown
    assert "**FAIL: 3 responses with a 5xx status;" in markdown


def test_nothing_measured_is_a_problem() -> None:
    s = run_summary([], [])
    assert s.problems == [
        "no request was logged",
        "/metrics was never scraped",
        "RSS not measured",
    ]


def test_bad_inputs_are_rejected_by_the_request_schemas() -> None:
    for bad in BAD_INPUTS:
        body = bad_body(bad, "tiny-model")
        if bad.expected_status == 404:
            assert ChatCompletionRequest.model_validate_json(body).model == bad.overrides["model"]
            continue
        assert bad.expected_status == 400
        with pytest.raises(ValidationError):
            request = ChatCompletionRequest.model_validate_json(body)
            # The server checks `guard` against GuardConfig once merged with its defaults.
            GuardConfig.model_validate({**GuardConfig().model_dump(), **(request.guard or {})})


def test_lone_surrogate_is_sent_as_raw_json_escape() -> None:
    (bad,) = [b for b in BAD_INPUTS if b.name == "lone_surrogate"]
    body = bad_body(bad, "m")
    assert b'"broken \\ud800 text"' in body
    assert json.loads(body)["messages"][0]["content"] == "broken \ud800 text"


def test_check_error_response() -> None:
    bad = BAD_INPUTS[0]
    error = {"error": {"message": "no such model", "type": "invalid_request_error"}}
    assert check_error_response(bad, bad.expected_status, error) is None
    assert "expected HTTP 404, got 500" in (check_error_response(bad, 500, error) or "")
    assert "without an OpenAI error object" in (
        check_error_response(bad, bad.expected_status, {"detail": "x"}) or ""
    )
    assert check_error_response(bad, bad.expected_status, None)
