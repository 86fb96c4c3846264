"""Verify mode and claim reports through the openai client on the torch server."""

from __future__ import annotations

import pytest
from live_server import MODEL, Server, user

pytestmark = pytest.mark.integration

GROUNDED = (
    "Context: The Eiffel Tower is 330 metres tall and was completed in 1889.\n"
    "Question: How tall is the Eiffel Tower and when was it finished?"
)


def test_verify_mode_returns_claims_with_verdicts_and_offsets(torch_server: Server) -> None:
    completion = torch_server.openai().chat.completions.create(
        model=MODEL,
        messages=user(GROUNDED),
        max_tokens=40,
        temperature=0,
        extra_body={"guard": {"mode": "verify"}},
    )
    text = completion.choices[0].message.content or ""
    (report,) = completion.model_extra["guard"]
    assert report["mode"] == "verify"
    assert report["segments"] == []
    claims = report["claims"]
    assert claims, text
    for verdict in claims:
        claim = verdict["claim"]
        assert text[claim["start"] : claim["end"]] == claim["text"]
        assert isinstance(verdict["supported"], bool)
    assert report["hallucinated"] == (not all(v["supported"] for v in claims))


def test_numbers_the_context_lacks_are_unsupported(torch_server: Server) -> None:
    context = "Context: Jane Park is the CEO of Acme."
    completion = torch_server.openai().chat.completions.create(
        model=MODEL,
        messages=user(f"{context}\nQuestion: How much revenue did Acme report in 2023?"),
        max_tokens=40,
        temperature=0,
        extra_body={"guard": {"mode": "verify"}},
    )
    report = completion.model_extra["guard"][0]
    numeric = [v for v in report["claims"] if v["claim"]["kind"] in ("number", "percent", "money")]
    absent = [v for v in numeric if v["claim"]["text"] not in context]
    assert all(not v["supported"] for v in absent)
    assert report["hallucinated"] == any(not v["supported"] for v in report["claims"])


def test_guarded_answer_can_include_claims_and_uses_evidence(torch_server: Server) -> None:
    completion = torch_server.openai().chat.completions.create(
        model=MODEL,
        messages=user(GROUNDED),
        max_tokens=40,
        extra_body={"guard": {"enabled": True, "include_claims": True}},
    )
    report = completion.model_extra["guard"][0]
    assert report["mode"] == "guard"
    assert report["claims"] is not None
    assert all(0.0 <= s["evidence"] <= 1.0 for s in report["segments"])


def test_verify_mode_streams_its_report_in_the_last_chunk(torch_server: Server) -> None:
    stream = torch_server.openai().chat.completions.create(
        model=MODEL,
        messages=user(GROUNDED),
        max_tokens=30,
        temperature=0,
        stream=True,
        extra_body={"guard": {"mode": "verify"}},
    )
    chunks = list(stream)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert finals[0].model_extra["guard"]["mode"] == "verify"
