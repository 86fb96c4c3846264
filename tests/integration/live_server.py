"""A `guardserve serve` child process on 127.0.0.1 and helpers the integration tests share."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"
MAX_MODEL_LEN = 512
API_KEY = "test-key-4b1d"
READY_TIMEOUT_S = 240.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One `guardserve serve` child process and the ways tests talk to it."""

    name: str
    engine: str
    flags: list[str]
    port: int = field(default_factory=free_port)
    api_key: str | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        handle, path = tempfile.mkstemp(prefix=f"guardserve-{self.name}-", suffix=".log")
        os.close(handle)
        self.log_path = Path(path)

    @property
    def base_url(self) -> str:
        """Root URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Launch the server in its own process group (vLLM adds an engine-core child)."""
        command = [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--plain-engine",
            self.engine,
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--log-level",
            "warning",
            *self.flags,
        ]
        if self.api_key:
            command += ["--api-key", self.api_key]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self) -> None:
        """Poll GET /ready until 200; fail with the log's tail if the process dies or stalls."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                pytest.fail(f"server {self.name} exited early:\n{self.log_tail()}")
            try:
                response = httpx.get(f"{self.base_url}/ready", timeout=2.0)
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 200:
                return
            if response is not None and response.json().get("status") == "failed":
                pytest.fail(f"server {self.name} failed to load:\n{self.log_tail()}")
            time.sleep(0.5)
        pytest.fail(f"server {self.name} not ready in {READY_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the server's process group, then SIGKILL whatever outlives a grace period."""
        if self.process is None:
            return
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's output, for failure messages."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def http(self, **kwargs: Any) -> httpx.Client:
        """A raw HTTP client bound to the server."""
        return httpx.Client(base_url=self.base_url, timeout=120.0, **kwargs)

    def openai(self, api_key: str | None = None) -> openai.OpenAI:
        """The official OpenAI client pointed at the server (no retries, so errors surface)."""
        key = api_key or self.api_key or "unused"
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1", api_key=key, max_retries=0, timeout=120.0
        )

    def async_openai(self) -> openai.AsyncOpenAI:
        """The official async OpenAI client pointed at the server."""
        key = self.api_key or "unused"
        return openai.AsyncOpenAI(
            base_url=f"{self.base_url}/v1", api_key=key, max_retries=0, timeout=120.0
        )

    def metrics(self) -> dict[str, float]:
        """Every sample of GET /metrics keyed as `name{label="value",...}` (labels sorted)."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=10.0).text
        return parse_metrics(text)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition as a flat sample map."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def user(text: str) -> list[dict[str, str]]:
    """A one-message conversation."""
    return [{"role": "user", "content": text}]
