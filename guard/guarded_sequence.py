"""A guarded request: Token-Guard's token phase, segment scoring, refinement and global check."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from transformers import PreTrainedTokenizerBase

from engine.outputs import SequenceOutput
from engine.sampling import SamplingParams, Shortlist
from engine.sequence import EvaluateMore, Keep, Rollback, TreeSequence
from guard import scoring
from guard.config import GuardRun, SegmentEvidence
from guard.report import GlobalReport, GuardReport, SegmentReport

Embedder = Callable[[list[int]], torch.Tensor]
RiskScorer = Callable[[torch.Tensor], torch.Tensor]
SENTENCE_ENDS = (".", "!", "?")
CLAUSE_ENDS = (*SENTENCE_ENDS, ",", ";", ":")


@dataclass
class TokenRecord:
    """One token of the open segment: what is needed to score it and to regenerate from it."""

    token: int
    hidden: torch.Tensor
    score: float
    options: Shortlist
    risk: float | None = None


@dataclass
class ClosedSegment:
    """A scored segment kept in the chain: compact vectors only (Eq. 14-16 need no more)."""

    token_ids: list[int]
    report: SegmentReport
    representation: torch.Tensor
    score_norm: float
    mean_embedding: torch.Tensor
    last_risk: float | None = None


@dataclass
class _OpenSegment:
    tokens: list[TokenRecord] = field(default_factory=list)
    banned: dict[int, set[int]] = field(default_factory=dict)
    refinements: int = 0
    mean: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    count: int = 0


def marker_joint(text: str) -> str:
    """What goes between a truncated answer and its marker, so the marker reads on its own.

    Nothing after whitespace (or before an empty answer), a space after a finished sentence,
    else an ellipsis closing the cut-off sentence first.
    """
    if not text or text[-1].isspace():
        return ""
    return " " if text.endswith(SENTENCE_ENDS) else "... "


class GuardedSequence(TreeSequence):
    """Token-Guard decoding of one chain on the batched tree step.

    Each step proposes the top-M candidates of the current position; the tree step returns
    their hidden states and next-token logits; the best-scoring candidate is kept (Eq. 5-7).
    Only the most likely candidate is evaluated first: the others are evaluated (on the next
    step) only when one of them could still outscore it, so the choice is the same as if all M
    were scored, while most steps cost one row, not M.
    A segment closes at a boundary and is scored (Eq. 8-12): accepted segments join the chain,
    weak ones are regenerated from the window around their weakest token (Eq. 13) by rolling
    the slot back, failing ones end the chain. At the end the chain is checked (Eq. 14-18).
    Text leaves the sequence only once its segment is accepted; unless the run streams, it
    waits for the global check, which then may re-decode the chain with adjusted thresholds.

    `run` holds the request's settings; `embed` and `risk` are the model's: its input
    embeddings (F_logic) and, when it has one, its hallucination probe (used unless the
    settings say `token_score: "paper"`).
    """

    uses_prompt_state = True  # h_x of Eq. 4

    def __init__(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        tokenizer: PreTrainedTokenizerBase,
        eos_token_ids: frozenset[int],
        max_model_len: int,
        run: GuardRun,
        embed: Embedder,
        risk: RiskScorer | None = None,
    ) -> None:
        super().__init__(request_id, prompt_ids, params, tokenizer, eos_token_ids, max_model_len)
        config = run.config
        self.config = config
        self.embed = embed
        self.evidence = run.evidence
        # The probe's P(unsupported) of a candidate state replaces cos(h, h-bar) in F_tok.
        self.risk = risk if config.token_score != "paper" else None
        self.hold_until_checked = not run.stream
        self.explore = run.explore and config.sampling_temperature > 0
        self.tau_low = config.tau_low
        self.tau_high = config.tau_high
        self.report = GuardReport(mode="guard")
        self.chain: list[ClosedSegment] = []
        self.iterations = 0
        self.decoded_tokens = 0
        self.peak_buffer_bytes = 0
        self._segment = _OpenSegment()
        self._h_x = torch.empty(0)
        self._chain_mean: tuple[torch.Tensor, int] = (self._h_x, 1)
        self._first_options = Shortlist([], torch.empty(0))
        self._next = self._first_options
        self._proposed: tuple[list[int], torch.Tensor] = ([], torch.empty(0))
        self._evaluate_all = self.explore
        self._ended = False
        self._step_started = 0.0

    # -- engine interface -------------------------------------------------------------------

    def on_prefill(self, logits: torch.Tensor, prompt_state: torch.Tensor | None) -> None:
        """Anchor h_x = mean prompt state (Eq. 4) and the first position's candidates."""
        assert prompt_state is not None  # uses_prompt_state
        self._h_x = prompt_state.float().cpu()  # the guard's arithmetic runs on the CPU
        self._chain_mean = (self._h_x, 1)
        self._first_options = self._next = self._shortlist(logits)
        self._open_segment()

    def propose(self) -> list[int] | None:
        """Top-M candidates at the next position, minus tokens banned there by refinement:
        the most likely one alone first, all M when it could be outscored (see `choose`)."""
        if self.finished:
            return None
        banned = self._segment.banned.get(len(self._segment.tokens), set())
        self._proposed = self._next.without(banned, self.config.num_candidates)
        self._step_started = time.perf_counter()
        tokens = self._proposed[0]
        return tokens if self._evaluate_all else tokens[:1]

    def choose(
        self, hidden: torch.Tensor, probe: torch.Tensor | None = None
    ) -> Keep | EvaluateMore:
        """Score the candidates from their states (Eq. 5-6) and keep the best one (Eq. 7).

        Given fewer states than candidates, evaluates more when an unscored candidate could
        beat the scored ones (`scoring.unscored_bound`).
        """
        tokens, probs = self._proposed
        segment = self._segment
        hidden = hidden.cpu()  # the guard's arithmetic runs on the CPU, wherever the model is
        scored = probs[: len(hidden)]
        risks = None if self.risk is None or probe is None else self.risk(probe)
        if risks is None:
            f = scoring.token_scores(hidden.float(), segment.mean, scored, self.config.lam)
        else:
            f = scoring.probe_token_scores(risks.cpu(), scored, self.config.lam)
        unscored = probs[len(hidden) :]
        if float(f.max()) < scoring.unscored_bound(unscored, self.config.lam):
            self._evaluate_all = True
            return EvaluateMore()
        self._evaluate_all = self.explore
        chosen, passed = scoring.select_candidate(f, self.config.tau_token)
        if self.explore:
            chosen = self._sample_choice(f, probs)
        self.report.low_confidence_tokens += 0 if passed else 1
        self.decoded_tokens += 1
        state = hidden[chosen].float()
        segment.mean = scoring.update_running_mean(segment.mean, segment.count, state)
        segment.count += 1
        self._ended = tokens[chosen] in self.eos_token_ids and not self.params.ignore_eos
        if not self._ended:
            risk = None if risks is None else float(risks[chosen])
            record = TokenRecord(tokens[chosen], state, float(f[chosen]), self._next, risk)
            segment.tokens.append(record)
        self._track_buffer()
        return Keep(chosen)

    def shortlist_wanted(self) -> tuple[int, float]:
        """Size and temperature of the next position's candidate shortlist (Eq. 5's P)."""
        return self.config.num_candidates + self.config.n_max + 1, self.config.score_temperature

    def advance(self, logits: torch.Tensor, shortlist: Shortlist | None = None) -> Rollback | None:
        """Take the chosen token's next-token logits (or their shortlist, when the engine
        computed it); close the segment at a boundary, which may roll the slot back
        (refinement, re-decode)."""
        self._next = shortlist if shortlist is not None else self._shortlist(logits)
        self.report.timings.token_s += time.perf_counter() - self._step_started
        last = self._segment.tokens[-1].token if self._segment.tokens else None
        final = self._ended or self._out_of_room() or self._hit_stop_string()
        if final or (last is not None and self._at_boundary(last)):
            return self._close_segment(final=final)
        return None

    def take_output(self) -> SequenceOutput[GuardReport] | None:
        """Released text; the final output carries the report and counts every decoded token."""
        output = super().take_output()
        if output is not None and output.finish_reason is not None:
            return replace(output, report=self.report, completion_tokens=self.decoded_tokens)
        return output

    # -- segments ---------------------------------------------------------------------------

    def _close_segment(self, final: bool) -> Rollback | None:
        """Stage 2 on the open segment; a rollback when it refines or the chain re-decodes."""
        started = time.perf_counter()
        segment = self._segment
        if not segment.tokens:
            return self._end_chain()
        f = torch.tensor([t.score for t in segment.tokens])
        states = torch.stack([t.hidden for t in segment.tokens])
        score = scoring.score_segment(
            f, states, self._h_x, self.config.alpha, self.config.beta, self.config.gamma
        )
        ids = [t.token for t in segment.tokens]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        evidence = self.evidence(text) if self.evidence is not None else SegmentEvidence(1.0)
        decision = scoring.segment_decision(score.total, self.tau_low, self.tau_high)
        if decision == "accept" and float(f.min()) < self.config.tau_token:
            decision = "refine"  # Eq. 7: a token below tau_token is pruned, not kept
        unsupported = evidence.first_unsupported if self.config.claim_rollback else None
        self.report.timings.segment_s += time.perf_counter() - started
        can_retry = segment.refinements < self.config.n_max
        if unsupported is not None:
            if can_retry:
                self.report.claim_rollbacks += 1
                at = self._token_at(ids, unsupported)
                return self._regenerate(start=at, ban_at=at)
            decision = "discard"
        elif decision == "refine" and can_retry:
            low = int(f.argmin())
            return self._regenerate(start=scoring.refinement_window(f)[0], ban_at=low)
        status = (
            "discarded"
            if decision != "accept"
            else ("refined" if segment.refinements else "accepted")
        )
        risks = [t.risk for t in segment.tokens if t.risk is not None]
        closed = ClosedSegment(
            token_ids=ids,
            report=SegmentReport(
                text=text,
                token_score=score.token_score,
                consistency=score.consistency,
                alignment=score.alignment,
                evidence=evidence.share,
                probe_risk=sum(risks) / len(risks) if risks else None,
                total=score.total,
                status=status,
                refinements=segment.refinements,
            ),
            representation=score.representation,
            score_norm=score.score_norm,
            mean_embedding=self.embed(ids).mean(0).cpu(),
            last_risk=segment.tokens[-1].risk,
        )
        self.report.segments.append(closed.report)
        if status == "discarded":
            if self.chain and self.config.on_failure == "refuse":
                # Algorithm 1: the discarded segment is dropped; the accepted ones answer.
                return self._end_chain()
            self._fail("segment_discarded")
            return None
        self.chain.append(closed)
        self._chain_mean = (segment.mean, segment.count)
        if not self.hold_until_checked:
            self._release_text(ids)
        if final:
            return self._end_chain()
        self._open_segment()
        return None

    def _regenerate(self, start: int, ban_at: int) -> Rollback:
        """Ban the token at `ban_at` there and re-decode the open segment from `start`.

        Eq. 13's refinement (the weakest token, from its window's start) and the claim
        rollback (the unsupported claim's first token, from itself) both come here.
        """
        started = time.perf_counter()
        segment = self._segment
        segment.refinements += 1
        segment.banned.setdefault(ban_at, set()).add(segment.tokens[ban_at].token)
        segment.banned = {pos: ban for pos, ban in segment.banned.items() if pos >= start}
        self._next = segment.tokens[start].options
        del segment.tokens[start:]
        segment.mean, segment.count = self._segment_start_mean()
        for record in segment.tokens:
            segment.mean = scoring.update_running_mean(segment.mean, segment.count, record.hidden)
            segment.count += 1
        self.report.timings.refinement_s += time.perf_counter() - started
        return Rollback(self._chain_tokens() + len(segment.tokens))

    def _token_at(self, ids: list[int], offset: int) -> int:
        """Index of the token whose decoded text covers char `offset` of the segment's text."""
        for index in range(len(ids)):
            if len(self.tokenizer.decode(ids[: index + 1], skip_special_tokens=True)) > offset:
                return index
        return len(ids) - 1

    def _open_segment(self) -> None:
        mean, count = self._segment_start_mean()
        self._segment = _OpenSegment(mean=mean, count=count)

    def _segment_start_mean(self) -> tuple[torch.Tensor, int]:
        """Running mean of h_x and every accepted token's state, as the open segment began."""
        return self._chain_mean

    # -- chain ------------------------------------------------------------------------------

    def _end_chain(self) -> Rollback | None:
        """Stage 3: global check (Eq. 14-18), then answer, abstain, or re-decode (rollback 0)."""
        started = time.perf_counter()
        if not self.chain:
            self._fail("no_accepted_segment")
            return None
        f_fact, f_logic, f_global = self._global_scores()
        check = GlobalReport(
            f_fact=f_fact,
            f_logic=f_logic,
            f_global=f_global,
            probe_risk=self._answer_risk(),
            iterations=self.iterations,
            tau_low=self.tau_low,
            tau_high=self.tau_high,
        )
        self.report.global_check = check
        self.report.timings.global_s += time.perf_counter() - started
        both_low = f_fact < 0.5 and f_logic < 0.5
        if f_global >= self.config.tau_global and not both_low:
            if self.hold_until_checked:
                for segment in self.chain:
                    self._release_text(segment.token_ids)
            self.finish(self._finish_reason())
            return None
        if self.hold_until_checked and self.iterations < self.config.m_max and not both_low:
            thresholds = scoring.adjust_thresholds(
                f_fact, f_logic, self.tau_low, self.tau_high, self.config.delta_tau
            )
            # Stage 2 under the new thresholds changes this chain only where a kept segment
            # now falls short of tau_high; otherwise re-decoding would repeat it exactly.
            if any(s.report.total < thresholds[1] for s in self.chain):
                return self._retry_chain(*thresholds)
        self._fail("global_check_failed" if not both_low else "fact_and_logic_below_half")
        return None

    def _retry_chain(self, tau_low: float, tau_high: float) -> Rollback:
        """Re-decode the chain from the prompt under adjusted segment thresholds (Eq. 18)."""
        self.iterations += 1
        self.tau_low, self.tau_high = tau_low, tau_high
        self.report.segments = []
        self.chain = []
        self._chain_mean = (self._h_x, 1)
        self._next = self._first_options
        self._open_segment()
        return Rollback(0)

    def _answer_risk(self) -> float | None:
        """The probe's risk of the answer: that of its last token's state (None without a probe).

        The last state has read the whole answer; the probe is fitted on it (guardfit.probe_fit).
        The mean of every token's risk separated right from wrong answers far worse (5-fold on
        480 dev answers, layer 20: AUROC 0.57 against 0.66).
        """
        return self.chain[-1].last_risk if self.chain else None

    def _global_scores(self) -> tuple[float, float, float]:
        totals = torch.tensor([s.report.total for s in self.chain])
        norms = torch.tensor([s.score_norm for s in self.chain])
        evidence = torch.tensor([s.report.evidence for s in self.chain])
        risk = self._answer_risk()
        if risk is None:
            f_fact = scoring.fact_score(totals, norms, evidence, self.config.fact_normalize_by_k)
        else:
            f_fact = scoring.probe_fact_score(risk, evidence)
        f_logic = scoring.logic_score(
            torch.stack([s.representation for s in self.chain]),
            torch.stack([s.mean_embedding for s in self.chain]),
        )
        return f_fact, f_logic, scoring.global_score(f_fact, f_logic)

    def _fail(self, reason: str) -> None:
        """Abstain: refuse outright, or keep the accepted prefix and mark where trust ended."""
        report = self.report
        report.reason = reason
        if self.config.on_failure == "truncate":
            if self.hold_until_checked:
                for segment in self.chain:
                    self._release_text(segment.token_ids)
            report.outcome = "truncated"
            self._unsent += self.detokenizer.flush()
            self._unsent += marker_joint(self.detokenizer.text) + self.config.truncation_marker
        else:
            report.outcome = "refused"
            if self.hold_until_checked:
                self.chain = []
            self._unsent += ("\n" if self.detokenizer.text else "") + self.config.refusal_message
        self.finish(self._finish_reason())

    # -- helpers ----------------------------------------------------------------------------

    def _sample_choice(self, f: torch.Tensor, probs: torch.Tensor) -> int:
        """For extra chains: draw among passing candidates at the sampling temperature.

        `probs` are at the score temperature; raising them to T_score / T_sample rescales
        them to the sampling temperature before renormalising.
        """
        passing = f >= self.config.tau_token
        pool = passing if bool(passing.any()) else torch.ones_like(passing)
        ratio = self.config.score_temperature / self.config.sampling_temperature
        weights = probs.pow(ratio) * pool
        return int(torch.multinomial(weights / weights.sum(), 1, generator=self.generator))

    def _release_text(self, ids: list[int]) -> None:
        for token in ids:
            self.output_ids.append(token)
            self._unsent += self.detokenizer.push(token)

    def _finish_reason(self) -> str:
        return "length" if self._out_of_room() else "stop"

    def _shortlist(self, logits: torch.Tensor) -> Shortlist:
        return Shortlist.from_logits(logits, *self.shortlist_wanted())

    def _chain_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.chain)

    def _at_boundary(self, token: int) -> bool:
        """Whether `token` closes the open segment: a length cap, a newline, or the end of a
        sentence (or, with `clause`, of a clause); a point or comma after a digit does not."""
        if len(self._segment.tokens) >= self.config.max_segment_tokens:
            return True
        piece = self.tokenizer.decode([token])
        if "\n" in piece:
            return True
        boundary = self.config.segment_boundary
        ends = CLAUSE_ENDS if boundary == "clause" else SENTENCE_ENDS
        if boundary == "line" or not piece.rstrip().endswith(ends):
            return False
        if piece.strip() in ends and len(self._segment.tokens) >= 2:
            before = self.tokenizer.decode([self._segment.tokens[-2].token])
            return not before[-1:].isdigit()
        return True

    def _hit_stop_string(self) -> bool:
        """Whether the open segment contains a stop string (the release cuts the text there)."""
        if not self.params.stop or not self._segment.tokens:
            return False
        text = self.tokenizer.decode([t.token for t in self._segment.tokens])
        return any(stop in text for stop in self.params.stop)

    def _out_of_room(self) -> bool:
        used = self._chain_tokens() + len(self._segment.tokens)
        total = len(self.prompt_ids) + used
        return used >= self.params.max_tokens or total >= self.max_model_len

    def buffer_bytes(self) -> int:
        """Hidden states held: the open segment's token states and the chain's compact vectors."""
        tensors = [t.hidden for t in self._segment.tokens]
        tensors += [v for s in self.chain for v in (s.representation, s.mean_embedding)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _track_buffer(self) -> None:
        self.peak_buffer_bytes = max(self.peak_buffer_bytes, self.buffer_bytes())
