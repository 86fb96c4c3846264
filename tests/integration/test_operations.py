"""Overload, timeouts, body limits, graceful drain, and schema fuzzing against a real server."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from benchmarks.launcher import RunningServer, serve
from engine.model_store import DEFAULT_MODEL

pytestmark = pytest.mark.integration

TIGHT_FLAGS = [
    "--plain-engine", "torch", "--max-num-seqs", "2", "--max-queue", "0",
    "--request-timeout", "8", "--max-body-bytes", "4096", "--max-model-len", "512",
]  # fmt: skip


def chat(max_tokens: int, stream: bool = False, content: str = "Tell me a long story.") -> dict:
    return {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "ignore_eos": True,
    }


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("ops") / "server.log"
    with serve(TIGHT_FLAGS, log) as server:
        yield server


def test_full_queue_answers_429_with_retry_after(tight_server: RunningServer) -> None:
    url = f"{tight_server.url}/v1/chat/completions"
    with httpx.Client(timeout=30) as client:
        # Two choices fill both slots: admission counts sequences, not requests.
        with client.stream("POST", url, json={**chat(400, stream=True), "n": 2}) as busy:
            lines = busy.iter_lines()
            next(lines)
            refused = client.post(url, json=chat(4))
            busy_rest = list(lines)[-4:]
        assert refused.status_code == 429, busy_rest
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"
        time.sleep(0.5)
        assert client.post(url, json=chat(4)).status_code == 200


def test_a_burst_of_streams_is_admitted_up_to_capacity(tight_server: RunningServer) -> None:
    """Streams count as admitted before their first event: a burst cannot slip past the check."""
    url = f"{tight_server.url}/v1/chat/completions"

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:

            async def one() -> int:
                async with client.stream("POST", url, json=chat(40, stream=True)) as response:
                    await response.aread()
                    return response.status_code

            return list(await asyncio.gather(*(one() for _ in range(6))))

    statuses = asyncio.run(burst())
    # Capacity is 2 (two slots, no queue): the others are refused, none is queued past it.
    assert statuses.count(200) <= 2 and statuses.count(429) >= 4
    assert set(statuses) <= {200, 429}


def test_more_sequences_than_slots_in_one_request_is_a_400(tight_server: RunningServer) -> None:
    url = f"{tight_server.url}/v1/chat/completions"
    too_many = httpx.post(url, json={**chat(4), "n": 3}, timeout=30)
    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "n"
    guarded = {**chat(4), "n": 2, "guard": {"enabled": True, "chains": 2}}
    too_many_chains = httpx.post(url, json=guarded, timeout=30)
    assert too_many_chains.status_code == 400
    assert too_many_chains.json()["error"]["param"] == "guard.chains"
    assert "4 sequences" in too_many_chains.json()["error"]["message"]


def test_request_past_its_timeout_gets_504(tight_server: RunningServer) -> None:
    response = httpx.post(f"{tight_server.url}/v1/chat/completions", json=chat(400), timeout=60)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"


def test_streamed_request_past_its_timeout_ends_with_an_error_event(
    tight_server: RunningServer,
) -> None:
    url = f"{tight_server.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=chat(400, stream=True), timeout=60) as response:
        lines = response.iter_lines()
        events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    errors = [json.loads(e)["error"] for e in events[:-1] if "error" in json.loads(e)]
    assert [e["code"] for e in errors] == ["timeout"]


def test_oversized_body_gets_413(tight_server: RunningServer) -> None:
    body = chat(4, content="x" * 10_000)
    response = httpx.post(f"{tight_server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_oversized_chunked_body_gets_413(tight_server: RunningServer) -> None:
    raw = json.dumps(chat(4, content="x" * 10_000)).encode()
    pieces = (raw[i : i + 1024] for i in range(0, len(raw), 1024))  # no Content-Length: chunked
    url = f"{tight_server.url}/v1/chat/completions"
    json_type = {"content-type": "application/json"}
    response = httpx.post(url, content=pieces, headers=json_type, timeout=30)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    small = json.dumps(chat(2)).encode()
    ok = httpx.post(url, content=iter([small[:10], small[10:]]), headers=json_type, timeout=60)
    assert ok.status_code == 200, ok.text


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(tmp_path: Path) -> None:
    with serve(
        ["--plain-engine", "torch", "--shutdown-grace-period", "60"], tmp_path / "log"
    ) as server:
        url = f"{server.url}/v1/chat/completions"
        results: dict[str, httpx.Response] = {}
        worker = threading.Thread(
            target=lambda: results.update(long=httpx.post(url, json=chat(48), timeout=120))
        )
        worker.start()
        deadline = time.monotonic() + 10
        while "guardserve_requests_running{engine=" not in _running(server):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert httpx.get(f"{server.url}/ready", timeout=5).status_code == 503
        refused = httpx.post(url, json=chat(4), timeout=10)
        assert refused.status_code == 503
        worker.join(timeout=120)
        assert results["long"].status_code == 200
        assert results["long"].json()["usage"]["completion_tokens"] > 0
        # A drained stop is a clean exit, not death by the signal (143 to Kubernetes).
        assert server.process.wait(timeout=30) == 0


def _running(server: RunningServer) -> str:
    """The running-requests gauge lines that show one request in flight."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    lines = [line for line in text.splitlines() if line.startswith("guardserve_requests_running")]
    return "\n".join(line for line in lines if line.endswith(" 1.0"))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Short timeouts and context, so guarded fuzz cases with many chains end quickly."""
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    flags = [
        "--plain-engine", "torch", "--max-num-seqs", "4", "--max-queue", "0",
        "--request-timeout", "3", "--max-body-bytes", "4096", "--max-model-len", "256",
    ]  # fmt: skip
    with serve(flags, log) as server:
        yield server


def test_openapi_documents_the_guard_settings(fuzz_server: RunningServer) -> None:
    schema = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=10).json()
    request = schema["components"]["schemas"]["ChatCompletionRequest"]
    guard = request["properties"]["guard"]["anyOf"][0]
    assert {"enabled", "mode", "num_candidates", "chains", "tau_low"} <= set(guard["properties"])
    assert guard["properties"]["num_candidates"]["maximum"] == 16


def test_schema_fuzzing_finds_no_server_error(fuzz_server: RunningServer, tmp_path: Path) -> None:
    """Every operation, guard settings included; a 504 of the request timeout is allowed."""
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("schemathesis is not installed")
    command = [
        binary, "run", f"{fuzz_server.url}/openapi.json",
        "--checks", "no_server_error", "--max-examples", "25", "--seed", "1",
        "--workers", "1", "--request-timeout", "30", "--phases", "examples,coverage,fuzzing",
        "--suppress-health-check", "all", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    hooks = str(Path(__file__).with_name("fuzz_checks.py"))
    env = {**os.environ, "SCHEMATHESIS_HOOKS": hooks, "GUARDSERVE_FUZZ_MODEL": DEFAULT_MODEL}
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-4000:]
    # The documented guard schema made the fuzzer send guarded requests that were served.
    metrics = httpx.get(f"{fuzz_server.url}/metrics", timeout=10).text
    served = [
        line
        for line in metrics.splitlines()
        if line.startswith("guardserve_requests_total{")
        and ('mode="guard"' in line or 'mode="verify"' in line)
        and not line.endswith(" 0.0")
    ]
    assert served, metrics


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The default configuration (context length, body limit), torch for plain requests too."""
    log = tmp_path_factory.mktemp("default") / "server.log"
    with serve(["--plain-engine", "torch"], log) as server:
        yield server


def test_default_context_follows_the_model_and_serves_long_prompts(
    default_server: RunningServer,
) -> None:
    models = httpx.get(f"{default_server.url}/v1/models", timeout=10).json()
    # The model's 8192 positions, as far as 16 fp32 slots fit the default torch KV budget.
    context = models["data"][0]["max_model_len"]
    assert 4096 < context <= 8192
    grounded = "Context: " + " ".join(f"Fact {i}: item {i} weighs {i % 7} kg." for i in range(240))
    body = chat(4, content=grounded + "\nQuestion: what does item 3 weigh?")
    response = httpx.post(f"{default_server.url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert 2300 < response.json()["usage"]["prompt_tokens"] < context


def test_a_huge_prompt_does_not_stall_the_event_loop(default_server: RunningServer) -> None:
    url = default_server.url
    body = chat(4, content="lorem ipsum dolor " * 55_000)  # ~1 MB: tokenising takes a while
    answer: dict[str, httpx.Response] = {}
    probes: list[float] = []

    def send() -> None:
        answer["big"] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)

    big = threading.Thread(target=send)
    with httpx.Client(timeout=30) as client:
        client.get(f"{url}/health")
        began = time.perf_counter()
        big.start()
        while big.is_alive():
            sent = time.perf_counter()
            assert client.get(f"{url}/health").status_code == 200
            probes.append(time.perf_counter() - sent)
            time.sleep(0.02)
    took = time.perf_counter() - began
    assert answer["big"].status_code == 400
    assert answer["big"].json()["error"]["code"] == "context_length_exceeded"
    # Before, /health waited for the whole tokenisation (nearly all of `took`).
    assert took > 0.3 and len(probes) > 3
    assert max(probes) < took / 2, (max(probes), took)


KEEPALIVE_S = 0.25


@pytest.fixture(scope="module")
def keepalive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Streams that fall silent for half a second send an SSE comment."""
    log = tmp_path_factory.mktemp("keepalive") / "server.log"
    flags = ["--plain-engine", "torch", "--max-model-len", "512"]
    with serve([*flags, "--stream-keepalive-interval", str(KEEPALIVE_S)], log) as server:
        yield server


def held_stream() -> dict:
    """A guarded stream held until its four chains are checked: silent for seconds."""
    guard = {"enabled": True, "chains": 4, "prefer_supported": False}
    return {**chat(64, stream=True), "guard": guard}


def test_a_held_guarded_stream_sends_keep_alive_comments(keepalive_server: RunningServer) -> None:
    url = f"{keepalive_server.url}/v1/chat/completions"
    arrivals: list[float] = []
    pieces: list[bytes] = []
    with httpx.stream("POST", url, json=held_stream(), timeout=120) as response:
        assert response.status_code == 200
        arrivals.append(time.monotonic())  # the headers
        for piece in response.iter_raw():
            arrivals.append(time.monotonic())
            pieces.append(piece)
    text = b"".join(pieces).decode()
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert arrivals[-1] - arrivals[0] > 3 * KEEPALIVE_S  # the answer was held that long
    assert text.count(": keep-alive\n\n") >= 2
    assert max(gaps) <= KEEPALIVE_S + 1.0, max(gaps)
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    finals = [json.loads(e) for e in events[:-1] if json.loads(e)["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["guard"]["chains"] == 4


def test_the_openai_client_reads_a_stream_with_keep_alive_comments(
    keepalive_server: RunningServer,
) -> None:
    client = openai.OpenAI(
        base_url=keepalive_server.openai_base_url, api_key="unused", max_retries=0, timeout=120
    )
    body = held_stream()
    chunks = list(
        client.chat.completions.create(
            model=body["model"],
            messages=body["messages"],
            max_tokens=body["max_tokens"],
            temperature=0,
            stream=True,
            extra_body={"guard": body["guard"], "ignore_eos": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length", "content_filter")
