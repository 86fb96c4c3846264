"""Chat-completion serving: validate, template, route to an engine, build responses and streams."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace

from transformers import PreTrainedTokenizerBase

from engine.outputs import SequenceOutput
from engine.sampling import SamplingParams
from guard.config import GuardConfig
from guard.report import GuardReport
from server import metrics
from server.engines.base import Engine, EngineError, GuardEngine
from server.errors import invalid_request, model_not_found
from server.plan import RequestPlan, plan_request
from server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaMessage,
    FinishReason,
    Usage,
    completion_id,
)
from server.verification import ClaimChecker, conversation_context

# An SSE comment: clients skip it, proxies and load balancers see the connection is alive.
KEEPALIVE_EVENT = ": keep-alive\n\n"


@dataclass(frozen=True)
class Prepared:
    """A validated request: its prompt tokens, one sampling setup per choice, and its plan."""

    request: ChatCompletionRequest
    prompt_ids: list[int]
    params: list[SamplingParams]
    plan: RequestPlan
    context: str
    arrival: float = field(default_factory=time.perf_counter)

    @property
    def mode(self) -> str:
        """plain, verify or guard: the plan's mode, which labels the request's metrics."""
        return self.plan.mode

    @property
    def sequences(self) -> int:
        """Sequences the engine runs for this request: one per choice, times guard chains."""
        return len(self.params) * self.plan.sequences_per_choice


Output = SequenceOutput[GuardReport]


class ChatService:
    """Turns OpenAI chat requests into engine generations and engine output into OpenAI replies."""

    def __init__(
        self,
        *,
        tokenizer: PreTrainedTokenizerBase,
        plain_engine: Engine,
        guard_engine: GuardEngine,
        served_model_names: list[str],
        max_model_len: int,
        max_num_seqs: int,
        guard_default: GuardConfig,
        checker: ClaimChecker,
        has_probe: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.plain_engine = plain_engine
        self.guard_engine = guard_engine
        self.served_model_names = served_model_names
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.guard_default = guard_default
        self.checker = checker
        self.has_probe = has_probe

    def prepare(self, request: ChatCompletionRequest, guard_header: str | None) -> Prepared:
        """Validate a request against the model and limits; raise APIError on bad input."""
        if request.model not in self.served_model_names:
            raise model_not_found(request.model)
        context = conversation_context(request.messages)
        plan = plan_request(
            request.guard,
            guard_header,
            self.guard_default,
            has_probe=self.has_probe,
            stream=request.stream,
            checker=self.checker,
            context=context,
        )
        self._check_sequences(request.n, plan)
        schema = self._check_decoding_options(request, plan)
        prompt_ids = self._prompt_ids(request)
        room = self.max_model_len - len(prompt_ids)
        if room <= 0:
            raise invalid_request(
                f"The prompt has {len(prompt_ids)} tokens; this model's context is "
                f"{self.max_model_len} tokens.",
                param="messages",
                code="context_length_exceeded",
            )
        wanted = request.requested_max_tokens()
        if wanted is not None and wanted > room:
            raise invalid_request(
                f"max_tokens is {wanted}, but the prompt has {len(prompt_ids)} tokens and the "
                f"context is {self.max_model_len}: at most {room} can be generated.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        temperature = 1.0 if request.temperature is None else request.temperature
        params = [
            SamplingParams(
                max_tokens=wanted or room,
                temperature=temperature,
                top_p=1.0 if request.top_p is None else request.top_p,
                top_k=max(request.top_k or 0, 0),
                seed=None if request.seed is None else request.seed + index,
                stop=tuple(request.stop_list()),
                ignore_eos=request.ignore_eos,
                logprobs=request.logprob_count(),
                json_schema=schema,
            )
            for index in range(request.n)
        ]
        return Prepared(request, prompt_ids, params, plan, context)

    def _check_sequences(self, n: int, plan: RequestPlan) -> None:
        """A request may run at most `max_num_seqs` sequences (n choices x guard chains)."""
        chains = plan.sequences_per_choice
        if n * chains > self.max_num_seqs:
            where = f"n ({n}) x guard.chains ({chains})" if chains > 1 else f"n ({n})"
            raise invalid_request(
                f"{where} asks for {n * chains} sequences; this server runs at most "
                f"{self.max_num_seqs} for one request.",
                param="guard.chains" if chains > 1 else "n",
            )

    def _check_decoding_options(
        self, request: ChatCompletionRequest, plan: RequestPlan
    ) -> str | None:
        """Refuse options the chosen engine cannot honour; the output schema, if any."""
        guarded = plan.guard is not None
        if guarded and request.logprobs:
            raise invalid_request(
                "logprobs are not available for guarded requests (guard.enabled).",
                param="logprobs",
            )
        schema = None if request.response_format is None else request.response_format.schema_text()
        if schema is not None and (guarded or self.plain_engine.name != "vllm"):
            where = "guarded requests" if guarded else f"the {self.plain_engine.name} engine"
            raise invalid_request(
                f"response_format {request.response_format.type!r} is not available for "
                f"{where}; it needs the vLLM engine (--plain-engine vllm).",
                param="response_format",
            )
        return schema

    def _prompt_ids(self, request: ChatCompletionRequest) -> list[int]:
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # templates raise on conversations they cannot render
            raise invalid_request(f"messages: {exc}", param="messages") from exc
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _generations(self, prepared: Prepared, rid: str) -> list[AsyncIterator[Output]]:
        """One stream per choice, on the engine the plan names (claims added if it asks)."""
        run = prepared.plan.guard
        ids = prepared.prompt_ids
        streams = [
            self.plain_engine.generate(f"{rid}-{i}", ids, params)
            if run is None
            else self.guard_engine.generate_guarded(f"{rid}-{i}", ids, params, run)
            for i, params in enumerate(prepared.params)
        ]
        if prepared.plan.check_claims:
            return [self._with_claims(stream, prepared.context) for stream in streams]
        return streams

    async def _with_claims(
        self, stream: AsyncIterator[Output], context: str
    ) -> AsyncIterator[Output]:
        """Relay chunks; the final one gets the answer's claims and verdicts in its report."""
        text = ""
        async with aclosing(stream) as chunks:
            async for chunk in chunks:
                text += chunk.text
                if chunk.finish_reason is not None:
                    report = await asyncio.to_thread(
                        self.checker.annotate, chunk.report, text, context
                    )
                    chunk = replace(chunk, report=report)
                yield chunk

    async def complete(self, prepared: Prepared, timeout_s: float | None = None) -> ChatCompletion:
        """Run all choices to the end and build the non-streaming response.

        Past `timeout_s` this raises TimeoutError; cancelled (the client left) or timed out,
        every generation is closed, which aborts its sequence in the engine.
        """
        rid = completion_id()
        choices = [Output("", 0) for _ in prepared.params]

        async def collect(index: int, stream: AsyncIterator[Output]) -> None:
            async with aclosing(stream) as chunks:
                async for chunk in chunks:
                    choices[index] = _absorb(choices[index], chunk)

        with _Observation(prepared) as observation:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(
                    *(collect(i, s) for i, s in enumerate(self._generations(prepared, rid)))
                )
            observation.first_token()
            observation.tokens(sum(c.completion_tokens for c in choices))
        reports = [c.report for c in choices]
        return ChatCompletion(
            id=rid,
            model=prepared.request.model,
            choices=[
                Choice(
                    index=i,
                    message=AssistantMessage(content=c.text),
                    finish_reason=_finish_reason(c) or "stop",
                    logprobs=ChoiceLogprobs.of(c.logprobs),
                )
                for i, c in enumerate(choices)
            ],
            usage=self._usage(prepared, choices),
            guard=reports if any(r is not None for r in reports) else None,
        )

    async def stream(
        self,
        prepared: Prepared,
        timeout_s: float | None = None,
        *,
        keepalive_s: float,
    ) -> AsyncIterator[str]:
        """Server-sent events: a role chunk, content deltas, finish chunks, usage, [DONE].

        Past `timeout_s` the stream ends with an error event and the generations are aborted.
        Whenever nothing has been sent for `keepalive_s` (a guarded answer is held until it is
        checked), an SSE comment line goes out, which clients ignore and proxies count as
        traffic.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        rid = completion_id()
        created = int(time.time())
        model = prepared.request.model
        choices = [Output("", 0) for _ in prepared.params]
        events: asyncio.Queue[tuple[int, Output | BaseException | None]] = asyncio.Queue()

        async def pump(index: int, stream: AsyncIterator[Output]) -> None:
            try:
                async for chunk in stream:
                    await events.put((index, chunk))
                await events.put((index, None))
            except Exception as exc:
                await events.put((index, exc))

        def event(chunk: ChatCompletionChunk) -> str:
            return f"data: {chunk.model_dump_json(exclude_none=True, by_alias=True)}\n\n"

        with _Observation(prepared) as observation:
            tasks = [
                asyncio.create_task(pump(i, s))
                for i, s in enumerate(self._generations(prepared, rid))
            ]
            announced: set[int] = set()
            sent = time.monotonic()
            try:
                remaining = len(choices)
                while remaining:
                    now = time.monotonic()
                    wait = max(sent + keepalive_s - now, 0)
                    if deadline is not None and deadline - now < wait:
                        wait = max(deadline - now, 0)
                    try:
                        index, item = await asyncio.wait_for(events.get(), wait)
                    except TimeoutError:
                        if deadline is None or time.monotonic() < deadline:
                            yield KEEPALIVE_EVENT
                            sent = time.monotonic()
                            continue
                        message = f"The request did not finish within {timeout_s} s."
                        yield _error_event(message, "timeout_error", "timeout")
                        observation.outcome = "timeout"
                        break
                    if item is None:
                        remaining -= 1
                        continue
                    if isinstance(item, BaseException):
                        raise item
                    choices[index] = _absorb(choices[index], item)
                    if not (item.text or item.finish_reason or item.logprobs):
                        continue
                    if item.text:
                        observation.first_token()
                    # The role rides on a choice's first content, as in vLLM's server: a role
                    # chunk sent ahead of any token would let clients time the first token early.
                    first = index not in announced
                    announced.add(index)
                    delta = ChunkChoice(
                        index=index,
                        delta=DeltaMessage(
                            role="assistant" if first else None,
                            content=item.text or ("" if first else None),
                        ),
                        finish_reason=_finish_reason(item),
                        logprobs=ChoiceLogprobs.of(item.logprobs),
                    )
                    yield event(
                        ChatCompletionChunk(
                            id=rid,
                            created=created,
                            model=model,
                            choices=[delta],
                            guard=item.report if item.finish_reason else None,
                        )
                    )
                    sent = time.monotonic()
            except EngineError as exc:
                yield _error_event(str(exc), "server_error", "engine_error")
                observation.fail()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            observation.tokens(sum(c.completion_tokens for c in choices))
            options = prepared.request.stream_options
            if options is not None and options.include_usage:
                usage = self._usage(prepared, choices)
                yield event(
                    ChatCompletionChunk(
                        id=rid, created=created, model=model, choices=[], usage=usage
                    )
                )
            yield "data: [DONE]\n\n"

    def _usage(self, prepared: Prepared, choices: list[Output]) -> Usage:
        completion = sum(c.completion_tokens for c in choices)
        prompt = len(prepared.prompt_ids)
        return Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )


def _finish_reason(output: Output) -> FinishReason | None:
    """OpenAI's finish reason of a choice's output: `content_filter` where the guard withheld
    the answer or its tail (report outcome refused or truncated), else the engine's own."""
    report = output.report
    if output.finish_reason is not None and report is not None and report.outcome != "answered":
        return "content_filter"
    return output.finish_reason


def _absorb(choice: Output, chunk: Output) -> Output:
    """A choice so far, followed by its next chunk; a final guard report feeds the metrics."""
    if chunk.finish_reason is not None and chunk.report is not None:
        metrics.observe_guard_report(chunk.report)
    return choice.followed_by(chunk)


def _error_event(message: str, kind: str, code: str) -> str:
    """An SSE event carrying OpenAI's error object (the SDK raises it as an APIError)."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return f"data: {json.dumps(body)}\n\n"


class _Observation:
    """Latency, first-token and token metrics of one request, labelled by mode and outcome.

    The outcome is ok, error, aborted (the client left) or timeout (cut off by the server).
    """

    def __init__(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.outcome = "ok"
        self._first_seen = False

    def first_token(self) -> None:
        if not self._first_seen:
            self._first_seen = True
            elapsed = time.perf_counter() - self.prepared.arrival
            metrics.TIME_TO_FIRST_TOKEN.labels(self.prepared.mode).observe(elapsed)

    def tokens(self, count: int) -> None:
        metrics.GENERATED_TOKENS.labels(self.prepared.mode).inc(count)
        metrics.PROMPT_TOKENS.labels(self.prepared.mode).inc(len(self.prepared.prompt_ids))

    def fail(self) -> None:
        self.outcome = "error"

    def __enter__(self) -> _Observation:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is TimeoutError:
            self.outcome = "timeout"
        elif exc_type in (GeneratorExit, asyncio.CancelledError):
            self.outcome = "aborted"
        elif exc_type is not None:
            self.outcome = "error"
        elapsed = time.perf_counter() - self.prepared.arrival
        metrics.REQUEST_LATENCY.labels(self.prepared.mode, self.outcome).observe(elapsed)
