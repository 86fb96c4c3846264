"""Runs evaluation items against an OpenAI-compatible server and scores each answer.

Requests go over HTTP through the official `openai` client, `concurrency` at a time, exactly as
an application sends them. Answers are then checked claim by claim against the item's context
with guard's verifier (the server's own `guard` report is stored, never trusted for scoring).
A refused answer carries the refusal message, not an answer: it is not verified and has no
claims. A truncated answer keeps an accepted prefix, which is verified like any answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Literal

import openai
from pydantic import BaseModel, Field, computed_field, model_validator
from tqdm import tqdm

from evals.datasets import EvalItem
from evals.metrics import exact_match, f1_score
from evals.prompts import grounded_messages
from verify.verifier import Verifier

Mode = Literal["plain", "guard", "verify"]
ABSTENTIONS = ("refused", "truncated")


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


class Completion(BaseModel):
    """What the server returned for one item (or the error it raised)."""

    content: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    latency_s: float
    guard: dict[str, Any] | None = None
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
    em: float
    f1: float
    latency_s: float
    completion_tokens: int
    guard: dict[str, Any] | None = None
    error: str | None = None

    @computed_field
    @property
    def abstained(self) -> bool:
        """True for a refused or truncated answer."""
        return self.outcome in ABSTENTIONS


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
    return Completion(
        content=choice.message.content or "",
        finish_reason=choice.finish_reason,
        completion_tokens=response.usage.completion_tokens if response.usage else 0,
        latency_s=latency,
        guard=reports[0] if reports else None,
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


def score_response(item: EvalItem, completion: Completion, verifier: Verifier) -> ResponseRecord:
    """Verify one answer against its context and compare it with the gold answer."""
    claims: list[ClaimRecord] = []
    if completion.outcome not in ("refused", "error"):
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
) -> list[ResponseRecord]:
    """Score every completion against its item (after the requests, off the timed path)."""
    pairs = zip(items, completions, strict=True)
    bar = tqdm(pairs, total=len(items), desc="verify", unit="answer", disable=not progress)
    return [score_response(item, completion, verifier) for item, completion in bar]
