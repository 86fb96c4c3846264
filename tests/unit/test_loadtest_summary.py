"""Tests of loadtests/run_headless.py: mix/duration parsing, the loopback rule and the summary."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)
# A hand-made locust stats file: three modes (verify absent), a TTFT row for streams, a
# request that is not a chat mode and the Aggregated row, both of which must be ignored.
STATS_ROWS = [
    "POST,/v1/chat/completions [plain],40,2,120,140.2,35.1,480.0,30.0,4.0,0.2,"
    "120,150,170,190,250,300,400,450,480,480,480",
    "POST,/v1/chat/completions [stream],20,0,900,950.0,600.0,1900.0,64.0,2.0,0.0,"
    "900,1000,1100,1200,1400,1500,1700,1800,1900,1900,1900",
    "TTFT,/v1/chat/completions [stream],20,0,150,180.0,90.0,620.0,0.0,2.0,0.0,"
    "150,170,190,200,300,400,550,600,620,620,620",
    "POST,/v1/chat/completions [guard],10,5,2000,2100.0,1500.0,3100.0,16.0,1.0,0.5,"
    "2000,2100,2200,2300,2600,2900,3100,3100,3100,3100,3100",
    "GET,/v1/models,4,0,13,12.5,9.0,15.0,50.0,0.4,0.0,13,13,14,14,15,15,15,15,15,15,15",
    ",Aggregated,94,7,300,700.0,9.0,3100.0,25.0,9.4,0.7,"
    "300,600,900,1000,1500,2000,2900,3100,3100,3100,3100",
]
FAILURES = """Method,Name,Error,Occurrences,First Seen,Last Seen
POST,/v1/chat/completions [plain],"CatchResponseError('HTTP 429: queue full')",2,t0,t1
POST,/v1/chat/completions [guard],HTTP 503: draining,5,t0,t1
GET,/v1/models,ConnectionError(),1,t0,t1
"""


@pytest.fixture(scope="module")
def rh() -> ModuleType:
    return importlib.import_module("loadtests.run_headless")


@pytest.fixture()
def prefix(tmp_path: Path) -> Path:
    out = tmp_path / "locust"
    Path(f"{out}_stats.csv").write_text("\n".join([HEADER, *STATS_ROWS]) + "\n")
    Path(f"{out}_failures.csv").write_text(FAILURES)
    return out


def test_parse_mix(rh: ModuleType) -> None:
    assert rh.parse_mix("plain=4, stream=3,guard=2,verify=1") == {
        "plain": 4,
        "stream": 3,
        "guard": 2,
        "verify": 1,
    }
    assert rh.parse_mix("plain=0,guard=5") == {"guard": 5}
    for bad in ("plain=0", "chat=1", "plain", "plain=-1", "plain=1.5", ""):
        with pytest.raises(ValueError):
            rh.parse_mix(bad)


def test_parse_duration(rh: ModuleType) -> None:
    assert rh.parse_duration("90") == 90
    assert rh.parse_duration("45s") == 45
    assert rh.parse_duration("5m") == 300
    assert rh.parse_duration("1h30m") == 5400
    for bad in ("soon", "5x", "1h then 2m"):
        with pytest.raises(ValueError):
            rh.parse_duration(bad)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000", "http://127.9.8.7", "http://localhost:8000/", "https://[::1]:8443"],
)
def test_loopback_accepted(rh: ModuleType, url: str) -> None:
    assert rh.loopback_error(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:8000",
        "http://192.168.1.2",
        "http://0.0.0.0:8000",
        "http://example.com",
        "http://localhost.example.com",
        "ftp://127.0.0.1",
        "127.0.0.1:8000",
    ],
)
def test_non_loopback_refused(rh: ModuleType, url: str) -> None:
    assert rh.loopback_error(url)


def test_main_refuses_remote_host_before_running(rh: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "never"
    assert rh.main(["--host", "http://10.1.2.3:8000", "--csv-prefix", str(out / "x")]) == 2
    assert not out.exists()


def test_summary_per_mode(rh: ModuleType, prefix: Path) -> None:
    summary = rh.summarize(prefix, {"host": "http://127.0.0.1:8000"})
    modes = {m.mode: m for m in summary.modes}
    assert list(modes) == ["plain", "stream", "guard"]  # verify sent nothing; order of MODES

    plain = modes["plain"]
    assert (plain.requests, plain.failures) == (40, 2)
    assert plain.error_rate == pytest.approx(2 / 40)
    assert plain.throughput_rps == pytest.approx(4.0)
    # 30 completion tokens per request at 4 requests/s.
    assert plain.throughput_tokens_per_s == pytest.approx(120.0)
    assert (plain.latency_ms.p50, plain.latency_ms.p95, plain.latency_ms.p99) == (120, 300, 450)
    assert plain.ttft_ms is None

    stream = modes["stream"]
    assert stream.throughput_tokens_per_s == pytest.approx(128.0)
    assert (stream.latency_ms.p50, stream.latency_ms.p99) == (900, 1800)
    assert (stream.ttft_ms.p50, stream.ttft_ms.p95, stream.ttft_ms.p99) == (150, 400, 600)

    guard = modes["guard"]
    assert guard.error_rate == pytest.approx(0.5)
    assert guard.throughput_tokens_per_s == pytest.approx(16.0)


def test_summary_totals_and_failures(rh: ModuleType, prefix: Path) -> None:
    summary = rh.summarize(prefix, {})
    totals = summary.totals
    # 40 + 20 + 10 chat requests with 2 + 0 + 5 failures; GET /v1/models is not counted.
    assert (totals.requests, totals.failures) == (70, 7)
    assert totals.error_rate == pytest.approx(0.1)
    assert totals.throughput_rps == pytest.approx(7.0)
    assert totals.throughput_tokens_per_s == pytest.approx(120.0 + 128.0 + 16.0)
    assert [(f.mode, f.error, f.occurrences) for f in summary.failures] == [
        ("guard", "HTTP 503: draining", 5),
        ("plain", "HTTP 429: queue full", 2),
    ]


def test_mode_without_requests_has_no_percentiles(rh: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    row = "POST,/v1/chat/completions [verify],0,0,0,0,0,0,0,0.0,0.0," + ",".join(["N/A"] * 11)
    Path(f"{out}_stats.csv").write_text(f"{HEADER}\n{row}\n")
    (verify,) = rh.summarize(out, {}).modes
    assert verify.requests == 0
    assert verify.error_rate == 0.0
    assert verify.latency_ms is None


def test_write_summary_files(rh: ModuleType, prefix: Path) -> None:
    rh.write_summary(prefix, {"host": "http://127.0.0.1:8000", "users": 4})
    data = json.loads(Path(f"{prefix}_summary.json").read_text())
    assert data["run"] == {"host": "http://127.0.0.1:8000", "users": 4}
    assert [m["mode"] for m in data["modes"]] == ["plain", "stream", "guard"]
    assert data["totals"]["requests"] == 70
    markdown = Path(f"{prefix}_summary.md").read_text()
    assert "| plain | 40 | 2 | 5.00% | 4.00 | 120.0 | 120 | 300 | 450 | - | - | - |" in markdown
    assert "| stream | 20 | 0 | 0.00% | 2.00 | 128.0 | 900 | 1500 | 1800 | 150 | 400 | 600 |" in (
        markdown
    )
    assert "| **all** | 70 | 7 | 10.00% | 7.00 | 264.0 |" in markdown
    assert "| guard | HTTP 503: draining | 5 |" in markdown
