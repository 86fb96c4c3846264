"""The grounded-QA prompt (context + question, answer briefly from the context only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SYSTEM_PROMPT = (
    "Answer the question using only the context. Reply with one short sentence. "
    "Do not add facts that are not in the context."
)


def grounded_messages(context: str, question: str) -> list[dict[str, str]]:
    """Chat messages of a grounded question: the instruction, then the context and question."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Context: {context}\n\nQuestion: {question}"},
    ]


def grounded_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, knowledge: str, question: str
) -> list[int]:
    """Token ids of the grounded prompt in the tokenizer's chat template, ready for a reply.

    One prompt builder for BALTO training, the probe and calibration, and the evaluation
    harness (which sends the same messages over HTTP).
    """
    text = tokenizer.apply_chat_template(
        grounded_messages(knowledge, question), add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
