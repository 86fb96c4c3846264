"""Runs the guardserve locust test headless on a loopback URL, then summarises its CSVs.

    python -m loadtests.run_headless --host http://127.0.0.1:8000 -u 8 -r 2 -t 60s
    python -m loadtests.run_headless --start-server --plain-engine torch -u 4 -t 2m

Writes PREFIX_stats.csv, PREFIX_failures.csv, ... (locust's --csv) and PREFIX_summary.json /
PREFIX_summary.md: throughput, latency and TTFT percentiles and error rate per mode. Only
loopback targets are accepted (127.0.0.0/8, localhost, ::1); a remote deployment is reached
through `kubectl port-forward`, which is loopback too.
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel

from benchmarks.launcher import ServerStartError, start_server, stop_server, wait_ready

MODES = ("plain", "stream", "guard", "verify", "disconnect", "bad")
LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
REPO_ROOT = LOCUSTFILE.parents[1]
MODE_IN_NAME = re.compile(r"\[(\w+)\]\s*$")
DURATION_PART = re.compile(r"(\d+)\s*([hms])")
CATCH_RESPONSE_ERROR = re.compile(r"^CatchResponseError\((['\"])(.*)\1\)$", re.DOTALL)


def parse_mix(text: str) -> dict[str, int]:
    """Weights per mode from "plain=4,stream=3,guard=2,verify=1"; zero weights are dropped."""
    mix: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        mode, sep, weight = part.partition("=")
        mode = mode.strip()
        if not sep or mode not in MODES:
            raise ValueError(f"bad mix entry {part!r}: expected MODE=WEIGHT, MODE in {MODES}")
        if not weight.strip().isdigit():
            raise ValueError(f"bad weight in {part!r}: expected a whole number >= 0")
        if int(weight) > 0:
            mix[mode] = int(weight)
    if not mix:
        raise ValueError(f"mix {text!r} gives no mode a positive weight")
    return mix


def loopback_error(url: str) -> str | None:
    """Why `url` is not an http(s) URL on a loopback address, or None when it is."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return f"target {url!r} is not an http(s) URL"
    host = parts.hostname or ""
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return f"target host {host!r} is not loopback (127.0.0.0/8, localhost or ::1)"


def parse_duration(text: str) -> int:
    """Seconds in a locust run time such as "90", "45s", "5m" or "1h30m"."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    parts = DURATION_PART.findall(text)
    if not parts or DURATION_PART.sub("", text).strip():
        raise ValueError(f"bad duration {text!r}: use e.g. 90, 45s, 5m or 1h30m")
    scale = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * scale[unit] for n, unit in parts)


class Percentiles(BaseModel):
    """Milliseconds at the 50th, 95th and 99th percentile (locust rounds them)."""

    p50: float
    p95: float
    p99: float


class ModeSummary(BaseModel):
    """Outcome of one request mode."""

    mode: str
    requests: int
    failures: int
    error_rate: float
    throughput_rps: float
    completion_tokens_per_request: float
    throughput_tokens_per_s: float
    latency_ms: Percentiles | None
    ttft_ms: Percentiles | None


class FailureCount(BaseModel):
    """One distinct failure message and how often it occurred."""

    mode: str
    error: str
    occurrences: int


class Totals(BaseModel):
    """All modes together."""

    requests: int
    failures: int
    error_rate: float
    throughput_rps: float
    throughput_tokens_per_s: float


class LoadTestSummary(BaseModel):
    """What PREFIX_summary.json holds."""

    run: dict[str, str | int | float | bool]
    modes: list[ModeSummary]
    totals: Totals
    failures: list[FailureCount]


def mode_of(name: str) -> str | None:
    """The mode in a locust request name such as "/v1/chat/completions [plain]", or None."""
    match = MODE_IN_NAME.search(name)
    return match.group(1) if match and match.group(1) in MODES else None


def _percentiles(row: dict[str, str]) -> Percentiles | None:
    if int(row["Request Count"]) == 0 or row["50%"] == "N/A":
        return None
    return Percentiles(p50=float(row["50%"]), p95=float(row["95%"]), p99=float(row["99%"]))


def summarize(prefix: Path, run: dict[str, str | int | float | bool]) -> LoadTestSummary:
    """Per-mode and total figures from locust's PREFIX_stats.csv and PREFIX_failures.csv."""
    with Path(f"{prefix}_stats.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    requests = {mode_of(r["Name"]): r for r in rows if r["Type"] != "TTFT" and mode_of(r["Name"])}
    ttft = {mode_of(r["Name"]): r for r in rows if r["Type"] == "TTFT" and mode_of(r["Name"])}
    modes = []
    for mode in MODES:
        row = requests.get(mode)
        if row is None:
            continue
        count, fails = int(row["Request Count"]), int(row["Failure Count"])
        rps, tokens = float(row["Requests/s"]), float(row["Average Content Size"])
        modes.append(
            ModeSummary(
                mode=mode,
                requests=count,
                failures=fails,
                error_rate=fails / count if count else 0.0,
                throughput_rps=rps,
                completion_tokens_per_request=tokens,
                throughput_tokens_per_s=tokens * rps,
                latency_ms=_percentiles(row),
                ttft_ms=_percentiles(ttft[mode]) if mode in ttft else None,
            )
        )
    total_requests = sum(m.requests for m in modes)
    total_failures = sum(m.failures for m in modes)
    totals = Totals(
        requests=total_requests,
        failures=total_failures,
        error_rate=total_failures / total_requests if total_requests else 0.0,
        throughput_rps=sum(m.throughput_rps for m in modes),
        throughput_tokens_per_s=sum(m.throughput_tokens_per_s for m in modes),
    )
    failures = []
    failures_csv = Path(f"{prefix}_failures.csv")
    if failures_csv.exists():
        with failures_csv.open(newline="") as f:
            for row in csv.DictReader(f):
                mode = mode_of(row["Name"])
                if mode is not None:
                    failures.append(
                        FailureCount(
                            mode=mode,
                            error=CATCH_RESPONSE_ERROR.sub(r"\2", row["Error"]),
                            occurrences=int(row["Occurrences"]),
                        )
                    )
    failures.sort(key=lambda fc: -fc.occurrences)
    return LoadTestSummary(run=run, modes=modes, totals=totals, failures=failures)


def _ms(p: Percentiles | None, field: str) -> str:
    return "-" if p is None else f"{getattr(p, field):.0f}"


def render_markdown(summary: LoadTestSummary) -> str:
    """A human-readable report of the summary."""
    lines = ["# guardserve load test", ""]
    lines += [f"- {key}: {value}" for key, value in summary.run.items()]
    lines += [
        "",
        "| mode | requests | failures | error rate | req/s | tokens/s | p50 ms | p95 ms | "
        "p99 ms | TTFT p50 ms | TTFT p95 ms | TTFT p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in summary.modes:
        lines.append(
            f"| {m.mode} | {m.requests} | {m.failures} | {m.error_rate:.2%} | "
            f"{m.throughput_rps:.2f} | {m.throughput_tokens_per_s:.1f} | "
            f"{_ms(m.latency_ms, 'p50')} | {_ms(m.latency_ms, 'p95')} | "
            f"{_ms(m.latency_ms, 'p99')} | {_ms(m.ttft_ms, 'p50')} | "
            f"{_ms(m.ttft_ms, 'p95')} | {_ms(m.ttft_ms, 'p99')} |"
        )
    t = summary.totals
    lines.append(
        f"| **all** | {t.requests} | {t.failures} | {t.error_rate:.2%} | "
        f"{t.throughput_rps:.2f} | {t.throughput_tokens_per_s:.1f} | | | | | | |"
    )
    if summary.failures:
        lines += ["", "| mode | error | occurrences |", "|---|---|---:|"]
        lines += [
            f"| {fc.mode} | {fc.error.replace('|', '/')} | {fc.occurrences} |"
            for fc in summary.failures
        ]
    return "\n".join(lines) + "\n"


def write_summary(prefix: Path, run: dict[str, str | int | float | bool]) -> LoadTestSummary:
    """Writes PREFIX_summary.json and PREFIX_summary.md and returns the summary."""
    summary = summarize(prefix, run)
    Path(f"{prefix}_summary.json").write_text(summary.model_dump_json(indent=2) + "\n")
    Path(f"{prefix}_summary.md").write_text(render_markdown(summary))
    return summary


def server_args(args: argparse.Namespace) -> list[str]:
    """`guardserve serve` flags for --start-server."""
    flags = ["--plain-engine", args.plain_engine]
    if args.model:
        flags += ["--model", args.model]
    if args.guard_default:
        flags += ["--guard-default", args.guard_default]
    return flags + args.server_arg


def run_locust(args: argparse.Namespace, url: str, prefix: Path) -> int:
    """Runs locust headless; it stops itself after the run time (and is killed past a margin)."""
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.run_time,
        "--stop-timeout", str(args.stop_timeout), "--csv", str(prefix), "--host", url,
        "--only-summary", "--exit-code-on-error", "0",
    ]  # fmt: skip
    env = dict(os.environ, GS_MIX=args.mix, GS_MAX_TOKENS=str(args.max_tokens))
    # The locustfile imports this module as `loadtests.run_headless`.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if args.model:
        env["GS_MODEL"] = args.model
    if args.api_key:
        env["GS_API_KEY"] = args.api_key
    limit = parse_duration(args.run_time) + args.stop_timeout + 60
    print(f"[run_headless] locust: {args.users} users for {args.run_time} on {url}", flush=True)
    try:
        return subprocess.run(cmd, env=env, timeout=limit, check=False).returncode
    except subprocess.TimeoutExpired:
        print(f"[run_headless] locust ran past {limit} s and was killed", flush=True)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default=None, help="target base URL (loopback only); "
                   "default http://127.0.0.1:8000, or the started server's port")  # fmt: skip
    p.add_argument("-u", "--users", type=int, default=4, help="concurrent users")
    p.add_argument("-r", "--spawn-rate", type=float, default=1.0, help="users started per second")
    p.add_argument("-t", "--run-time", default="60s", help="duration, e.g. 90, 45s, 5m, 1h30m")
    p.add_argument("--stop-timeout", type=int, default=30,
                   help="seconds users may finish their request after the run time")  # fmt: skip
    p.add_argument("--mix", default=os.environ.get("GS_MIX", "plain=4,stream=3,guard=2,verify=1"))
    p.add_argument("--max-tokens", type=int, default=int(os.environ.get("GS_MAX_TOKENS", "64")))
    p.add_argument("--model", default=os.environ.get("GS_MODEL"), help="model name to request")
    p.add_argument("--api-key", default=os.environ.get("GUARDSERVE_API_KEY"))
    default_prefix = f"runs/loadtest-{datetime.now(UTC):%Y%m%d-%H%M%S}/locust"
    p.add_argument("--csv-prefix", type=Path, default=Path(default_prefix))
    p.add_argument("--max-error-rate", type=float, default=None,
                   help="exit 1 when the total error rate is above this fraction")  # fmt: skip
    server = p.add_argument_group("server started by this script")
    server.add_argument("--start-server", action="store_true", help="run guardserve on 127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--plain-engine", choices=("vllm", "torch", "auto"), default="auto")
    server.add_argument("--guard-default", choices=("on", "off"), default=None)
    server.add_argument("--server-arg", action="append", default=[],
                        help="extra flag for guardserve serve (repeatable), e.g. "
                        "--server-arg=--max-queue=64")  # fmt: skip
    server.add_argument("--ready-timeout", type=float, default=600.0)
    server.add_argument("--shutdown-timeout", type=float, default=60.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    url = (args.host or f"http://127.0.0.1:{args.port}").rstrip("/")
    error = loopback_error(url)
    if error:
        print(f"[run_headless] refusing: {error}", file=sys.stderr)
        return 2
    try:
        parse_mix(args.mix)
        parse_duration(args.run_time)
    except ValueError as exc:
        print(f"[run_headless] {exc}", file=sys.stderr)
        return 2
    prefix: Path = args.csv_prefix
    prefix.parent.mkdir(parents=True, exist_ok=True)
    proc = None
    try:
        if args.start_server:
            port = urlsplit(url).port or args.port
            log = Path(f"{prefix}_server.log")
            env = dict(os.environ)
            if args.api_key:
                env["GUARDSERVE_API_KEY"] = args.api_key
            print(f"[run_headless] starting guardserve (log: {log})", flush=True)
            proc = start_server(server_args(args), port, log, env)
            try:
                wait_ready(url, proc, log, args.ready_timeout)
            except ServerStartError as exc:
                raise SystemExit(str(exc)) from exc
        rc = run_locust(args, url, prefix)
    finally:
        if proc is not None:
            stop_server(proc, args.shutdown_timeout)
    if rc != 0 or not Path(f"{prefix}_stats.csv").exists():
        print(f"[run_headless] locust failed (exit code {rc})", file=sys.stderr)
        return 1
    run_info: dict[str, str | int | float | bool] = {
        "host": url,
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "run_time": args.run_time,
        "mix": args.mix,
        "max_tokens": args.max_tokens,
        "server_started": args.start_server,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if args.start_server:
        run_info["plain_engine"] = args.plain_engine
    summary = write_summary(prefix, run_info)
    print(render_markdown(summary))
    print(f"[run_headless] wrote {prefix}_summary.json and {prefix}_summary.md")
    if args.max_error_rate is not None and summary.totals.error_rate > args.max_error_rate:
        print(
            f"[run_headless] error rate {summary.totals.error_rate:.2%} is above "
            f"{args.max_error_rate:.2%}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
