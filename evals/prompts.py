"""The grounded-QA prompt (context + question, answer briefly from the context only)."""

from __future__ import annotations

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
