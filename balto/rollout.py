"""Grouped rollouts for BALTO: G sampled responses per grounded prompt, labelled per token.

Token ids used for training: the sampled ids are decoded to text, and that text is
re-tokenized with ``return_offsets_mapping``; the trainer trains on the re-tokenized ids, so
every token has exactly the character span the labeller saw. The re-tokenization is the
tokenizer's canonical split of the same text (it differs from the sampled split only where the
sampler produced a non-canonical split; ``Rollout.retokenized`` records that). A response
that ended with an end-of-sequence token keeps it as its last, neutral token.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase

from engine.model_runner import ModelRunner
from engine.offline import sample_responses
from engine.sampling import SamplingParams
from engine.sequence import Sequence
from verify.token_labels import token_labels
from verify.verifier import Verifier


@dataclass(frozen=True)
class Prompt:
    """One training prompt: its token ids, the reference context, and a key (e.g. the line)."""

    ids: list[int]
    context: str
    key: str


@dataclass(frozen=True)
class ResponseLabels:
    """A labeller's verdict on one response: per-token labels and its claim counts."""

    token_labels: list[int]
    n_supported: int
    n_claims: int


class Labeller(Protocol):
    """Labels a response's tokens (-1/0/+1) from its text, the context and the token offsets."""

    def __call__(
        self, response: str, context: str, offsets: list[tuple[int, int]]
    ) -> ResponseLabels: ...


class VerifierLabeller:
    """The project's claim verifier projected to tokens (verify.verifier + verify.token_labels)."""

    def __init__(self, verifier: Verifier | None = None) -> None:
        self.verifier = verifier or Verifier()

    def __call__(
        self, response: str, context: str, offsets: list[tuple[int, int]]
    ) -> ResponseLabels:
        verification = self.verifier.verify(response, context)
        return ResponseLabels(
            token_labels(verification, offsets),
            verification.n_supported,
            len(verification.verdicts),
        )


@dataclass(frozen=True)
class Rollout:
    """One labelled response: the ids to train on, their labels, and its claim counts."""

    text: str
    response_ids: list[int]
    labels: list[int]
    n_supported: int
    n_claims: int
    finish_reason: str | None
    retokenized: bool

    @property
    def n_hallucinated_tokens(self) -> int:
        """|H|: tokens labelled hallucinated."""
        return sum(label < 0 for label in self.labels)

    @property
    def n_faithful_tokens(self) -> int:
        """|F|: tokens labelled faithful."""
        return sum(label > 0 for label in self.labels)


@dataclass(frozen=True)
class RolloutGroup:
    """The G responses to one prompt."""

    prompt: Prompt
    responses: list[Rollout]


@dataclass(frozen=True)
class GroupTensors:
    """A group as right-padded tensors: ids, mask and labels ``[G, T]``, claim counts ``[G]``."""

    response_ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    n_supported: torch.Tensor
    n_claims: torch.Tensor


def group_tensors(group: RolloutGroup, pad_id: int = 0) -> GroupTensors:
    """Stack a group's responses, padding on the right with ``pad_id`` (outside the mask)."""
    width = max(len(r.response_ids) for r in group.responses)
    size = (len(group.responses), width)
    ids = torch.full(size, pad_id, dtype=torch.long)
    mask = torch.zeros(size, dtype=torch.bool)
    labels = torch.zeros(size, dtype=torch.long)
    for row, rollout in enumerate(group.responses):
        n = len(rollout.response_ids)
        ids[row, :n] = torch.tensor(rollout.response_ids)
        mask[row, :n] = True
        labels[row, :n] = torch.tensor(rollout.labels)
    return GroupTensors(
        response_ids=ids,
        mask=mask,
        labels=labels,
        n_supported=torch.tensor([r.n_supported for r in group.responses]),
        n_claims=torch.tensor([r.n_claims for r in group.responses]),
    )


def sample_groups(
    runner: ModelRunner,
    tokenizer: PreTrainedTokenizerBase,
    prompts: SequenceOf[Prompt],
    params: SamplingParams,
    group_size: int,
    seed: int,
) -> list[list[Sequence]]:
    """Sample ``group_size`` responses per prompt in one batched engine run.

    Response g of prompt i uses sampling seed ``seed + i * group_size + g``. The runner needs
    ``len(prompts) * group_size`` slots for a single batch (fewer slots queue the rest).
    """
    return sample_responses(runner, tokenizer, [p.ids for p in prompts], params, group_size, seed)


def label_response(
    seq: Sequence, tokenizer: PreTrainedTokenizerBase, context: str, labeller: Labeller
) -> Rollout:
    """Decode a finished sequence, re-tokenize the text with offsets and label its tokens."""
    text = tokenizer.decode(seq.output_ids, skip_special_tokens=True)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    offsets = [tuple(span) for span in encoding["offset_mapping"]]
    retokenized = ids != list(seq.output_ids)
    if seq.finish_reason == "stop":
        ids.append(tokenizer.eos_token_id)
        offsets.append((len(text), len(text)))
    if not ids:  # nothing sampled and no end token: keep one neutral end token to train on
        ids, offsets = [tokenizer.eos_token_id], [(0, 0)]
    verdict = labeller(text, context, offsets)
    if len(verdict.token_labels) != len(ids):
        raise ValueError("labeller returned a label count that differs from the token count")
    return Rollout(
        text=text,
        response_ids=ids,
        labels=list(verdict.token_labels),
        n_supported=verdict.n_supported,
        n_claims=verdict.n_claims,
        finish_reason=seq.finish_reason,
        retokenized=retokenized,
    )


def label_groups(
    prompts: SequenceOf[Prompt],
    sampled: list[list[Sequence]],
    tokenizer: PreTrainedTokenizerBase,
    labeller: Labeller,
) -> list[RolloutGroup]:
    """Label every sampled response against its prompt's context."""
    return [
        RolloutGroup(
            prompt=prompt,
            responses=[label_response(seq, tokenizer, prompt.context, labeller) for seq in group],
        )
        for prompt, group in zip(prompts, sampled, strict=True)
    ]


def collect_rollouts(
    runner: ModelRunner,
    tokenizer: PreTrainedTokenizerBase,
    prompts: SequenceOf[Prompt],
    labeller: Labeller,
    params: SamplingParams,
    group_size: int,
    seed: int,
) -> list[RolloutGroup]:
    """Sample G responses for every prompt in one batch and label each one."""
    sampled = sample_groups(runner, tokenizer, prompts, params, group_size, seed)
    return label_groups(prompts, sampled, tokenizer, labeller)
