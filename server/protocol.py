"""Pydantic models of the OpenAI chat-completions wire format, plus guardserve's extra fields."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from engine.outputs import TokenLogprob
from guard.config import GuardConfig
from guard.report import GuardReport

# Why a choice ended: its stop (end of sequence or a stop string), its token limit, or the
# guard withholding the answer or its tail (the guard report's outcome refused or truncated).
FinishReason = Literal["stop", "length", "content_filter"]


def valid_unicode(value: Any) -> Any:
    """Reject strings that UTF-8 cannot encode (JSON's unpaired \\uD800-\\uDFFF escapes).

    Lists are checked item by item; anything else passes through unchanged.
    """
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, str):
            continue
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"contains an unpaired UTF-16 surrogate at character {exc.start}; "
                "text must be valid Unicode"
            ) from None
    return value


class TextPart(BaseModel):
    """One text part of a multi-part message content."""

    type: Literal["text"]
    text: str

    _text_is_unicode = field_validator("text")(valid_unicode)


class ChatMessage(BaseModel):
    """One message of the conversation."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    _text_is_unicode = field_validator("content", "name")(valid_unicode)

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        """The message content as plain text."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """OpenAI stream options."""

    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    """The schema of a `json_schema` response format."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(max_length=64)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI `response_format`: free text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with, and only with, type 'json_schema'")
        return self

    def schema_text(self) -> str | None:
        """The JSON Schema the output must match, as text; None for free text."""
        if self.type == "json_object":
            return json.dumps({"type": "object"})
        if self.json_schema is not None:
            return json.dumps(self.json_schema.schema_)
        return None


class ChatCompletionRequest(BaseModel):
    """Body of POST /v1/chat/completions (fields guardserve does not use are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(
        default=None, ge=0.0, le=1.0, description="0: the smallest nucleus, the top token alone."
    )
    top_k: int | None = Field(default=None, ge=-1)
    n: int = Field(default=1, ge=1, le=16)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    ignore_eos: bool = Field(
        default=False, description="vLLM extension: keep generating past end-of-sequence."
    )
    user: str | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = Field(
        default=None, description="Not supported: a non-empty list is a 400."
    )
    tool_choice: str | dict[str, Any] | None = Field(
        default=None, description="Only 'none' is supported."
    )
    functions: list[dict[str, Any]] | None = Field(
        default=None, description="Not supported: a non-empty list is a 400."
    )
    function_call: str | dict[str, Any] | None = Field(
        default=None, description="Only 'none' is supported."
    )
    guard: Annotated[
        dict[str, Any] | None,
        # Checked against GuardConfig once merged with the server's defaults; documented as it.
        WithJsonSchema({"anyOf": [GuardConfig.model_json_schema(), {"type": "null"}]}),
    ] = Field(
        default=None,
        description="Per-request Token-Guard settings: {'enabled': true, ...overrides}.",
    )

    _text_is_unicode = field_validator("model", "stop", "user")(valid_unicode)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError("tool and function calling are not supported by this server")
        return value

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if value not in (None, "none"):
            raise ValueError("tool and function calling are not supported; only 'none' is")
        return value

    def logprob_count(self) -> int | None:
        """How many alternatives to report per token; None when logprobs are not wanted."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def stop_list(self) -> list[str]:
        """Stop sequences as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_max_tokens(self) -> int | None:
        """max_completion_tokens, falling back to the legacy max_tokens."""
        return self.max_completion_tokens or self.max_tokens


class Usage(BaseModel):
    """Token accounting of a completion."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The generated message."""

    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    """One likely token at a position."""

    token: str
    logprob: float
    bytes: list[int] | None


class ContentLogprob(TopLogprob):
    """A generated token with its most likely alternatives."""

    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """OpenAI's `logprobs` of a choice (or of a stream chunk's choice)."""

    content: list[ContentLogprob]

    @classmethod
    def of(cls, entries: tuple[TokenLogprob, ...] | None) -> ChoiceLogprobs | None:
        """The wire form of an engine's per-token logprobs; None when none were asked for."""
        if entries is None:
            return None

        def utf8(text: str) -> list[int]:
            return list(text.encode("utf-8", errors="replace"))

        return cls(
            content=[
                ContentLogprob(
                    token=entry.token,
                    logprob=entry.logprob,
                    bytes=utf8(entry.token),
                    top_logprobs=[
                        TopLogprob(token=token, logprob=logprob, bytes=utf8(token))
                        for token, logprob in entry.top
                    ],
                )
                for entry in entries
            ]
        )


class Choice(BaseModel):
    """One generated alternative."""

    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


def completion_id() -> str:
    """A fresh OpenAI-style completion id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletion(BaseModel):
    """Non-streaming response; `guard` sits beside `choices` when guarded generation ran."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    guard: list[GuardReport] | None = None


class DeltaMessage(BaseModel):
    """Incremental piece of the assistant message."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """One alternative's delta in a stream chunk."""

    index: int
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streaming response."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    guard: GuardReport | None = None


class ModelCard(BaseModel):
    """One entry of GET /v1/models."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "guardserve"
    root: str
    max_model_len: int | None = Field(None, description="The context served, once loaded.")
    dtype: str | None = Field(None, description="The dtype both engines run in, once loaded.")
    guard: GuardConfig | None = Field(
        None, description="The guard settings requests start from (calibrated for this model)."
    )


class ModelList(BaseModel):
    """Body of GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Envelope of every error response."""

    error: ErrorBody
