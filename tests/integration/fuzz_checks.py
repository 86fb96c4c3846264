"""Schemathesis hooks for the fuzzing test: the served model's name, and the server-error check."""

from __future__ import annotations

import os
from typing import Any

import schemathesis

# The name the server serves, so generated chat requests get past the model lookup.
MODEL = os.environ["GUARDSERVE_FUZZ_MODEL"]
# Options a guarded request refuses with a 400 (each tested on its own elsewhere): a fuzzed
# request carrying any of them would never reach the guard settings.
NOT_WITH_GUARD = (
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
)


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    """Name the served model, give content to messages left without (only an assistant's
    may lack it), and drop the options guarded requests refuse, so that generated requests
    reach the sampling and guard settings."""
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str):
        body["model"] = MODEL
    if isinstance(body.get("guard"), dict):
        for name in NOT_WITH_GUARD:
            body.pop(name, None)
    for message in body.get("messages") if isinstance(body.get("messages"), list) else []:
        if isinstance(message, dict) and message.get("content") is None:
            message["content"] = "Name three fruits."


@schemathesis.check
def no_server_error(ctx: Any, response: Any, case: Any) -> None:
    """Fail on any 5xx but the 504 of the server's own request timeout (a configured limit)."""
    if response.status_code < 500:
        return
    if response.status_code == 504 and response.json()["error"]["code"] == "timeout":
        return
    raise AssertionError(f"server error {response.status_code}: {response.text[:500]}")
