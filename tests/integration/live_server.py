"""A `guardserve serve` child process on 127.0.0.1 and helpers the integration tests share."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.launcher import (
    ServerStartError,
    free_port,
    log_tail,
    start_server,
    stop_server,
    wait_ready,
)
from engine.model_store import DEFAULT_MODEL

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = DEFAULT_MODEL
MAX_MODEL_LEN = 512
API_KEY = "test-key-4b1d"
READY_TIMEOUT_S = 240.0


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
        args = ["--plain-engine", self.engine, "--max-model-len", str(MAX_MODEL_LEN)]
        args += ["--log-level", "warning", *self.flags]
        if self.api_key:
            args += ["--api-key", self.api_key]
        self.process = start_server(args, self.port, self.log_path)

    def wait_ready(self) -> None:
        """Poll GET /ready until 200; fail with the log's tail if the process dies or stalls."""
        assert self.process is not None
        try:
            wait_ready(self.base_url, self.process, self.log_path, READY_TIMEOUT_S)
        except ServerStartError as exc:
            pytest.fail(f"server {self.name}: {exc}")

    def stop(self) -> None:
        """SIGTERM the server, then SIGKILL its process group after a grace period."""
        if self.process is not None:
            stop_server(self.process, grace_s=20)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's output, for failure messages."""
        return log_tail(self.log_path, lines)

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
