"""One request's decoding state in the torch engine: plain sequences and the tree-sequence hooks."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import PreTrainedTokenizerBase

from engine.detokenizer import IncrementalDetokenizer
from engine.outputs import FinishReason, SequenceOutput, TokenLogprob
from engine.sampling import SamplingParams, Shortlist, token_logprobs


class Sequence:
    """A plain request. Each step the engine feeds its last token, samples the next one from
    the logits in one batched draw with every other plain row, and hands it to `append_token`.
    """

    # Whether `on_prefill` gets the prompt's mean penultimate state; the engine computes it
    # only for sequence types that set this.
    uses_prompt_state: ClassVar[bool] = False

    def __init__(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        tokenizer: PreTrainedTokenizerBase,
        eos_token_ids: frozenset[int],
        max_model_len: int,
    ) -> None:
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.params = params
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.slot = -1
        self.output_ids: list[int] = []
        self.generated = 0
        self.finish_reason: FinishReason | None = None
        self.detokenizer = IncrementalDetokenizer(tokenizer, params.stop)
        self.tokenizer = tokenizer
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()
        self._unsent = ""
        self._unsent_logprobs: list[TokenLogprob] = []

    @property
    def finished(self) -> bool:
        """Whether generation has ended."""
        return self.finish_reason is not None

    def on_prefill(self, logits: torch.Tensor, prompt_state: torch.Tensor | None) -> None:
        """The prompt is in the cache: its next-token logits [V] and, for a sequence type that
        `uses_prompt_state`, the prompt's mean penultimate state [d] (else None).

        A plain sequence needs neither: the engine samples its first token from these logits.
        """

    def append_token(self, token: int, logits: torch.Tensor) -> None:
        """Take the token the engine sampled from `logits` [V]; end where a stop condition holds.

        Every sampled token counts as generated, an end-of-sequence token included (as in vLLM).
        """
        if self.params.logprobs is not None and token not in self.eos_token_ids:
            self._record_logprob(token, logits)
        self.generated += 1
        if token in self.eos_token_ids and not self.params.ignore_eos:
            self.finish("stop")
            return
        self.output_ids.append(token)
        self._unsent += self.detokenizer.push(token)
        if self.detokenizer.stopped:
            self.finish("stop")
        elif self._at_length_limit():
            self.finish("length")

    def buffer_bytes(self) -> int:
        """Bytes of hidden states this sequence holds (none for plain decoding)."""
        return 0

    def take_output(self) -> SequenceOutput[Any] | None:
        """Text and status produced since the last call (None if there is nothing new)."""
        if not self._unsent and not self._unsent_logprobs and not self.finished:
            return None
        text, self._unsent = self._unsent, ""
        logprobs = None
        if self.params.logprobs is not None:
            logprobs, self._unsent_logprobs = tuple(self._unsent_logprobs), []
        return SequenceOutput(text, self.generated, self.finish_reason, logprobs=logprobs)

    def finish(self, reason: FinishReason) -> None:
        """End generation, releasing any held-back text."""
        self._unsent += self.detokenizer.flush()
        self.finish_reason = reason

    def _record_logprob(self, token: int, logits: torch.Tensor) -> None:
        """Note the sampled token's logprob and the requested number of alternatives."""
        logprob, top = token_logprobs(logits, token, self.params.logprobs or 0)
        decode = self.tokenizer.decode
        alternatives = tuple((decode([t]), value) for t, value in top)
        self._unsent_logprobs.append(TokenLogprob(decode([token]), logprob, alternatives))

    def _at_length_limit(self) -> bool:
        total = len(self.prompt_ids) + len(self.output_ids)
        return len(self.output_ids) >= self.params.max_tokens or total >= self.max_model_len


@dataclass(frozen=True)
class Keep:
    """`choose` keeps candidate `index`: the engine commits it and projects its next logits."""

    index: int


@dataclass(frozen=True)
class EvaluateMore:
    """`choose` keeps no candidate yet: the sequence proposes again (more candidates) at the
    same position next step, and the engine commits nothing for it this step."""


@dataclass(frozen=True)
class Rollback:
    """`advance` rolls the slot back to the prompt and the first `output_tokens` output tokens
    (the engine moves the slot's length; the cache beyond it is overwritten later)."""

    output_tokens: int


class TreeSequence(Sequence, abc.ABC):
    """The engine's extension point: a sequence that picks its own tokens among candidates
    evaluated side by side (Token-Guard's `GuardedSequence` is one).

    `LLMEngine.step()` drives it through these hooks instead of the batched draw, and keeps
    an exception in any of them to this sequence alone (it fails; the batch goes on):

    - `on_prefill(logits, prompt_state)`: once, after the prompt is in the cache (see
      `Sequence.on_prefill`; set `uses_prompt_state` to get the prompt state).
    - `propose() -> list[int] | None`: the candidate tokens (at most the runner's
      `max_candidates`) to evaluate side by side at the next position; None once finished.
    - `choose(hidden, probe) -> Keep | EvaluateMore`: given the candidates' penultimate-layer
      states [M', d] (M' <= M: a prefix of the proposal) and, when the runner has a probe
      layer, that layer's states [M', d], keep one, or evaluate more next step.
    - `shortlist_wanted() -> (size, temperature) | None`: whether `advance` also wants the
      top tokens of its logits with their probabilities, computed for all such rows at once.
    - `advance(logits, shortlist) -> Rollback | None`: the kept candidate's next-token logits
      [V] (and their shortlist, if wanted); a `Rollback` moves the slot's length back.

    A tree sequence releases its own text (`_unsent`, `output_ids`) and calls `finish`.
    """

    @abc.abstractmethod
    def propose(self) -> list[int] | None:
        """Candidates to evaluate at the next position, or None once finished."""

    @abc.abstractmethod
    def choose(self, hidden: torch.Tensor, probe: torch.Tensor | None) -> Keep | EvaluateMore:
        """Keep one evaluated candidate, or ask for more."""

    def shortlist_wanted(self) -> tuple[int, float] | None:
        """Size and temperature of the shortlist `advance` wants (None: none)."""
        return None

    @abc.abstractmethod
    def advance(self, logits: torch.Tensor, shortlist: Shortlist | None) -> Rollback | None:
        """Receive the kept candidate's next-token logits; roll the slot back, or not."""
