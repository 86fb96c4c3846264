"""One request's decoding state in the torch engine, and the hooks every sequence type offers."""

from __future__ import annotations

import enum
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from engine.detokenizer import IncrementalDetokenizer
from engine.outputs import FinishReason, SequenceOutput, TokenLogprob
from engine.sampling import SamplingParams, Shortlist, sample_batch, token_logprobs

# What `choose` returns to keep none of the candidates yet: the sequence proposes again (more
# candidates) at the same position next step, and the engine commits nothing for it this step.
EVALUATE_MORE = -1


class Status(enum.Enum):
    """Where a sequence is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """A plain request: samples one token per step and feeds it as a single candidate.

    It is also the engine's extension point. `LLMEngine.step()` drives every sequence through
    the same hooks, and a richer sequence type (the guard's) overrides them:

    - `on_prefill(logits, prompt_state)`: once, after the prompt is in the cache.
    - `draws_in_batch`: whether the engine's batched sampler draws this sequence's next token
      (true for sequences that keep the plain `propose`); it then calls `take_draw(token)`.
    - `propose() -> list[int] | None`: the candidate tokens (at most the runner's
      `max_candidates`) to evaluate side by side at the next position; None once finished.
    - `choose(hidden, probe) -> int`: which candidate to keep, given their penultimate-layer
      states [M, d] and, when the runner has a probe layer, that layer's states [M, d]; or
      `EVALUATE_MORE`: keep none, propose again (more candidates) at the same position.
    - `shortlist_wanted() -> (size, temperature) | None`: whether `advance` also wants the
      top tokens of its logits with their probabilities, computed by the engine for all such
      rows at once.
    - `advance(logits, shortlist) -> int`: the kept candidate's next-token logits [V] (and
      their shortlist, if wanted); returns -1, or how many output tokens the slot keeps (the
      engine rolls the cache back to that length).
    - `take_output() -> SequenceOutput | None`: what to send the client since the last call.
    - `buffer_bytes()`: bytes of hidden states held, for the memory gauge.
    """

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
        self.status = Status.WAITING
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
        self._next_logits = torch.empty(0)
        self._drawn: int | None = None
        self._unsent = ""
        self._unsent_logprobs: list[TokenLogprob] = []

    @property
    def finished(self) -> bool:
        """Whether generation has ended."""
        return self.status is Status.FINISHED

    def on_prefill(self, logits: torch.Tensor, prompt_state: torch.Tensor) -> None:
        """Receive the next-token logits after the prompt and the prompt's mean hidden state."""
        self._next_logits = logits
        self.status = Status.RUNNING

    @property
    def draws_in_batch(self) -> bool:
        """Whether the engine samples this sequence's next token in its batched draw."""
        return type(self).propose is Sequence.propose and not self.finished

    @property
    def next_logits(self) -> torch.Tensor:
        """Next-token logits [V] the next draw is taken from."""
        return self._next_logits

    def take_draw(self, token: int) -> None:
        """Receive the next token, drawn by the engine from `next_logits` with this sequence's
        params and generator."""
        self._drawn = token

    def propose(self) -> list[int] | None:
        """Candidates for the next forward (the drawn token), or None once finished."""
        if self.finished:
            return None
        token = self._drawn
        if token is None:
            token = sample_batch(self._next_logits[None], [self.params], [self.generator])[0]
        self._drawn = None
        if self.params.logprobs is not None and token not in self.eos_token_ids:
            self._record_logprob(token)
        self._accept(token)
        return None if self.finished else [token]

    def choose(self, hidden: torch.Tensor, probe: torch.Tensor | None = None) -> int:
        """Pick one of the proposed candidates given their penultimate (and probe) states."""
        return 0

    def shortlist_wanted(self) -> tuple[int, float] | None:
        """Size and temperature of the shortlist `advance` wants (None: plain decoding)."""
        return None

    def advance(self, logits: torch.Tensor, shortlist: Shortlist | None = None) -> int:
        """Receive the chosen candidate's next-token logits [V] (and the shortlist, if wanted).

        Returns -1, or the number of output tokens the slot keeps (a rollback).
        """
        self._next_logits = logits
        return -1

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

    def _record_logprob(self, token: int) -> None:
        """Note the sampled token's logprob and the requested number of alternatives."""
        logprob, top = token_logprobs(self._next_logits, token, self.params.logprobs or 0)
        decode = self.tokenizer.decode
        alternatives = tuple((decode([t]), value) for t, value in top)
        self._unsent_logprobs.append(TokenLogprob(decode([token]), logprob, alternatives))

    def finish(self, reason: FinishReason) -> None:
        """End generation, releasing any held-back text."""
        self._unsent += self.detokenizer.flush()
        self.finish_reason = reason
        self.status = Status.FINISHED

    def _accept(self, token: int) -> None:
        """Append a token to the output and end the sequence where a stop condition holds.

        Every sampled token counts as generated, an end-of-sequence token included (as in vLLM).
        """
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

    def _at_length_limit(self) -> bool:
        total = len(self.prompt_ids) + len(self.output_ids)
        return len(self.output_ids) >= self.params.max_tokens or total >= self.max_model_len
