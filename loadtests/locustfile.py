"""Locust user for guardserve: a configurable mix of chat modes, disconnects and bad inputs.

Modes: plain, stream, guard and verify chats; `disconnect` (a client that closes a long stream
after its first content chunks, or gives up on a plain request after a short timeout: a success
when the client closed it); `bad` (a malformed request from loadtests/bad_inputs.py: a success
when it gets the expected 4xx with an OpenAI error object).

Environment variables (all optional):
    GS_MIX          weights per mode, e.g. "plain=4,stream=3,guard=2,verify=1" (the default)
    GS_MAX_TOKENS   max_tokens of every request (default 64)
    GS_TEMPERATURE  sampling temperature (default 0)
    GS_MODEL        model name; default: the first id that GET /v1/models lists
    GS_GUARD        JSON object merged into the `guard` settings of guard and verify requests
    GS_TIMEOUT      seconds before a request is abandoned (default 600)
    GS_WAIT         seconds each user waits between requests (default 0: closed loop)
    GS_API_KEY      bearer token (falls back to GUARDSERVE_API_KEY)
    GS_DISCONNECT_TIMEOUT  client timeout in seconds of disconnect mode's plain requests (0.3)
    GS_LATENCY_LOG  path of a JSONL file to append one line per chat request to:
                    {"t": unix time at the end, "mode", "ms": latency, "ok", "error"}

Requests are named "/v1/chat/completions [MODE]" so locust's statistics split by mode. For
these rows "Average Content Size" holds completion tokens per request (from `usage`), not
bytes. Streamed requests also report a "TTFT" row: the time to the first content delta.
Only the host given to locust is contacted, and it must be a loopback address.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from typing import Any

from locust import HttpUser, constant, events, task
from locust.env import Environment
from locust.exception import StopUser
from requests.exceptions import ReadTimeout

from loadtests.bad_inputs import BAD_INPUTS, bad_body, check_error_response
from loadtests.run_headless import loopback_error, mode_of, parse_mix

CHAT_PATH = "/v1/chat/completions"

# Grounded questions written for this load test: the answer is in the context.
GROUNDED_QA: tuple[tuple[str, str], ...] = (
    (
        "Acme Corp reported revenue of $12.4 billion in 2024, up 8% from 2023. Jane Park has "
        "been its chief executive since 2021.",
        "Who is Acme's chief executive and what was its 2024 revenue?",
    ),
    (
        "The Lindqvist Bridge opened in 1987. It spans 1.2 kilometres across the Mora river and "
        "carries four lanes of traffic and a cycle path.",
        "How long is the Lindqvist Bridge?",
    ),
    (
        "Marta Oliveira published the novel 'Salt Winds' in 2009. It won the Atlantic Prize in "
        "2011 and has been translated into 14 languages.",
        "Which prize did 'Salt Winds' win, and in which year?",
    ),
    (
        "The Kestrel-3 satellite was launched on 14 March 2019. It orbits at 705 km and measures "
        "sea-surface temperature.",
        "What does Kestrel-3 measure?",
    ),
    (
        "Pinecrest Library opens 9:00-18:00 on weekdays and 10:00-14:00 on Saturdays. It is "
        "closed on Sundays.",
        "When is Pinecrest Library open on Saturdays?",
    ),
    (
        "Riverside FC finished the 2023 season third with 71 points. Their top scorer, Tom Reyes, "
        "scored 19 league goals.",
        "How many league goals did Tom Reyes score in 2023?",
    ),
    (
        "Orion Bakery was founded by Li Wei in 1998 in Harbour Street. It bakes about 600 loaves "
        "a day.",
        "Who founded Orion Bakery, and when?",
    ),
    (
        "The Tamsin valve controller runs on 24 V DC, draws at most 3 A and works between "
        "-20 and 60 degrees Celsius.",
        "What supply voltage does the Tamsin valve controller need?",
    ),
)


def grounded_messages(rng: random.Random) -> list[dict[str, str]]:
    """One chat turn holding a context passage and a question about it."""
    context, question = rng.choice(GROUNDED_QA)
    content = (
        f"Answer the question using only the context.\n\nContext: {context}\n\nQuestion: {question}"
    )
    return [{"role": "user", "content": content}]


def request_name(mode: str) -> str:
    """The locust request name of one mode; the summary reads the mode back from it."""
    return f"{CHAT_PATH} [{mode}]"


def _env_json_object(name: str) -> dict[str, Any]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {raw!r}")
    return value


MIX = parse_mix(os.environ.get("GS_MIX", "plain=4,stream=3,guard=2,verify=1"))
MAX_TOKENS = int(os.environ.get("GS_MAX_TOKENS", "64"))
TEMPERATURE = float(os.environ.get("GS_TEMPERATURE", "0"))
GUARD_SETTINGS = _env_json_object("GS_GUARD")
TIMEOUT_S = float(os.environ.get("GS_TIMEOUT", "600"))
WAIT_S = float(os.environ.get("GS_WAIT", "0"))
API_KEY = os.environ.get("GS_API_KEY") or os.environ.get("GUARDSERVE_API_KEY")
DISCONNECT_TIMEOUT_S = float(os.environ.get("GS_DISCONNECT_TIMEOUT", "0.3"))
DISCONNECT_MAX_TOKENS = 512  # long enough that the client always leaves first
DISCONNECT_AFTER_CHUNKS = 2
LATENCY_LOG = (
    open(os.environ["GS_LATENCY_LOG"], "a", buffering=1)  # noqa: SIM115 - open for the run
    if os.environ.get("GS_LATENCY_LOG")
    else None
)


@events.request.add_listener
def _log_latency(
    request_type: str, name: str, response_time: float, exception: Any, **_: Any
) -> None:
    mode = mode_of(name)
    if LATENCY_LOG is None or mode is None or request_type == "TTFT":
        return
    record = {
        "t": time.time(),
        "mode": mode,
        "ms": response_time,
        "ok": exception is None,
        "error": None if exception is None else str(exception)[:200],
    }
    LATENCY_LOG.write(json.dumps(record) + "\n")


@events.test_start.add_listener
def _refuse_remote_hosts(environment: Environment, **_: Any) -> None:
    error = loopback_error(environment.host or "")
    if error and environment.runner is not None:
        logging.error("guardserve locustfile refuses to run: %s", error)
        environment.process_exit_code = 2
        environment.runner.quit()


class GuardserveUser(HttpUser):
    """One client that sends chat completions in the modes and proportions of GS_MIX."""

    wait_time = constant(WAIT_S)
    _model: str | None = os.environ.get("GS_MODEL") or None

    def on_start(self) -> None:
        if loopback_error(self.host or ""):
            raise StopUser()  # no request ever leaves for a non-loopback host
        self.rng = random.Random()
        if API_KEY:
            self.client.headers["Authorization"] = f"Bearer {API_KEY}"
        if GuardserveUser._model is None:
            with self.client.get("/v1/models", name="/v1/models", catch_response=True) as resp:
                models = resp.json().get("data", []) if resp.status_code == 200 else []
                if not models:
                    resp.failure(f"no model listed (HTTP {resp.status_code})")
                    return
                GuardserveUser._model = models[0]["id"]

    @task
    def chat(self) -> None:
        """Send one request in a mode drawn with the GS_MIX weights."""
        if GuardserveUser._model is None:
            time.sleep(1.0)  # the model lookup failed: retry it, at most once a second
            self.on_start()
            return
        mode = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        body: dict[str, Any] = {
            "model": GuardserveUser._model,
            "messages": grounded_messages(self.rng),
            "max_tokens": MAX_TOKENS,
            "temperature": TEMPERATURE,
        }
        if mode == "stream":
            self._stream(body)
            return
        if mode == "disconnect":
            self._disconnect(body)
            return
        if mode == "bad":
            self._bad()
            return
        if mode == "guard":
            body["guard"] = {**GUARD_SETTINGS, "enabled": True}
        elif mode == "verify":
            body["guard"] = {**GUARD_SETTINGS, "mode": "verify"}
        self._complete(mode, body)

    def _complete(self, mode: str, body: dict[str, Any]) -> None:
        with self.client.post(
            CHAT_PATH, json=body, name=request_name(mode), timeout=TIMEOUT_S, catch_response=True
        ) as resp:
            resp.request_meta["response_length"] = 0  # completion tokens, set on success
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            data = resp.json()
            if not data.get("choices"):
                resp.failure("response has no choices")
                return
            if mode in ("guard", "verify") and not data.get("guard"):
                resp.failure(f"{mode} response has no guard report")
                return
            resp.request_meta["response_length"] = data.get("usage", {}).get("completion_tokens", 0)
            resp.success()

    def _stream(self, body: dict[str, Any]) -> None:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        name = request_name("stream")
        start = time.perf_counter()
        first_token_s: float | None = None
        content_chunks = 0
        usage_tokens: int | None = None
        done = False
        with self.client.post(
            CHAT_PATH, json=body, name=name, stream=True, timeout=TIMEOUT_S, catch_response=True
        ) as resp:
            resp.request_meta["response_length"] = 0  # completion tokens, set on success
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            for raw in resp.iter_lines():
                line = raw.decode("utf-8")
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    done = True
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    resp.failure(f"error event: {chunk['error']}")
                    return
                if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    content_chunks += 1
                    if first_token_s is None:
                        first_token_s = time.perf_counter() - start
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens")
            # Locust timed the headers only; a stream's latency is until its last event.
            resp.request_meta["response_time"] = (time.perf_counter() - start) * 1000
            if not done:
                resp.failure("stream ended without [DONE]")
                return
            resp.request_meta["response_length"] = (
                usage_tokens if usage_tokens is not None else content_chunks
            )
            resp.success()
        if first_token_s is not None:
            self.environment.events.request.fire(
                request_type="TTFT",
                name=name,
                response_time=first_token_s * 1000,
                response_length=0,
                exception=None,
                context={},
            )

    def _disconnect(self, body: dict[str, Any]) -> None:
        """Leave a request early: close a stream after its first chunks, or time out a plain one."""
        body = {**body, "max_tokens": DISCONNECT_MAX_TOKENS}
        name = request_name("disconnect")
        if self.rng.random() < 0.5:
            with self.client.post(
                CHAT_PATH, json=body, name=name, timeout=DISCONNECT_TIMEOUT_S, catch_response=True
            ) as resp:
                resp.request_meta["response_length"] = 0  # tokens are not counted here
                if resp.status_code == 200 or isinstance(resp.error, ReadTimeout):
                    resp.success()  # answered in time, or the client gave up as planned
                else:
                    resp.failure(f"HTTP {resp.status_code}: {resp.error or resp.text[:200]}")
            return
        body = {**body, "stream": True}
        with self.client.post(
            CHAT_PATH, json=body, name=name, stream=True, timeout=TIMEOUT_S, catch_response=True
        ) as resp:
            resp.request_meta["response_length"] = 0  # tokens are not counted here
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.error or resp.text[:200]}")
                return
            chunks = 0
            for raw in resp.iter_lines():
                if raw.startswith(b":"):  # an SSE comment: the server's keep-alive
                    continue
                payload = raw.decode("utf-8").removeprefix("data:").strip()
                if not payload or payload == "[DONE]":
                    continue
                if "error" in json.loads(payload):
                    resp.failure(f"error event: {payload[:200]}")
                    return
                chunks += 1
                if chunks >= DISCONNECT_AFTER_CHUNKS:
                    break
            resp.close()  # drops the connection mid-stream
            resp.success()

    def _bad(self) -> None:
        """Send one malformed request; it must get its expected 4xx and an error object."""
        bad = self.rng.choice(BAD_INPUTS)
        with self.client.post(
            CHAT_PATH,
            data=bad_body(bad, GuardserveUser._model or ""),
            headers={"Content-Type": "application/json"},
            name=request_name("bad"),
            timeout=TIMEOUT_S,
            catch_response=True,
        ) as resp:
            resp.request_meta["response_length"] = 0  # no completion tokens
            try:
                payload = resp.json()
            except ValueError:
                payload = None
            problem = check_error_response(bad, resp.status_code, payload)
            if problem:
                resp.failure(problem)
            else:
                resp.success()
