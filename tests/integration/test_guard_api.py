"""Guarded generation over the OpenAI API: switching it on and off, reports, abstention, streams."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import openai
import pytest
from live_server import MODEL, Server, user
from openai.types.chat import ChatCompletion

from guard.probe import PROBES_DIR, GuardAssets

pytestmark = pytest.mark.integration

QUESTION = user("What is the capital of France? Answer in one sentence.")
GROUNDED = user(
    "Acme reported revenue of $12.4 billion in 2024. Jane Park is the CEO. Who is the CEO of Acme?"
)
# Segment weights alpha, beta, gamma at their documented defaults (REFERENCE.md); segment
# thresholds as the default model's calibration sets them (guarded requests start there).
WEIGHTS = (0.5, 0.3, 0.2)
CALIBRATION = GuardAssets.load(PROBES_DIR / MODEL).calibration
assert CALIBRATION is not None
TAU_LOW, TAU_HIGH = CALIBRATION.tau_low, CALIBRATION.tau_high
REFUSE = {"tau_global": 1.0, "m_max": 0, "on_failure": "refuse"}
TRUNCATE = {"tau_low": 0.99, "tau_high": 0.99, "n_max": 0, "on_failure": "truncate"}
MARKER = "Unsure from here"
SEGMENT_KEYS = {
    "text",
    "token_score",
    "consistency",
    "alignment",
    "evidence",
    "probe_risk",
    "total",
    "status",
    "refinements",
}


def ask(
    server: Server,
    guard: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    messages: list[dict[str, str]] = QUESTION,
    **kwargs: Any,
) -> ChatCompletion:
    """One non-streaming chat completion through the openai client."""
    extra_body = {"guard": guard} if guard is not None else None
    kwargs.setdefault("max_tokens", 32)
    return server.openai().chat.completions.create(
        model=MODEL,
        messages=messages,
        temperature=0,
        extra_body=extra_body,
        extra_headers=headers,
        **kwargs,
    )


def reports(completion: ChatCompletion) -> list[dict[str, Any]] | None:
    """The `guard` list beside `choices`, or None for a plain answer."""
    return (completion.model_extra or {}).get("guard")


def kept_text(report: dict[str, Any]) -> str:
    """The text of the segments that made it into the answer."""
    return "".join(s["text"] for s in report["segments"] if s["status"] != "discarded")


def finish_reasons(report: dict[str, Any]) -> set[str]:
    """The finish reasons a guarded choice may have: content_filter when the guard withheld
    the answer or its tail, else the engine's stop or length."""
    return {"content_filter"} if report["outcome"] != "answered" else {"stop", "length"}


def check_report(report: dict[str, Any], chains: int = CALIBRATION.chains) -> None:
    """A report's shape, and the relations between its numbers that Eq. 12 and 17 fix."""
    assert report["mode"] == "guard"
    assert report["outcome"] in ("answered", "truncated", "refused")
    assert report["chains"] == chains
    assert isinstance(report["low_confidence_tokens"], int)
    assert report["low_confidence_tokens"] >= 0
    assert set(report["timings"]) == {"token_s", "segment_s", "refinement_s", "global_s", "check_s"}
    assert all(value >= 0 for value in report["timings"].values())
    assert report["timings"]["token_s"] > 0
    assert report["segments"]
    alpha, beta, gamma = WEIGHTS
    for segment in report["segments"]:
        assert set(segment) == SEGMENT_KEYS
        assert segment["status"] in ("accepted", "refined", "discarded")
        assert segment["text"]
        assert (segment["status"] == "refined") == (
            segment["status"] != "discarded" and segment["refinements"] > 0
        )
        parts = (segment["token_score"], segment["consistency"], segment["alignment"])
        assert all(math.isfinite(p) for p in parts)
        expected = alpha * parts[0] + beta * parts[1] + gamma * parts[2]
        assert segment["total"] == pytest.approx(expected, abs=1e-4)
    if report["outcome"] == "answered":
        assert "reason" not in report or report["reason"] is None
        check = report["global"]
        f_fact, f_logic = check["f_fact"], check["f_logic"]
        assert check["f_global"] == pytest.approx(
            f_fact * f_logic / (f_fact + f_logic - f_fact * f_logic), abs=1e-4
        )
        assert check["iterations"] >= 0
        if check["iterations"] == 0:
            assert (check["tau_low"], check["tau_high"]) == (TAU_LOW, TAU_HIGH)
            kept = [s for s in report["segments"] if s["status"] != "discarded"]
            assert all(s["total"] >= TAU_HIGH for s in kept)
    else:
        assert report["reason"]


def test_guard_on_and_off_per_request(server: Server) -> None:
    guarded = ask(server, guard={"enabled": True})
    found = reports(guarded)
    assert found is not None
    assert len(found) == 1
    check_report(found[0])
    content = guarded.choices[0].message.content
    assert content
    if found[0]["outcome"] == "answered":
        assert content == kept_text(found[0])
    usage = guarded.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens >= 1
    assert reports(ask(server, guard={"enabled": False})) is None
    assert reports(ask(server)) is None


def test_guard_report_per_choice(torch_server: Server) -> None:
    completion = ask(torch_server, guard={"enabled": True}, n=2, max_tokens=24)
    found = reports(completion)
    assert found is not None
    assert len(found) == 2
    assert sorted(c.index for c in completion.choices) == [0, 1]
    for report in found:
        check_report(report)


def test_x_guard_header(torch_server: Server) -> None:
    on = reports(ask(torch_server, headers={"X-Guard": "on"}))
    assert on is not None
    check_report(on[0])
    assert reports(ask(torch_server, headers={"X-Guard": "off"})) is None
    body_wins = ask(torch_server, guard={"enabled": False}, headers={"X-Guard": "on"})
    assert reports(body_wins) is None


def test_guard_default_on_server(guard_default_server: Server) -> None:
    default = reports(ask(guard_default_server))
    assert default is not None
    check_report(default[0])
    assert reports(ask(guard_default_server, headers={"X-Guard": "off"})) is None
    assert reports(ask(guard_default_server, guard={"enabled": False})) is None
    overridden = reports(ask(guard_default_server, guard=TRUNCATE))
    assert overridden is not None
    assert overridden[0]["outcome"] == "truncated"


def test_settings_without_enabled_turn_guarding_on(torch_server: Server) -> None:
    implied = reports(ask(torch_server, guard=TRUNCATE, messages=GROUNDED))
    assert implied is not None
    assert implied[0]["outcome"] == "truncated"
    assert reports(ask(torch_server, guard=TRUNCATE, headers={"X-Guard": "off"})) is None
    assert reports(ask(torch_server, guard={"enabled": False, **TRUNCATE})) is None


def test_refuse_path(torch_server: Server) -> None:
    message = "No reliable answer here."
    completion = ask(
        torch_server,
        guard={"enabled": True, **REFUSE, "refusal_message": message},
        messages=GROUNDED,
        max_tokens=40,
    )
    report = reports(completion)[0]
    check_report(report)
    assert report["outcome"] == "refused"
    assert completion.choices[0].message.content == message
    assert completion.choices[0].finish_reason == "content_filter"
    if report.get("global") is not None:
        assert report["global"]["f_global"] < 1.0
        assert report["global"]["iterations"] == 0


def test_truncate_path(torch_server: Server) -> None:
    completion = ask(torch_server, guard={"enabled": True, **TRUNCATE}, messages=GROUNDED)
    report = reports(completion)[0]
    check_report(report)
    assert report["outcome"] == "truncated"
    assert report["segments"][0]["status"] == "discarded"
    assert report["segments"][0]["total"] < TRUNCATE["tau_low"]
    assert completion.choices[0].message.content.endswith(MARKER)
    assert completion.choices[0].finish_reason == "content_filter"


@pytest.mark.parametrize(
    ("guard", "header", "param"),
    [
        ({"enabled": True, "tau_low": 1.5}, None, "guard.tau_low"),
        ({"enabled": True, "num_candidates": 0}, None, "guard.num_candidates"),
        ({"enabled": True, "on_failure": "shrug"}, None, "guard.on_failure"),
        ({"enabled": True, "no_such_knob": 1}, None, "guard.no_such_knob"),
        ({"enabled": True, "tau_low": 0.9, "tau_high": 0.6}, None, "guard"),
        ({"enabled": "yes"}, None, "guard.enabled"),
        ({"enabled": True, "chains": "2"}, None, "guard.chains"),
        (None, "maybe", "X-Guard"),
    ],
    ids=[
        "out_of_range",
        "too_few_candidates",
        "bad_literal",
        "unknown",
        "inverted",
        "enabled_as_string",
        "chains_as_string",
        "header",
    ],
)
def test_invalid_guard_setting_is_rejected(
    torch_server: Server, guard: dict[str, Any] | None, header: str | None, param: str
) -> None:
    headers = {"X-Guard": header} if header else None
    with pytest.raises(openai.BadRequestError) as error:
        ask(torch_server, guard=guard, headers=headers)
    assert error.value.status_code == 400
    assert error.value.param == param
    assert param in error.value.message
    body = error.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}


def stream_guarded(server: Server, guard: dict[str, Any]) -> list[Any]:
    """All chunks of one guarded streaming request."""
    stream = server.openai().chat.completions.create(
        model=MODEL,
        messages=GROUNDED,
        max_tokens=32,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"guard": guard},
    )
    return list(stream)


def test_streaming_guarded_sends_accepted_segments_then_report(torch_server: Server) -> None:
    guard = {"enabled": True, "chains": 1}
    chunks = stream_guarded(torch_server, guard)
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    final = with_choices[-1]
    report = (final.model_extra or {}).get("guard")
    assert isinstance(report, dict)
    assert final.choices[0].finish_reason in finish_reasons(report)
    check_report(report, chains=1)
    for chunk in with_choices[:-1]:
        assert chunk.choices[0].finish_reason is None
        assert (chunk.model_extra or {}).get("guard") is None
    content = "".join(c.choices[0].delta.content or "" for c in with_choices)
    pieces = [c.choices[0].delta.content for c in with_choices[:-1] if c.choices[0].delta.content]
    if report["outcome"] == "answered":
        assert content == kept_text(report)
        kept = [s["text"] for s in report["segments"] if s["status"] != "discarded"]
        assert len(pieces) <= len(kept)
        whole = ask(torch_server, guard=guard, messages=GROUNDED, max_tokens=32)
        assert whole.choices[0].message.content == content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens >= 1


def test_streaming_guarded_truncation(torch_server: Server) -> None:
    chunks = stream_guarded(torch_server, {"enabled": True, **TRUNCATE})
    with_choices = [c for c in chunks if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert content.endswith(MARKER)
    report = (with_choices[-1].model_extra or {}).get("guard")
    assert report["outcome"] == "truncated"
    assert report["segments"][0]["status"] == "discarded"
    assert with_choices[-1].choices[0].finish_reason == "content_filter"


@pytest.mark.parametrize(
    ("n", "guard"),
    [(8, {"chains": 1}), (2, {"chains": 2, **REFUSE})],
    ids=["reported_n8_chains1", "chains2_refuse"],
)
def test_finish_reason_says_the_guard_withheld_the_answer(
    torch_server: Server, n: int, guard: dict[str, Any]
) -> None:
    """Issue 31's case (n=8, one chain, max_tokens 4: refusals came back as `length`), and a
    refusal across chains; streamed and whole answers agree, choice by choice."""
    completion = ask(torch_server, guard=guard, messages=GROUNDED, max_tokens=4, n=n)
    whole = {c.index: c.finish_reason for c in completion.choices}
    outcomes = [r["outcome"] for r in reports(completion)]
    assert "refused" in outcomes
    for index, report in enumerate(reports(completion)):
        assert whole[index] in finish_reasons(report)
    stream = torch_server.openai().chat.completions.create(
        model=MODEL,
        messages=GROUNDED,
        max_tokens=4,
        temperature=0,
        n=n,
        stream=True,
        extra_body={"guard": guard},
    )
    streamed = {}
    for chunk in stream:
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                report = (chunk.model_extra or {})["guard"]
                assert choice.finish_reason in finish_reasons(report)
                streamed[choice.index] = report["outcome"]
    assert sorted(streamed) == list(range(n))
    assert "refused" in streamed.values()


def answer_checks(server: Server) -> float:
    """Chains whose answers the server's claim verifier has checked so far."""
    return sum(
        value
        for key, value in server.metrics().items()
        if key.startswith("guardserve_guard_answer_checks_total{")
    )


def test_calibrated_chains_and_consensus(torch_server: Server) -> None:
    listed = torch_server.openai().models.list().data[0].model_extra["guard"]
    assert (listed["chains"], listed["chain_choice"]) == (
        CALIBRATION.chains,
        CALIBRATION.chain_choice,
    )
    assert listed["prefer_supported"] == CALIBRATION.prefer_supported
    before = answer_checks(torch_server)
    report = reports(ask(torch_server, guard={"enabled": True}, messages=GROUNDED))[0]
    check_report(report)
    assert len(report["chain_scores"]) == CALIBRATION.chains
    if report["outcome"] == "answered":  # a passing chain answered (else no chain passed)
        assert report["chain_scores"][report["chain_chosen"]] is not None
    if CALIBRATION.prefer_supported:
        # Every passing chain was checked; a supported one is returned when there is one.
        checked = report["chain_supported"]
        assert [s is None for s in checked] == [s is None for s in report["chain_scores"]]
        assert checked[report["chain_chosen"]] or True not in checked
        assert report["timings"]["check_s"] > 0
        assert answer_checks(torch_server) - before == sum(s is not None for s in checked)
    # Chains that cannot sample all decode the greedy answer, which consensus then returns.
    alike = {"enabled": True, "chain_choice": "consensus", "sampling_temperature": 0.0}
    single = ask(torch_server, guard={**alike, "chains": 1}, messages=GROUNDED)
    several = ask(torch_server, guard={**alike, "chains": 3}, messages=GROUNDED)
    assert several.choices[0].message.content == single.choices[0].message.content
    assert reports(several)[0]["chains"] == 3
    assert several.usage.completion_tokens == 3 * single.usage.completion_tokens


def prompt_token_counts(server: Server) -> dict[str, float]:
    """Prompt tokens the torch runners prefilled by a forward, and reused by source, so far."""
    counts = {"prefilled": 0.0, "running": 0.0, "cache": 0.0}
    for key, value in server.metrics().items():
        if key.startswith("guardserve_prompt_tokens_prefilled_total{"):
            counts["prefilled"] += value
        elif key.startswith("guardserve_prompt_tokens_reused_total{"):
            counts["cache" if 'source="cache"' in key else "running"] += value
    return counts


def counted(server: Server, before: dict[str, float]) -> dict[str, float]:
    """What the prompt-token counters added since `before`."""
    return {key: value - before[key] for key, value in prompt_token_counts(server).items()}


def test_chains_and_choices_prefill_the_prompt_once_and_keep_it(torch_server: Server) -> None:
    # A prompt no other test sent: only the chat template's head is in the prefix cache.
    messages = user(f"Note {uuid.uuid4().hex}: {GROUNDED[0]['content']}")
    before = prompt_token_counts(torch_server)
    guarded = ask(torch_server, guard={"enabled": True, "chains": 4}, messages=messages)
    prompt = guarded.usage.prompt_tokens
    assert counted(torch_server, before) == {"prefilled": prompt, "running": 3 * prompt, "cache": 0}
    before = prompt_token_counts(torch_server)
    plain = torch_server.openai().chat.completions.create(
        model=MODEL, messages=messages, n=3, temperature=0.8, seed=5, max_tokens=16
    )
    # The first choice starts from the kept prompt and prefills its last token; the others copy.
    reused = {"prefilled": 1, "running": 2 * prompt, "cache": prompt - 1}
    assert counted(torch_server, before) == reused
    assert plain.usage.prompt_tokens == prompt


def test_guarded_and_plain_requests_concurrently(server: Server) -> None:
    async def run_all() -> list[ChatCompletion]:
        client = server.async_openai()

        def one(guarded: bool, index: int) -> Any:
            return client.chat.completions.create(
                model=MODEL,
                messages=user(f"Name {index + 2} colours of the rainbow."),
                max_tokens=16,
                temperature=0,
                extra_body={"guard": {"enabled": guarded}},
            )

        try:
            calls = [one(True, i) for i in range(3)] + [one(False, i) for i in range(3)]
            return list(await asyncio.gather(*calls))
        finally:
            await client.close()

    results = asyncio.run(run_all())
    for position, completion in enumerate(results):
        guarded = position < 3
        assert completion.choices[0].message.content
        found = reports(completion)
        if guarded:
            assert found is not None
            check_report(found[0])
            assert completion.choices[0].finish_reason in finish_reasons(found[0])
        else:
            assert found is None
            assert completion.choices[0].finish_reason in ("stop", "length")
