"""Malformed chat-completion requests for the load test's `bad` mode, each with its 4xx status."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

UNKNOWN_MODEL = "no-such-model-for-loadtest"


@dataclass(frozen=True)
class BadInput:
    """One bad request: a name, how to build its raw JSON body, and the status it must get."""

    name: str
    expected_status: int
    overrides: dict[str, Any]
    raw_content: str | None = None  # JSON source spliced in as the message content, unescaped


BAD_INPUTS: tuple[BadInput, ...] = (
    BadInput("unknown_model", 404, {"model": UNKNOWN_MODEL}),
    BadInput("negative_max_tokens", 400, {"max_tokens": -1}),
    BadInput("zero_max_tokens", 400, {"max_tokens": 0}),
    BadInput("lone_surrogate", 400, {}, raw_content='"broken \\ud800 text"'),
    BadInput("guard_enabled_string", 400, {"guard": {"enabled": "yes"}}),
    BadInput("guard_unknown_field", 400, {"guard": {"enabled": True, "no_such_knob": 1}}),
    BadInput("n_over_limit", 400, {"n": 17}),
    BadInput("temperature_too_high", 400, {"temperature": 3.5}),
    BadInput("no_messages", 400, {"messages": []}),
    BadInput("unknown_role", 400, {"messages": [{"role": "robot", "content": "hi"}]}),
)

CONTENT_PLACEHOLDER = "__GS_RAW_CONTENT__"


def bad_body(bad: BadInput, model: str) -> bytes:
    """The raw JSON body of one bad request for `model` (raw_content is spliced in verbatim)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        **bad.overrides,
    }
    if bad.raw_content is None:
        return json.dumps(body).encode()
    body["messages"] = [{"role": "user", "content": CONTENT_PLACEHOLDER}]
    text = json.dumps(body).replace(json.dumps(CONTENT_PLACEHOLDER), bad.raw_content)
    return text.encode()


def check_error_response(bad: BadInput, status: int, payload: Any) -> str | None:
    """Why a response to `bad` is wrong, or None when it has the expected status and error."""
    if status != bad.expected_status:
        return f"{bad.name}: expected HTTP {bad.expected_status}, got {status}"
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict) or not error.get("message") or not error.get("type"):
        return f"{bad.name}: HTTP {status} without an OpenAI error object"
    return None
