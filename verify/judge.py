"""Optional LLM judge: asks an OpenAI-compatible model whether a context supports a claim."""

from __future__ import annotations

import re
from typing import Any, Protocol

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)

SYSTEM_PROMPT = (
    "You check statements against a reference context. Judge only from the context. "
    "Answer with a single word: yes or no."
)


class ClaimJudge(Protocol):
    """Anything that can decide whether a context supports a claim (None: no decision)."""

    def judge(self, claim: str, sentence: str, context: str) -> bool | None:
        """True if `context` supports `claim` as used in `sentence`, False if not."""
        ...


def build_question(claim: str, sentence: str, context: str) -> str:
    """The user message: context, the response sentence and the claim to check in it."""
    return (
        f"Context:\n{context}\n\n"
        f"Statement: {sentence}\n\n"
        f'Does the context support the part "{claim}" of the statement, in the relation the '
        "statement puts it in? Answer yes or no."
    )


def parse_verdict(answer: str) -> bool | None:
    """The first yes/no word of a model answer (reasoning blocks skipped); None if absent."""
    match = _YES_NO.search(_THINK.sub(" ", answer))
    if match is None:
        return None
    return match.group(1).lower() == "yes"


class LLMJudge:
    """A yes/no claim judge over any OpenAI-compatible chat completions endpoint."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str = "EMPTY",
        *,
        client: Any = None,
        max_tokens: int = 16,
        timeout_s: float = 60.0,
    ) -> None:
        if client is None:
            from openai import OpenAI

            client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s)
        self.client = client
        self.model = model
        self.max_tokens = max_tokens

    def judge(self, claim: str, sentence: str, context: str) -> bool | None:
        """Ask the model; True/False from its answer, None when the answer has no yes/no."""
        completion = self.client.chat.completions.create(
            model=self.model,
            messages=[
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": build_question(claim, sentence, context)},
            ],
            temperature=0.0,
            max_tokens=self.max_tokens,
        )
        content = completion.choices[0].message.content
        return parse_verdict(content) if content else None
