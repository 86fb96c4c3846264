"""Chat completions through the official `openai` client on both plain engines."""

from __future__ import annotations

import pytest
from live_server import MAX_MODEL_LEN, MODEL, Server, user
from transformers import PreTrainedTokenizerBase

pytestmark = pytest.mark.integration

QUESTION = user("What is the capital of France? Answer in one sentence.")
POEM = user("Write a short poem about the sea.")


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
