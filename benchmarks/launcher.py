"""Starts `guardserve serve` as a child process on loopback, waits for /ready, and stops it.

Shared by the integration tests, the benchmarks and the load-test runner.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server exited, failed to load, or was not ready in time."""


@dataclass(frozen=True)
class RunningServer:
    """A started server: its root URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def openai_base_url(self) -> str:
        """The base URL to give the openai client."""
        return f"{self.url}/v1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    args: list[str], port: int, log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`guardserve serve ARGS` on 127.0.0.1:port in a process group of its own."""
    command = [sys.executable, "-m", "guardserve", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env or os.environ),
            start_new_session=True,
        )


def log_tail(log_path: Path, lines: int = 40) -> str:
    """The end of a server log, for error messages."""
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def wait_ready(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> None:
    """Poll GET /ready until 200; raise ServerStartError if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"server exited ({process.returncode}):\n{log_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if b'"failed"' in exc.read():
                raise ServerStartError(f"model load failed:\n{log_tail(log_path)}") from exc
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ServerStartError(f"not ready after {timeout_s:.0f} s:\n{log_tail(log_path)}")


def stop_server(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM the server (it drains), then SIGKILL its whole group (vLLM's engine included)."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@contextmanager
def serve(
    args: list[str], log_path: Path, ready_timeout_s: float = 300.0
) -> Iterator[RunningServer]:
    """Run a server on a free loopback port for the duration of the block."""
    port = free_port()
    process = start_server(args, port, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log_path, ready_timeout_s)
        yield RunningServer(url, process, log_path)
    finally:
        stop_server(process)
