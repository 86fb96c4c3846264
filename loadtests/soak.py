"""Soak test: a long locust run at saturation that watches latency drift, RSS and the gauges.

    python -m loadtests.soak --minutes 30 --users 12 --out runs/soak

Starts guardserve on 127.0.0.1 (torch plain engine by default), runs loadtests/run_headless's
locust with the mixed traffic (disconnects and bad inputs included), samples GET /metrics
every ~30 s, waits for the running/waiting gauges to drain, and writes OUT/soak_summary.json
and OUT/soak_summary.md. Exits 1 on any 5xx, lost request, undrained gauge or RSS growth over
the limit.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from benchmarks.launcher import ServerStartError, free_port, start_server, stop_server, wait_ready
from loadtests import run_headless as rh

DEFAULT_MIX = "plain=4,stream=3,guard=2,verify=1,disconnect=1,bad=1"
SHED_MARKER = "HTTP 429"  # queue full: the server answered and refused, nothing was lost


class MetricsSample(BaseModel):
    """One scrape of GET /metrics; t is seconds since the load started."""

    t: float
    rss_bytes: float | None
    running: float
    waiting: float
    requests_total: dict[str, float]  # "mode/status" -> count


class LatencyRecord(BaseModel):
    """One chat request as the locustfile logged it (GS_LATENCY_LOG)."""

    t: float
    mode: str
    ms: float
    ok: bool
    error: str | None = None


class WindowLatency(BaseModel):
    """Requests and latency percentiles (ms) of one mode within a time window."""

    requests: int
    p50_ms: float
    p99_ms: float


class Outcomes(BaseModel):
    """Locust's verdicts on one mode's requests."""

    success: int = 0
    failure: int = 0


class SoakSummary(BaseModel):
    """What OUT/soak_summary.json holds."""

    run: dict[str, str | int | float | bool]
    requests_by_mode: dict[str, Outcomes]
    requests_by_status: dict[str, int]
    server_5xx: int
    shed_429: int
    lost: int
    failures: dict[str, int]
    latency_start: dict[str, WindowLatency]
    latency_end: dict[str, WindowLatency]
    rss_start_bytes: float | None
    rss_end_bytes: float | None
    rss_change: float | None
    gauges_end: dict[str, float]
    samples: list[MetricsSample]
    problems: list[str]


def parse_metrics(text: str, t: float) -> MetricsSample:
    """The soak's figures from a Prometheus exposition text (gauges summed over engines)."""
    rss: float | None = None
    running = waiting = 0.0
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "process_resident_memory_bytes":
                rss = sample.value
            elif sample.name == "guardserve_requests_running":
                running += sample.value
            elif sample.name == "guardserve_requests_waiting":
                waiting += sample.value
            elif sample.name == "guardserve_requests_total":
                key = f"{sample.labels['mode']}/{sample.labels['status']}"
                totals[key] = totals.get(key, 0.0) + sample.value
    return MetricsSample(
        t=t, rss_bytes=rss, running=running, waiting=waiting, requests_total=totals
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100) of ascending, non-empty values."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def window_latency(
    records: Sequence[LatencyRecord], start: float, end: float
) -> dict[str, WindowLatency]:
    """p50/p99 per mode of the requests that ended within [start, end] (unix seconds)."""
    by_mode: dict[str, list[float]] = {}
    for r in records:
        if start <= r.t <= end:
            by_mode.setdefault(r.mode, []).append(r.ms)
    result = {}
    for mode in rh.MODES:
        values = sorted(by_mode.get(mode, []))
        if values:
            result[mode] = WindowLatency(
                requests=len(values), p50_ms=percentile(values, 50), p99_ms=percentile(values, 99)
            )
    return result


def rss_at_start(samples: Sequence[MetricsSample], warmup_s: float) -> float | None:
    """RSS of the first sample taken after the warm-up (of the first sample if none is)."""
    with_rss = [s for s in samples if s.rss_bytes is not None]
    if not with_rss:
        return None
    after = [s for s in with_rss if s.t >= warmup_s]
    return (after or with_rss)[0].rss_bytes


def build_summary(
    run: dict[str, str | int | float | bool],
    records: Sequence[LatencyRecord],
    samples: Sequence[MetricsSample],
    started_at: float,
    ended_at: float,
    warmup_s: float,
    window_s: float,
    max_rss_growth: float,
) -> SoakSummary:
    """The soak's verdict from the request log and the metrics samples (the last one is final)."""
    by_mode: dict[str, Outcomes] = {}
    failures: Counter[str] = Counter()
    for r in records:
        outcome = by_mode.setdefault(r.mode, Outcomes())
        if r.ok:
            outcome.success += 1
        else:
            outcome.failure += 1
            failures[f"{r.mode}: {r.error}"] += 1
    shed = sum(n for error, n in failures.items() if SHED_MARKER in error)
    lost = sum(failures.values()) - shed
    final = samples[-1] if samples else None
    by_status = {k: int(v) for k, v in sorted((final.requests_total if final else {}).items())}
    server_5xx = sum(n for key, n in by_status.items() if key.rpartition("/")[2].startswith("5"))
    rss_start = rss_at_start(samples, warmup_s)
    rss_end = final.rss_bytes if final else None
    rss_change = (rss_end - rss_start) / rss_start if rss_start and rss_end is not None else None
    gauges = {"running": final.running, "waiting": final.waiting} if final else {}

    problems = []
    if not records:
        problems.append("no request was logged")
    if server_5xx:
        problems.append(f"{server_5xx} responses with a 5xx status")
    if lost:
        problems.append(f"{lost} lost requests (locust failures other than 429)")
    if final is None:
        problems.append("/metrics was never scraped")
    elif final.running or final.waiting:
        problems.append(f"gauges not back to 0: running={final.running} waiting={final.waiting}")
    if rss_change is None:
        problems.append("RSS not measured")
    elif rss_change > max_rss_growth:
        problems.append(f"RSS grew {rss_change:.1%}, above {max_rss_growth:.0%}")
    return SoakSummary(
        run=run,
        requests_by_mode={m: by_mode[m] for m in rh.MODES if m in by_mode},
        requests_by_status=by_status,
        server_5xx=server_5xx,
        shed_429=shed,
        lost=lost,
        failures=dict(failures.most_common()),
        latency_start=window_latency(records, started_at, started_at + window_s),
        latency_end=window_latency(records, ended_at - window_s, ended_at),
        rss_start_bytes=rss_start,
        rss_end_bytes=rss_end,
        rss_change=rss_change,
        gauges_end=gauges,
        samples=list(samples),
        problems=problems,
    )


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def render_markdown(s: SoakSummary) -> str:
    """A human-readable report of the soak summary."""
    lines = ["# guardserve soak test", ""]
    lines += [f"- {key}: {value}" for key, value in s.run.items()]
    lines += [
        "",
        "## Requests by mode (locust)",
        "",
        "| mode | success | failure |",
        "|---|---:|---:|",
    ]
    lines += [f"| {m} | {o.success} | {o.failure} |" for m, o in s.requests_by_mode.items()]
    lines += ["", "## Requests by HTTP status (guardserve_requests_total)", ""]
    lines += ["| mode | status | requests |", "|---|---|---:|"]
    for key, n in s.requests_by_status.items():
        mode, _, status = key.rpartition("/")
        lines.append(f"| {mode} | {status} | {n} |")
    lines += ["", f"- 5xx responses: {s.server_5xx}", f"- lost requests: {s.lost}"]
    lines += [f"- shed (429): {s.shed_429}"]
    if s.failures:
        lines += ["", "| failure | occurrences |", "|---|---:|"]
        lines += [f"| {e.replace('|', '/')} | {n} |" for e, n in s.failures.items()]
    lines += ["", "## Latency per mode, first and last window", ""]
    lines += [
        "| mode | start requests | start p50 ms | start p99 ms | end requests | end p50 ms | "
        "end p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in rh.MODES:
        a, b = s.latency_start.get(mode), s.latency_end.get(mode)
        if a is None and b is None:
            continue
        cells = [
            f"{w.requests} | {w.p50_ms:.0f} | {w.p99_ms:.0f}" if w else "0 | - | -" for w in (a, b)
        ]
        lines.append(f"| {mode} | {cells[0]} | {cells[1]} |")
    change = "-" if s.rss_change is None else f"{s.rss_change:+.1%}"
    lines += ["", "## Memory and gauges", ""]
    lines += [
        f"- RSS start: {_mib(s.rss_start_bytes)} MiB, end: {_mib(s.rss_end_bytes)} MiB ({change})",
        f"- gauges at the end: {', '.join(f'{k}={v:g}' for k, v in s.gauges_end.items())}",
        "",
        "| t s | RSS MiB | running | waiting |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {m.t:.0f} | {_mib(m.rss_bytes)} | {m.running:g} | {m.waiting:g} |" for m in s.samples
    ]
    verdict = "PASS" if not s.problems else "FAIL: " + "; ".join(s.problems)
    lines += ["", f"**{verdict}**"]
    return "\n".join(lines) + "\n"


def load_records(path: Path) -> list[LatencyRecord]:
    """The request log the locustfile wrote (empty when it wrote none)."""
    if not path.exists():
        return []
    return [LatencyRecord.model_validate_json(line) for line in path.open() if line.strip()]


def scrape(url: str, t: float, headers: dict[str, str]) -> MetricsSample | None:
    """One /metrics sample, or None when the server did not answer."""
    try:
        response = httpx.get(f"{url}/metrics", headers=headers, timeout=10.0)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        print(f"[soak] /metrics failed: {exc}", flush=True)
        return None
    return parse_metrics(response.text, t)


class Sampler(threading.Thread):
    """Scrapes /metrics every `every_s` seconds until stopped."""

    def __init__(self, url: str, started_at: float, every_s: float, headers: dict[str, str]):
        super().__init__(daemon=True)
        self.url, self.started_at, self.every_s, self.headers = url, started_at, every_s, headers
        self.samples: list[MetricsSample] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        """Sample now and then every period."""
        while not self.stopped.is_set():
            sample = scrape(self.url, time.time() - self.started_at, self.headers)
            if sample is not None:
                self.samples.append(sample)
                print(
                    f"[soak] t={sample.t:.0f}s rss={_mib(sample.rss_bytes)} MiB "
                    f"running={sample.running:g} waiting={sample.waiting:g}",
                    flush=True,
                )
            self.stopped.wait(self.every_s)


def drained_sample(
    url: str, started_at: float, timeout_s: float, headers: dict[str, str]
) -> MetricsSample | None:
    """Scrape until running and waiting are 0 or the timeout passes; the last sample."""
    deadline = time.monotonic() + timeout_s
    sample = None
    while True:
        sample = scrape(url, time.time() - started_at, headers) or sample
        done = sample is not None and sample.running == 0 and sample.waiting == 0
        if done or time.monotonic() >= deadline:
            return sample
        time.sleep(2.0)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="duration of the load")
    p.add_argument("-u", "--users", type=int, default=12, help="concurrent users")
    p.add_argument("-r", "--spawn-rate", type=float, default=2.0, help="users started per second")
    p.add_argument("--mix", default=DEFAULT_MIX)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path(f"runs/soak-{datetime.now(UTC):%Y%m%d-%H%M%S}"))
    p.add_argument("--host", default=None, help="test this running loopback server instead")
    p.add_argument("--port", type=int, default=0, help="port of the started server (0: free)")
    p.add_argument("--plain-engine", choices=("vllm", "torch", "auto"), default="torch")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra flag for guardserve serve (repeatable)")  # fmt: skip
    p.add_argument("--api-key", default=os.environ.get("GUARDSERVE_API_KEY"))
    p.add_argument("--sample-every", type=float, default=30.0, help="seconds between scrapes")
    p.add_argument("--warmup", type=float, default=120.0,
                   help="seconds before the start RSS is taken")  # fmt: skip
    p.add_argument("--window-minutes", type=float, default=5.0,
                   help="length of the start and end latency windows")  # fmt: skip
    p.add_argument("--drain-timeout", type=float, default=60.0)
    p.add_argument("--max-rss-growth", type=float, default=0.10,
                   help="fail when RSS grows by more than this fraction")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    port = args.port or free_port()
    url = (args.host or f"http://127.0.0.1:{port}").rstrip("/")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "locust"
    seconds = round(args.minutes * 60)
    locust_argv = ["--host", url, "-u", str(args.users), "-r", str(args.spawn_rate)]
    locust_argv += ["-t", f"{seconds}s", "--mix", args.mix, "--max-tokens", str(args.max_tokens)]
    locust_argv += ["--csv-prefix", str(prefix), "--plain-engine", args.plain_engine]
    locust_argv += [f"--server-arg={flag}" for flag in args.server_arg]
    if args.api_key:
        locust_argv += ["--api-key", args.api_key]
    largs = rh.build_parser().parse_args(locust_argv)
    error = rh.loopback_error(url)
    if error:
        print(f"[soak] refusing: {error}", file=sys.stderr)
        return 2
    try:
        rh.parse_mix(args.mix)
    except ValueError as exc:
        print(f"[soak] {exc}", file=sys.stderr)
        return 2
    log_path = out / "requests.jsonl"
    log_path.unlink(missing_ok=True)
    os.environ["GS_LATENCY_LOG"] = str(log_path.resolve())
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    proc = None
    try:
        if not args.host:
            server_log = out / "server.log"
            env = dict(os.environ)
            if args.api_key:
                env["GUARDSERVE_API_KEY"] = args.api_key
            print(f"[soak] starting guardserve on {url} (log: {server_log})", flush=True)
            proc = start_server(rh.server_args(largs), urlsplit(url).port or port, server_log, env)
            try:
                wait_ready(url, proc, server_log, largs.ready_timeout)
            except ServerStartError as exc:
                raise SystemExit(str(exc)) from exc
        started_at = time.time()
        sampler = Sampler(url, started_at, args.sample_every, headers)
        sampler.start()
        rc = rh.run_locust(largs, url, prefix)
        ended_at = time.time()
        sampler.stopped.set()
        sampler.join()
        final = drained_sample(url, started_at, args.drain_timeout, headers)
    finally:
        if proc is not None:
            stop_server(proc, largs.shutdown_timeout)
    samples = sampler.samples + ([final] if final else [])
    run: dict[str, str | int | float | bool] = {
        "host": url,
        "minutes": args.minutes,
        "users": args.users,
        "mix": args.mix,
        "max_tokens": args.max_tokens,
        "plain_engine": args.plain_engine if not args.host else "n/a (external server)",
        "locust_exit_code": rc,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    summary = build_summary(
        run,
        load_records(log_path),
        samples,
        started_at,
        ended_at,
        args.warmup,
        args.window_minutes * 60,
        args.max_rss_growth,
    )
    if Path(f"{prefix}_stats.csv").exists():
        rh.write_summary(prefix, run)  # locust's own per-mode table beside the soak summary
    (out / "soak_summary.json").write_text(summary.model_dump_json(indent=2) + "\n")
    markdown = render_markdown(summary)
    (out / "soak_summary.md").write_text(markdown)
    print(markdown)
    print(f"[soak] wrote {out}/soak_summary.json and {out}/soak_summary.md")
    if rc != 0:
        print(f"[soak] locust failed (exit code {rc})", file=sys.stderr)
    return 1 if summary.problems or rc != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
