"""Grouped rollouts for BALTO: G sampled responses per grounded prompt, labelled per token.

Token ids used for training: the sampled ids are decoded to text, and that text is
re-tokenized with ``return_offsets_mapping``; the trainer trains on the re-tokenized ids, so
every token has exactly the character span the labeller saw. The re-tokenization is the
tokenizer's canonical split of the same text (it differs from the sampled split only where the
sampler produced a non-canonical split; ``Rollout.retokenized`` records that). A response
that ended with an end-of-sequence token keeps it as its last, neutral token.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence as SequenceOf
from concurrent.futures import ProcessPoolExecutor
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
    """One training prompt: its token ids, the reference context, a key (e.g. the line) and
    its gold answer ("" when there is none)."""

    ids: list[int]
    context: str
    key: str
    answer: str = ""


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


_worker_labeller: VerifierLabeller | None = None


def _start_worker() -> None:
    """Pool initializer: one verifier (spaCy and the embedding model) per worker process, on
    one thread (the workers already fill the cores)."""
    global _worker_labeller
    torch.set_num_threads(1)
    _worker_labeller = VerifierLabeller()


def _label_in_worker(response: str, context: str, offsets: list[tuple[int, int]]) -> ResponseLabels:
    assert _worker_labeller is not None, "pool worker started without its verifier"
    return _worker_labeller(response, context, offsets)


class PoolLabeller:
    """The verifier labeller in ``workers`` processes; `label_many` labels a step's responses
    in parallel (the verifier is CPU-bound Python, so threads would not help)."""

    def __init__(self, workers: int) -> None:
        self.pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker
        )

    def __call__(
        self, response: str, context: str, offsets: list[tuple[int, int]]
    ) -> ResponseLabels:
        return self.pool.submit(_label_in_worker, response, context, offsets).result()

    def label_many(
        self, requests: SequenceOf[tuple[str, str, list[tuple[int, int]]]]
    ) -> list[ResponseLabels]:
        """Labels of many (response, context, offsets) requests, in their order."""
        return list(self.pool.map(_label_in_worker, *zip(*requests, strict=True), chunksize=2))

    def close(self) -> None:
        """Stop the worker processes."""
        self.pool.shutdown(cancel_futures=True)


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


@dataclass(frozen=True)
class _Decoded:
    """A finished sequence as the labeller sees it: text, training ids and their offsets."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    retokenized: bool
    finish_reason: str | None


def _decode(seq: Sequence, tokenizer: PreTrainedTokenizerBase) -> _Decoded:
    """Decode a finished sequence and re-tokenize the text with offsets."""
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
    return _Decoded(text, ids, offsets, retokenized, seq.finish_reason)


def _rollout(decoded: _Decoded, verdict: ResponseLabels) -> Rollout:
    if len(verdict.token_labels) != len(decoded.ids):
        raise ValueError("labeller returned a label count that differs from the token count")
    return Rollout(
        text=decoded.text,
        response_ids=decoded.ids,
        labels=list(verdict.token_labels),
        n_supported=verdict.n_supported,
        n_claims=verdict.n_claims,
        finish_reason=decoded.finish_reason,
        retokenized=decoded.retokenized,
    )


def label_groups(
    prompts: SequenceOf[Prompt],
    sampled: list[list[Sequence]],
    tokenizer: PreTrainedTokenizerBase,
    labeller: Labeller,
) -> list[RolloutGroup]:
    """Label every sampled response against its prompt's context (in parallel for a
    `PoolLabeller`)."""
    decoded = [[_decode(seq, tokenizer) for seq in group] for group in sampled]
    requests = [
        (d.text, prompt.context, d.offsets)
        for prompt, group in zip(prompts, decoded, strict=True)
        for d in group
    ]
    if isinstance(labeller, PoolLabeller):
        verdicts = iter(labeller.label_many(requests))
    else:
        verdicts = iter([labeller(*request) for request in requests])
    return [
        RolloutGroup(prompt=prompt, responses=[_rollout(d, next(verdicts)) for d in group])
        for prompt, group in zip(prompts, decoded, strict=True)
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
