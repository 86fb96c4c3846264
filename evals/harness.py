"""Runs evaluation items against an OpenAI-compatible server and scores each answer.

Requests go over HTTP through the official `openai` client, `concurrency` at a time, exactly as
an application sends them. Answers are then judged twice: by the gold answer (is it contained in
the response?) and claim by claim against the item's context with the claim verifier (the
server's own `guard` report is stored, never trusted for scoring).

Abstention: a response abstains when the guard refused it, or when its text is the refusal
message (a run without a guard report can only say so in words). It carries no answer: it is
not verified, has no claims and never counts as containing the gold answer. A truncated (HALT)
answer keeps an accepted prefix: it counts as answered, partially, and is judged like any answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Literal

import openai
from pydantic import BaseModel, Field, model_validator
from tqdm import tqdm

from groundedqa.datasets import EvalItem
from groundedqa.metrics import exact_match, f1_score, gold_in_answer, normalize_answer
from groundedqa.prompts import grounded_messages
from verify.verifier import Verifier

Mode = Literal["plain", "guard", "verify"]
# The text guardserve refuses with unless a request sets `refusal_message` (the harness talks
# to servers over HTTP and imports none of their code; a unit test keeps the two in step).
DEFAULT_REFUSAL = "I cannot answer that reliably."


def is_abstention(outcome: str, response: str, refusal_message: str = DEFAULT_REFUSAL) -> bool:
    """A refused guard outcome, or a response that is the refusal message (after normalising)."""
    return outcome == "refused" or normalize_answer(response) == normalize_answer(refusal_message)


def confidence_of(guard: dict[str, Any] | None, extra: dict[str, Any]) -> float | None:
    """The answer's confidence: the guard report's F_global, else a numeric `confidence` field.

    The response's own field is taken from the choice before the top level; None when neither.
    """
    check = (guard or {}).get("global") or (guard or {}).get("global_check") or {}
    for value in (check.get("f_global"), extra.get("confidence")):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


class EvalSettings(BaseModel):
    """How to reach the server and what to ask it for (never written with the API key)."""

    base_url: str
    api_key: str = Field(repr=False)
    model: str | None = None
    mode: Mode = "plain"
    guard_options: dict[str, Any] = Field(default_factory=dict)
    concurrency: int = Field(4, ge=1)
    seed: int = 0
    max_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    timeout_s: float = Field(600.0, gt=0.0)

    @model_validator(mode="after")
    def _options_need_guard(self) -> EvalSettings:
        if self.mode == "plain" and self.guard_options:
            raise ValueError("guard options need --mode guard or --mode verify")
        return self

    def extra_body(self) -> dict[str, Any] | None:
        """guardserve's `guard` body field for the mode; plain requests send none."""
        if self.mode == "guard":
            return {"guard": {**self.guard_options, "enabled": True}}
        if self.mode == "verify":
            return {"guard": {**self.guard_options, "mode": "verify"}}
        return None

    @property
    def refusal_message(self) -> str:
        """The refusal text the server answers with: the guard option, else guard's default."""
        return str(self.guard_options.get("refusal_message") or DEFAULT_REFUSAL)


class Completion(BaseModel):
    """What the server returned for one item (or the error it raised)."""

    content: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    latency_s: float
    guard: dict[str, Any] | None = None
    confidence: float | None = None
    error: str | None = None

    @property
    def outcome(self) -> str:
        """answered | truncated | refused from the guard report; error when the request failed."""
        if self.error is not None:
            return "error"
        return str(self.guard.get("outcome", "answered")) if self.guard else "answered"


class RequestRun(BaseModel):
    """All completions of a run, in item order, with the model asked and the wall time."""

    model: str
    completions: list[Completion]
    wall_s: float


class ClaimRecord(BaseModel):
    """One claim of an answer and the verifier's verdict on it."""

    text: str
    start: int
    end: int
    kind: str
    supported: bool
    method: str


class ResponseRecord(BaseModel):
    """One line of responses.jsonl."""

    id: str
    line: int
    question: str
    context: str
    answer: str
    response: str
    outcome: str
    finish_reason: str | None
    claims: list[ClaimRecord]
    n_claims: int
    n_supported: int
    hallucinated: bool
    abstained: bool = Field(description="Refused, or the refusal text: no answer at all.")
    gold_in_answer: bool = Field(description="The normalised gold answer is in the response.")
    confidence: float | None = Field(None, description="F_global, else the response's own.")
    em: float
    f1: float
    latency_s: float
    completion_tokens: int
    guard: dict[str, Any] | None = None
    error: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _judge_old_records(cls, data: Any) -> Any:
        """Records written before gold-in-answer existed: judge them now, by today's rules."""
        if isinstance(data, dict) and "gold_in_answer" not in data:
            abstained = is_abstention(data["outcome"], data["response"])
            found = not abstained and gold_in_answer(data["response"], data["answer"])
            data = {**data, "abstained": abstained, "gold_in_answer": found}
        return data


def make_client(settings: EvalSettings) -> openai.AsyncOpenAI:
    """The async OpenAI client for the server under test."""
    return openai.AsyncOpenAI(
        base_url=settings.base_url, api_key=settings.api_key, timeout=settings.timeout_s
    )


async def resolve_model(client: openai.AsyncOpenAI, model: str | None) -> str:
    """`model` when given, else the first entry of GET /models."""
    if model:
        return model
    page = await client.models.list()
    if not page.data:
        raise RuntimeError("the server lists no models; pass --model")
    return page.data[0].id


async def complete(
    client: openai.AsyncOpenAI, item: EvalItem, settings: EvalSettings, model: str
) -> Completion:
    """Ask one grounded question; an API error becomes a Completion with `error` set."""
    started = time.perf_counter()
    try:
        response = await client.chat.completions.create(
            model=model,
            messages=grounded_messages(item.context, item.question),  # type: ignore[arg-type]
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            seed=settings.seed,
            extra_body=settings.extra_body(),
        )
    except openai.APIError as exc:
        error = f"{type(exc).__name__}: {exc}"
        return Completion(latency_s=time.perf_counter() - started, error=error)
    latency = time.perf_counter() - started
    choice = response.choices[0]
    reports = (response.model_extra or {}).get("guard")
    guard = reports[0] if reports else None
    extra = {**(response.model_extra or {}), **(choice.model_extra or {})}
    return Completion(
        content=choice.message.content or "",
        finish_reason=choice.finish_reason,
        completion_tokens=response.usage.completion_tokens if response.usage else 0,
        latency_s=latency,
        guard=guard,
        confidence=confidence_of(guard, extra),
    )


async def run_requests(
    settings: EvalSettings, items: Sequence[EvalItem], progress: bool = True
) -> RequestRun:
    """Send every item, `settings.concurrency` requests in flight; results in item order."""
    async with make_client(settings) as client:
        model = await resolve_model(client, settings.model)
        gate = asyncio.Semaphore(settings.concurrency)
        bar = tqdm(total=len(items), desc=f"eval {settings.mode}", unit="req", disable=not progress)

        async def one(item: EvalItem) -> Completion:
            async with gate:
                completion = await complete(client, item, settings, model)
            bar.update()
            return completion

        started = time.perf_counter()
        try:
            completions = await asyncio.gather(*(one(item) for item in items))
        finally:
            bar.close()
        wall = time.perf_counter() - started
    return RequestRun(model=model, completions=list(completions), wall_s=wall)


def score_response(
    item: EvalItem,
    completion: Completion,
    verifier: Verifier,
    refusal_message: str = DEFAULT_REFUSAL,
) -> ResponseRecord:
    """Verify one answer against its context and compare it with the gold answer."""
    abstained = is_abstention(completion.outcome, completion.content, refusal_message)
    claims: list[ClaimRecord] = []
    if not abstained and completion.outcome != "error":
        verification = verifier.verify(completion.content, item.context)
        claims = [
            ClaimRecord(
                text=v.claim.text,
                start=v.claim.start,
                end=v.claim.end,
                kind=v.claim.kind,
                supported=v.supported,
                method=v.method,
            )
            for v in verification.verdicts
        ]
    return ResponseRecord(
        id=item.id,
        line=item.line,
        question=item.question,
        context=item.context,
        answer=item.answer,
        response=completion.content,
        outcome=completion.outcome,
        finish_reason=completion.finish_reason,
        claims=claims,
        n_claims=len(claims),
        n_supported=sum(c.supported for c in claims),
        hallucinated=any(not c.supported for c in claims),
        abstained=abstained,
        gold_in_answer=not abstained and gold_in_answer(completion.content, item.answer),
        confidence=completion.confidence,
        em=exact_match(completion.content, item.answer),
        f1=f1_score(completion.content, item.answer),
        latency_s=completion.latency_s,
        completion_tokens=completion.completion_tokens,
        guard=completion.guard,
        error=completion.error,
    )


def score_responses(
    items: Sequence[EvalItem],
    completions: Sequence[Completion],
    verifier: Verifier,
    progress: bool = True,
    refusal_message: str = DEFAULT_REFUSAL,
) -> list[ResponseRecord]:
    """Score every completion against its item (after the requests, off the timed path)."""
    pairs = zip(items, completions, strict=True)
    bar = tqdm(pairs, total=len(items), desc="verify", unit="answer", disable=not progress)
    return [score_response(item, done, verifier, refusal_message) for item, done in bar]
