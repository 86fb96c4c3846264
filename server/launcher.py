"""Starts a guardserve server as a child process on loopback and waits until it is ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunningServer:
    """A started server: its base URL (…/v1 for the openai client) and process."""

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


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll GET /ready until 200; fail early if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server at {url} not ready after {timeout_s:.0f} s")


@contextmanager
def serve(
    args: list[str], log_path: Path, ready_timeout_s: float = 300.0
) -> Iterator[RunningServer]:
    """Run `guardserve serve ARGS` on 127.0.0.1 and a free port for the duration of the block."""
    port = free_port()
    command = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process, ready_timeout_s)
            yield RunningServer(url, process, log_path)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
