"""Bad requests answer with OpenAI's error object; API keys guard /v1/*; disconnects clean up."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from live_server import API_KEY, MAX_MODEL_LEN, MODEL, Server, user

pytestmark = pytest.mark.integration

HELLO = user("Say hello.")
LONG_PROMPT = user("word " * (MAX_MODEL_LEN + 50))


def body(**overrides: Any) -> dict[str, Any]:
    """A valid request body with some fields replaced (a None value drops the field)."""
    base: dict[str, Any] = {"model": MODEL, "messages": HELLO, "max_tokens": 8}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


# (case id, request body or raw text, HTTP status, error code or None, param or None)
BAD_REQUESTS: list[tuple[str, dict[str, Any] | str, int, str | None, str | None]] = [
    ("malformed_json", '{"model": "smollm2-135m-instruct", "messages": [', 400, None, None),
    ("body_not_object", "[1, 2, 3]", 400, None, None),
    ("messages_wrong_type", body(messages="hello"), 400, None, "messages"),
    ("temperature_wrong_type", body(temperature="hot"), 400, None, "temperature"),
    ("max_tokens_wrong_type", body(max_tokens="five"), 400, None, "max_tokens"),
    ("stream_wrong_type", body(stream={"yes": 1}), 400, None, "stream"),
    ("missing_messages", body(messages=None), 400, None, "messages"),
    ("empty_messages", body(messages=[]), 400, None, "messages"),
    ("missing_model", body(model=None), 400, None, "model"),
    ("unknown_role", body(messages=[{"role": "wizard", "content": "hi"}]), 400, None, "messages"),
    ("unknown_model", body(model="gpt-17"), 404, "model_not_found", "model"),
    ("max_tokens_zero", body(max_tokens=0), 400, None, "max_tokens"),
    ("max_tokens_negative", body(max_tokens=-3), 400, None, "max_tokens"),
    (
        "max_tokens_past_context",
        body(max_tokens=MAX_MODEL_LEN),
        400,
        "context_length_exceeded",
        "max_tokens",
    ),
    (
        "prompt_past_context",
        body(messages=LONG_PROMPT),
        400,
        "context_length_exceeded",
        "messages",
    ),
    ("temperature_too_high", body(temperature=5), 400, None, "temperature"),
    ("top_p_negative", body(top_p=-0.1), 400, None, "top_p"),
    ("top_p_above_one", body(top_p=1.5), 400, None, "top_p"),
    ("n_zero", body(n=0), 400, None, "n"),
    ("too_many_stops", body(stop=["a", "b", "c", "d", "e"]), 400, None, "stop"),
    ("options_without_stream", body(stream_options={"include_usage": True}), 400, None, None),
    # json.dumps writes a lone surrogate as the escape \ud800, which JSON parsers accept.
    ("surrogate_in_content", body(messages=user("\ud800x")), 400, None, "messages"),
    (
        "surrogate_in_text_part",
        body(messages=[{"role": "user", "content": [{"type": "text", "text": "a\udfff"}]}]),
        400,
        None,
        "messages",
    ),
    ("surrogate_in_model", body(model="M\ud800"), 400, None, "model"),
    ("surrogate_in_stop", body(stop=["ok", "\ud800"]), 400, None, "stop"),
    ("surrogate_in_user", body(user="\udc00"), 400, None, "user"),
    (
        "surrogate_in_guard",
        body(guard={"enabled": True, "refusal_message": "\ud800"}),
        400,
        None,
        "guard",
    ),
    ("unknown_unicode_model", body(model="模型-\u00e9\U0001f600"), 404, "model_not_found", "model"),
]


def post_raw(client: httpx.Client, payload: dict[str, Any] | str) -> httpx.Response:
    """POST a body as JSON, or a string verbatim as a JSON-typed body."""
    content = payload if isinstance(payload, str) else json.dumps(payload)
    return client.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )


def assert_error_object(
    response: httpx.Response, status: int, code: str | None, param: str | None
) -> None:
    """The response is OpenAI's error envelope with the expected status, code and param."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] is not None
        assert error["param"].split(".")[0] == param


@pytest.mark.parametrize(
    ("payload", "status", "code", "param"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_request_returns_error_object(
    server: Server,
    payload: dict[str, Any] | str,
    status: int,
    code: str | None,
    param: str | None,
) -> None:
    with server.http() as client:
        assert_error_object(post_raw(client, payload), status, code, param)


def sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The data payloads of server-sent event lines."""
    return (line.removeprefix("data: ") for line in lines if line.startswith("data: "))


def test_bad_requests_leave_a_running_generation_alone(server: Server) -> None:
    long_request = body(messages=user("Write a long story about a dragon."), max_tokens=48)
    long_request.update(stream=True, temperature=0)
    with (
        server.http() as client,
        server.http() as side,
        client.stream("POST", "/v1/chat/completions", json=long_request) as stream,
    ):
        assert stream.status_code == 200
        events = sse_data(stream.iter_lines())
        chunks = [json.loads(next(events))]
        while not chunks[-1]["choices"][0]["delta"].get("content"):
            chunks.append(json.loads(next(events)))
        for _, payload, status, code, param in BAD_REQUESTS:
            assert_error_object(post_raw(side, payload), status, code, param)
        rest = list(events)
    assert rest[-1] == "[DONE]"
    chunks += [json.loads(e) for e in rest[:-1]]
    assert not any("error" in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.strip()
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_openai_client_raises_typed_errors(server: Server) -> None:
    client = server.openai()
    create = client.chat.completions.create
    with pytest.raises(openai.NotFoundError) as not_found:
        create(model="gpt-17", messages=HELLO, max_tokens=4)
    assert not_found.value.status_code == 404
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        create(model=MODEL, messages=LONG_PROMPT, max_tokens=4)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as past_context:
        create(model=MODEL, messages=HELLO, max_tokens=MAX_MODEL_LEN)
    assert past_context.value.code == "context_length_exceeded"
    assert past_context.value.param == "max_tokens"
    bad_calls: list[dict[str, Any]] = [
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": HELLO, "max_tokens": 0},
        {"messages": HELLO, "temperature": 5},
        {"messages": HELLO, "top_p": -0.5},
        {"messages": HELLO, "n": 0},
    ]
    for kwargs in bad_calls:
        kwargs.setdefault("max_tokens", 4)
        with pytest.raises(openai.BadRequestError) as bad:
            create(model=MODEL, **kwargs)
        assert bad.value.status_code == 400
        assert bad.value.type == "invalid_request_error"


def test_missing_or_wrong_key_is_rejected(auth_server: Server) -> None:
    with auth_server.http() as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
                response = client.request(method, path, json=body(), headers=headers)
                assert response.status_code == 401, (headers, path)
                error = response.json()["error"]
                assert error["type"] == "authentication_error"
                assert error["message"]
        for path in ("/health", "/ready", "/metrics"):
            assert client.get(path).status_code == 200, path
    with pytest.raises(openai.AuthenticationError):
        auth_server.openai(api_key="wrong").models.list()


def test_right_key_is_served(auth_server: Server) -> None:
    client = auth_server.openai()
    assert [m.id for m in client.models.list()] == [MODEL]
    completion = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=8, temperature=0
    )
    assert completion.choices[0].message.content


def running_requests(server: Server) -> float:
    """guardserve_requests_running summed over the torch runners (labelled torch-<device>)."""
    samples = server.metrics().items()
    return sum(
        value
        for key, value in samples
        if key.startswith("guardserve_requests_running{") and 'engine="torch' in key
    )


def aborted_requests(server: Server) -> float:
    """How many plain requests ended with the client gone."""
    key = 'guardserve_request_latency_seconds_count{mode="plain",outcome="aborted"}'
    return server.metrics().get(key, 0.0)


def test_disconnect_mid_stream_frees_the_request(torch_server: Server) -> None:
    aborted_before = aborted_requests(torch_server)
    request = body(messages=user("Write a long story about a dragon."), max_tokens=400)
    request.update(stream=True, temperature=0)
    with torch_server.http() as client:
        with client.stream("POST", "/v1/chat/completions", json=request) as stream:
            lines = stream.iter_lines()
            received = [line for line in (next(lines) for _ in range(6)) if line]
            assert len(received) == 3
            assert running_requests(torch_server) == 1
        deadline = time.monotonic() + 5
        while running_requests(torch_server) != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert running_requests(torch_server) == 0
        assert aborted_requests(torch_server) == aborted_before + 1
        after = client.post("/v1/chat/completions", json=body(temperature=0))
    assert after.status_code == 200
    assert after.json()["choices"][0]["message"]["content"]
