"""Chat completions through the official `openai` client on both plain engines."""

from __future__ import annotations

import json

import openai
import pytest
from live_server import MAX_MODEL_LEN, MODEL, Server, user
from transformers import PreTrainedTokenizerBase

pytestmark = pytest.mark.integration

QUESTION = user("What is the capital of France? Answer in one sentence.")
POEM = user("Write a short poem about the sea.")
GUARDED = {"guard": {"enabled": True}}


def test_chat_usage_matches_chat_template(
    server: Server, tokenizer: PreTrainedTokenizerBase
) -> None:
    completion = server.openai().chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=32, temperature=0
    )
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    expected_prompt = len(
        tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True)[
            "input_ids"
        ]
    )
    usage = completion.usage
    assert usage.prompt_tokens == expected_prompt
    assert 0 < usage.completion_tokens <= 32
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    generated = tokenizer(choice.message.content, add_special_tokens=False)["input_ids"]
    assert abs(len(generated) - usage.completion_tokens) <= 2


def test_greedy_is_deterministic(server: Server) -> None:
    client = server.openai()
    texts = [
        client.chat.completions.create(model=MODEL, messages=POEM, max_tokens=24, temperature=0)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert texts[0]
    assert texts[0] == texts[1]


def test_seed_makes_sampling_repeatable(server: Server) -> None:
    client = server.openai()

    def sample(seed: int) -> str:
        completion = client.chat.completions.create(
            model=MODEL,
            messages=POEM,
            max_tokens=24,
            temperature=1.0,
            top_p=0.95,
            seed=seed,
            extra_body={"top_k": 40},
        )
        return completion.choices[0].message.content

    first = sample(1234)
    assert first
    assert sample(1234) == first


def test_top_p_zero_samples_the_top_token(server: Server) -> None:
    """OpenAI accepts top_p 0, the smallest nucleus: sampling then always takes the top token."""
    client = server.openai()
    greedy = client.chat.completions.create(
        model=MODEL, messages=POEM, max_tokens=16, temperature=0
    )
    nucleus = client.chat.completions.create(
        model=MODEL, messages=POEM, max_tokens=16, temperature=1.5, top_p=0, n=2, seed=3
    )
    expected = greedy.choices[0].message.content
    assert expected
    assert [c.message.content for c in nucleus.choices] == [expected, expected]


def test_n_returns_indexed_choices(server: Server) -> None:
    completion = server.openai().chat.completions.create(
        model=MODEL, messages=POEM, max_tokens=16, temperature=1.0, n=3, seed=7
    )
    assert sorted(c.index for c in completion.choices) == [0, 1, 2]
    for choice in completion.choices:
        assert choice.message.content
        assert choice.finish_reason in ("stop", "length")
    assert 0 < completion.usage.completion_tokens <= 3 * 16
    assert (
        completion.usage.total_tokens
        == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_stop_string_is_never_in_the_output(server: Server) -> None:
    client = server.openai()
    free = client.chat.completions.create(model=MODEL, messages=POEM, max_tokens=32, temperature=0)
    text = free.choices[0].message.content
    words = text.split()
    assert len(words) >= 4, text
    stop = " " + words[3]
    cut = text.index(stop)
    stopped = client.chat.completions.create(
        model=MODEL, messages=POEM, max_tokens=32, temperature=0, stop=[stop]
    )
    choice = stopped.choices[0]
    assert stop not in choice.message.content
    assert choice.message.content == text[:cut]
    assert choice.finish_reason == "stop"


def test_max_tokens_ends_with_length(server: Server) -> None:
    completion = server.openai().chat.completions.create(
        model=MODEL, messages=POEM, max_tokens=5, temperature=0
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    assert completion.choices[0].message.content


def test_stream_matches_non_stream(server: Server) -> None:
    client = server.openai()
    whole = client.chat.completions.create(model=MODEL, messages=POEM, max_tokens=24, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=POEM,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    # The role comes with the first content, not ahead of it (clients time TTFT by that event).
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant"
    assert first.delta.content or first.finish_reason
    with_choices = [c for c in chunks if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert content == whole.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in with_choices]
    assert reasons[-1] == whole.choices[0].finish_reason
    assert all(r is None for r in reasons[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_option_has_no_usage(server: Server) -> None:
    chunks = list(
        server.openai().chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=16, temperature=0, stream=True
        )
    )
    assert chunks
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stream_with_two_choices(server: Server) -> None:
    stream = server.openai().chat.completions.create(
        model=MODEL,
        messages=POEM,
        max_tokens=16,
        temperature=1.0,
        seed=3,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = {0: "", 1: ""}
    roles: dict[int, str] = {}
    finished: dict[int, str] = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            assert choice.index not in finished, "content after finish_reason"
            if choice.delta.role:
                roles[choice.index] = choice.delta.role
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert roles == {0: "assistant", 1: "assistant"}
    assert set(finished) == {0, 1}
    assert texts[0] and texts[1]
    assert usage is not None
    assert 0 < usage.completion_tokens <= 32


def test_models_lists_the_served_model(server: Server) -> None:
    models = server.openai().models.list()
    cards = list(models)
    assert [m.id for m in cards] == [MODEL]
    assert cards[0].object == "model"
    assert cards[0].model_extra["max_model_len"] == MAX_MODEL_LEN


def test_logprobs_with_top_alternatives(server: Server) -> None:
    client = server.openai()
    asked = dict(model=MODEL, messages=QUESTION, max_tokens=6, temperature=0, logprobs=True)
    whole = client.chat.completions.create(**asked, top_logprobs=3, extra_body={"ignore_eos": True})
    entries = whole.choices[0].logprobs.content
    assert len(entries) == whole.usage.completion_tokens == 6
    for entry in entries:
        assert entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode("utf-8"))
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        # Greedy decoding picks the most likely token.
        assert entry.top_logprobs[0].token == entry.token
        assert abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-4
    chunks = list(
        client.chat.completions.create(**asked, stream=True, extra_body={"ignore_eos": True})
    )
    streamed = [
        entry
        for chunk in chunks
        for choice in chunk.choices
        if choice.logprobs is not None
        for entry in choice.logprobs.content or []
    ]
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert all(abs(a.logprob - b.logprob) < 1e-3 for a, b in zip(streamed, entries, strict=True))
    assert all(not e.top_logprobs for e in streamed)
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, **GUARDED}, "logprobs"),
        ({"response_format": {"type": "json_object"}, **GUARDED}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
    ],
    ids=["tools", "tool_choice", "functions", "top_without_logprobs", "guard_logprobs",
         "guard_response_format", "schema_missing"],
)  # fmt: skip
def test_unsupported_options_are_a_400_naming_them(server: Server, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        server.openai().chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=4, extra_body=extra
        )
    assert error.value.param == param


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.vllm
def test_response_format_constrains_vllm_output(vllm_server: Server) -> None:
    client = vllm_server.openai()
    ask = dict(model=MODEL, max_tokens=96, temperature=0)
    loose = client.chat.completions.create(
        **ask,
        messages=user('Answer in JSON like {"capital": "..."}: what is the capital of France?'),
        response_format={"type": "json_object"},
    )
    assert loose.choices[0].finish_reason == "stop", loose.choices[0].message.content
    assert isinstance(json.loads(loose.choices[0].message.content), dict)
    strict = client.chat.completions.create(
        **ask,
        messages=user("Give a person's name and age as JSON."),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": True},
        },
    )
    person = json.loads(strict.choices[0].message.content)
    assert set(person) == {"name", "age"}
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            **ask,
            messages=QUESTION,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "broken", "schema": {"type": "nonsense"}},
            },
        )
    assert "nonsense" in error.value.message


def test_response_format_needs_vllm_on_the_torch_engine(torch_server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        torch_server.openai().chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=4, response_format={"type": "json_object"}
        )
    assert error.value.param == "response_format"
    text = torch_server.openai().chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=4, response_format={"type": "text"}
    )
    assert text.choices[0].message.content
