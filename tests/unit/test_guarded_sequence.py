"""Token-Guard's state machine on the batched tree step of a tiny random model."""

from __future__ import annotations

from dataclasses import replace
from typing import cast

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from engine.detokenizer import IncrementalDetokenizer
from engine.llm_engine import LLMEngine
from engine.model_runner import ModelRunner, TreeOutput
from engine.outputs import SequenceOutput
from engine.sampling import SamplingParams, Shortlist
from engine.sequence import Sequence
from guard.config import EvidenceCheck, GuardConfig, GuardRun, SegmentEvidence
from guard.guarded_sequence import (
    GuardedSequence,
    RiskScorer,
    TokenRecord,
    marker_joint,
)

PROMPT = [5, 9, 14, 3, 22, 40]
EOS = frozenset({0})


def make_engine(model: LlamaForCausalLM, slots: int = 4) -> LLMEngine:
    runner = ModelRunner(model, num_slots=slots, max_model_len=256, max_candidates=8)
    return LLMEngine(runner)


def guarded(
    engine: LLMEngine,
    tokenizer: PreTrainedTokenizerFast,
    request_id: str,
    max_tokens: int = 24,
    hold: bool = True,
    evidence: EvidenceCheck | None = None,
    risk: RiskScorer | None = None,
    **overrides: object,
) -> GuardedSequence:
    # A random tiny model scores every token low: tau_token 0 keeps Eq. 7's pruning out of the
    # way of the mechanics tested here (tests that want it set it).
    settings = {"enabled": True, "max_segment_tokens": 6, "tau_token": 0.0, **overrides}
    config = GuardConfig.model_validate(settings)
    return GuardedSequence(
        request_id,
        PROMPT,
        SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
        tokenizer,
        EOS,
        engine.runner.max_model_len,
        GuardRun(config, stream=not hold, evidence=evidence),
        engine.runner.embed,
        risk=risk,
    )


def run(engine: LLMEngine, seqs: list[Sequence]) -> dict[str, list[SequenceOutput]]:
    for seq in seqs:
        engine.add(seq)
    outputs: dict[str, list[SequenceOutput]] = {s.request_id: [] for s in seqs}
    for _ in range(2000):
        if not engine.has_work():
            break
        result = engine.step()
        assert not result.failed
        for request_id, output in result.outputs.items():
            outputs[request_id].append(output)
    assert not engine.has_work()
    return outputs


def text_of(outputs: list[SequenceOutput]) -> str:
    return "".join(o.text for o in outputs)


def test_guarded_answer_has_a_report_of_accepted_segments(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    engine = make_engine(tiny_llama)
    seq = guarded(engine, tiny_tokenizer, "a", tau_low=0.0, tau_high=0.0, tau_global=0.0)
    outputs = run(engine, [seq])["a"]
    report = outputs[-1].report
    assert report is not None and report.outcome == "answered"
    assert report.segments and all(s.status == "accepted" for s in report.segments)
    assert text_of(outputs) == tiny_tokenizer.decode(seq.output_ids)
    assert "".join(s.text for s in report.segments).replace(" ", "") == text_of(outputs).replace(
        " ", ""
    )
    assert outputs[-1].completion_tokens == seq.decoded_tokens == 24


def test_refinement_rolls_back_and_ends_in_discard_after_n_max(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    engine = make_engine(tiny_llama)
    seq = guarded(
        engine, tiny_tokenizer, "r", tau_low=0.0, tau_high=1.0, n_max=2, on_failure="truncate"
    )
    outputs = run(engine, [seq])["r"]
    report = outputs[-1].report
    assert report is not None
    assert report.outcome == "truncated" and report.reason == "segment_discarded"
    assert report.segments[-1].status == "discarded" and report.segments[-1].refinements == 2
    assert text_of(outputs) == "Unsure from here"
    assert report.timings.refinement_s > 0
    assert engine.runner.cache.lengths == [0, 0, 0, 0]


def test_global_failure_refuses_without_redecoding_an_unchangeable_chain(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    engine = make_engine(tiny_llama)
    seq = guarded(
        engine, tiny_tokenizer, "g", tau_low=0.0, tau_high=0.0, tau_global=1.0, delta_tau=0.0
    )
    outputs = run(engine, [seq])["g"]
    report = outputs[-1].report
    assert report is not None and report.outcome == "refused"
    assert report.reason == "global_check_failed" and seq.iterations == 0
    assert text_of(outputs) == "I cannot answer that reliably."


def test_global_failure_redecodes_under_stricter_thresholds(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    engine = make_engine(tiny_llama)
    seq = guarded(
        engine,
        tiny_tokenizer,
        "r",
        max_tokens=5,
        tau_low=0.0,
        tau_high=0.0,
        tau_global=1.0,
        delta_tau=1.0,
        m_max=1,
    )
    outputs = run(engine, [seq])["r"]
    report = outputs[-1].report
    assert seq.iterations == 1 and seq.tau_high == 1.0
    assert report is not None and report.outcome == "refused"
    assert all(s.status == "discarded" for s in report.segments)
    assert engine.runner.cache.lengths == [0, 0, 0, 0]


def test_slot_holds_exactly_the_kept_tokens_through_refinements(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    engine = make_engine(tiny_llama)
    seq = guarded(engine, tiny_tokenizer, "k", tau_low=0.0, tau_high=0.9, n_max=3)
    engine.add(seq)
    while not seq.finished:
        engine.step()
        if not seq.finished:
            kept = sum(len(s.token_ids) for s in seq.chain) + len(seq._segment.tokens)
            assert engine.runner.length(seq.slot) == len(PROMPT) + kept


def test_guarded_batched_with_others_equals_guarded_alone(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    alone = run(make_engine(tiny_llama), [guarded(make_engine(tiny_llama), tiny_tokenizer, "x")])
    engine = make_engine(tiny_llama)
    plain = Sequence(
        "p",
        [7, 8, 9],
        SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True),
        tiny_tokenizer,
        EOS,
        engine.runner.max_model_len,
    )
    other = guarded(engine, tiny_tokenizer, "y", num_candidates=2)
    together = run(engine, [plain, guarded(engine, tiny_tokenizer, "x"), other])
    assert text_of(together["x"]) == text_of(alone["x"])
    batched, single = together["x"][-1].report, alone["x"][-1].report
    assert batched is not None and single is not None
    assert [(s.text, s.status) for s in batched.segments] == [
        (s.text, s.status) for s in single.segments
    ]
    assert [s.total for s in batched.segments] == pytest.approx(
        [s.total for s in single.segments], abs=1e-4
    )


def test_guarded_chains_of_one_prompt_prefill_it_once_and_refine_as_if_alone(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    settings = {"tau_low": 0.0, "tau_high": 0.9, "n_max": 2}
    alone = [
        run(
            make_engine(tiny_llama),
            [
                guarded(
                    make_engine(tiny_llama),
                    tiny_tokenizer,
                    f"c{i}",
                    num_candidates=2 + i,
                    **settings,
                )
            ],
        )[f"c{i}"]
        for i in range(3)
    ]
    engine = make_engine(tiny_llama)
    chains = [
        guarded(engine, tiny_tokenizer, f"c{i}", num_candidates=2 + i, **settings) for i in range(3)
    ]
    for seq in chains:
        engine.add(seq)
    prefilled = shared = 0
    outputs: dict[str, list[SequenceOutput]] = {s.request_id: [] for s in chains}
    while engine.has_work():
        result = engine.step()
        assert not result.failed
        prefilled, shared = prefilled + result.prefilled, shared + result.shared
        for request_id, output in result.outputs.items():
            outputs[request_id].append(output)
    assert (prefilled, shared) == (len(PROMPT), 2 * len(PROMPT))
    for i, single in enumerate(alone):
        assert text_of(outputs[f"c{i}"]) == text_of(single)
        report, reference = outputs[f"c{i}"][-1].report, single[-1].report
        assert report is not None and reference is not None
        assert [(s.text, s.status, s.refinements) for s in report.segments] == [
            (s.text, s.status, s.refinements) for s in reference.segments
        ]
    assert engine.runner.cache.lengths == [0, 0, 0, 0]


def test_guard_state_is_bounded_by_the_segment(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    engine = make_engine(tiny_llama)
    seq = guarded(
        engine, tiny_tokenizer, "m", max_tokens=120, tau_low=0.0, tau_high=0.0, tau_global=0.0
    )
    run(engine, [seq])
    hidden = tiny_llama.config.hidden_size
    vector = hidden * 4
    segments = len(seq.chain)
    assert seq.peak_buffer_bytes <= (seq.config.max_segment_tokens + 2 * segments) * vector
    assert len(seq.chain) >= 120 // seq.config.max_segment_tokens
    assert all(s.representation.shape == (hidden,) for s in seq.chain)


def test_streaming_releases_segments_before_the_end(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    engine = make_engine(tiny_llama)
    seq = guarded(
        engine, tiny_tokenizer, "s", hold=False, tau_low=0.0, tau_high=0.0, tau_global=0.0
    )
    outputs = run(engine, [seq])["s"]
    early = [o for o in outputs if o.finish_reason is None and o.text]
    assert len(early) >= 2


@pytest.mark.parametrize("candidates", [1, 3])
def test_chosen_token_is_the_best_scoring_candidate(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, candidates: int
) -> None:
    engine = make_engine(tiny_llama)
    seq = guarded(engine, tiny_tokenizer, "c", num_candidates=candidates, max_tokens=4)
    engine.add(seq)
    engine.step()
    if not seq._segment.tokens:  # the most likely candidate could be outscored: all M next
        engine.step()
    record = seq._segment.tokens[0]
    assert record.token in record.options.ids[:candidates]
    assert torch.isfinite(torch.tensor(record.score))


def count_candidate_rows(runner: ModelRunner, rows: dict[str, int], name: str) -> None:
    """Add the candidate rows of each of `runner`'s tree steps to `rows[name]`."""
    tree_step = runner.tree_step

    def counting(slots: list[int], candidates: list[list[int]]) -> TreeOutput:
        rows[name] = rows.get(name, 0) + sum(len(c) for c in candidates)
        return tree_step(slots, candidates)

    runner.tree_step = counting  # type: ignore[method-assign]


class EveryCandidate(GuardedSequence):
    """The eager reading of Eq. 5-7: every step evaluates all M candidates."""

    def propose(self) -> list[int] | None:
        return None if super().propose() is None else self._proposed[0]


@pytest.mark.parametrize(
    "settings",
    [{"lam": 0.0}, {"lam": 0.6}, {"lam": 0.6, "score_temperature": 2.0}, {"lam": 1.0}],
)
@pytest.mark.parametrize("with_probe", [False, True])
def test_evaluating_the_likeliest_candidate_first_keeps_eager_choices(
    tiny_llama: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    settings: dict[str, float],
    with_probe: bool,
) -> None:
    loose = {"tau_token": 0.0, "tau_low": 0.0, "tau_high": 0.0, "tau_global": 0.0}
    risk = cast(RiskScorer, lambda states: torch.sigmoid(states[:, 0] * 50)) if with_probe else None
    rows: dict[str, int] = {}
    chosen: dict[str, list[int]] = {}
    for name, kind in (("lazy", GuardedSequence), ("eager", EveryCandidate)):
        engine = make_engine(tiny_llama)
        if with_probe:
            engine.runner.probe_layer = 1
        count_candidate_rows(engine.runner, rows, name)
        config = GuardConfig.model_validate({"enabled": True, **loose, **settings})
        seq = kind(
            name,
            PROMPT,
            SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True),
            tiny_tokenizer,
            EOS,
            256,
            GuardRun(config),
            engine.runner.embed,
            risk=risk,
        )
        run(engine, [seq])
        chosen[name] = seq.output_ids
    assert chosen["lazy"] == chosen["eager"]
    assert len(chosen["lazy"]) == 16
    assert rows["eager"] == 16 * 4
    if settings["lam"] == 0.0:  # F_tok is P(a) alone: the likeliest candidate always wins
        assert rows["lazy"] == 16
    assert rows["lazy"] <= 16 * 5  # at worst one row, then all four again, a token


def test_stop_string_ends_guarded_decoding(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    loose = dict(tau_low=0.0, tau_high=0.0, tau_global=0.0)
    free = guarded(make_engine(tiny_llama), tiny_tokenizer, "free", max_tokens=30, **loose)
    full = text_of(run(make_engine(tiny_llama), [free])["free"])
    words = full.split()
    stop = words[len(words) // 2]
    engine = make_engine(tiny_llama)
    seq = guarded(engine, tiny_tokenizer, "stop", max_tokens=30, on_failure="truncate", **loose)
    seq.params = replace(seq.params, stop=(stop,))
    seq.detokenizer = IncrementalDetokenizer(tiny_tokenizer, (stop,))
    text = text_of(run(engine, [seq])["stop"])
    kept = full[: full.index(stop)]
    assert text == kept + marker_joint(kept) + "Unsure from here"
    assert seq.decoded_tokens < free.decoded_tokens


class UnsupportedWord:
    """A deterministic verifier double: a claim is unsupported where `word` appears."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.seen: list[str] = []

    def __call__(self, text: str) -> SegmentEvidence:
        self.seen.append(text)
        at = f" {text} ".find(f" {self.word} ")
        return SegmentEvidence(1.0) if at < 0 else SegmentEvidence(0.5, at)


def test_unsupported_claim_is_rolled_back_to_its_token_and_redecoded(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    plain_engine = make_engine(tiny_llama)
    loose = {"tau_low": 0.0, "tau_high": 0.0, "tau_global": 0.0}
    unguarded = guarded(plain_engine, tiny_tokenizer, "p", **loose)
    first_text = text_of(run(plain_engine, [unguarded])["p"]).split()
    word, position = first_text[2], 2  # the third token of the first segment is "wrong"
    check = UnsupportedWord(word)
    engine = make_engine(tiny_llama)
    seq = guarded(engine, tiny_tokenizer, "c", evidence=check, **loose)
    outputs = run(engine, [seq])["c"]
    report = outputs[-1].report
    assert report is not None and report.claim_rollbacks >= 1
    # Re-decoded from the flagged token: the prefix before it stays, the token there changes.
    redecoded = check.seen[1].split()
    assert redecoded[:position] == first_text[:position]
    assert redecoded[position] != word
    assert engine.runner.cache.lengths == [0, 0, 0, 0]


def test_claim_still_unsupported_after_n_max_is_discarded(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    engine = make_engine(tiny_llama)

    def always_wrong(text: str) -> SegmentEvidence:
        return SegmentEvidence(0.0, 0)

    seq = guarded(
        engine, tiny_tokenizer, "d", evidence=always_wrong, n_max=2, tau_low=0.0, tau_high=0.0
    )
    outputs = run(engine, [seq])["d"]
    report = outputs[-1].report
    assert report is not None and report.outcome == "refused"
    assert report.claim_rollbacks == 2 and report.segments[0].status == "discarded"


def test_probe_risk_replaces_the_cosine_in_the_token_score(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    engine = LLMEngine(
        ModelRunner(tiny_llama, num_slots=2, max_model_len=256, max_candidates=8, probe_layer=1)
    )
    seen: list[torch.Tensor] = []

    def risk(states: torch.Tensor) -> torch.Tensor:
        seen.append(states)
        return torch.full((states.shape[0],), 0.25)

    seq = guarded(engine, tiny_tokenizer, "q", risk=risk, tau_low=0.0, tau_high=0.0, tau_global=0)
    outputs = run(engine, [seq])["q"]
    report = outputs[-1].report
    assert report is not None and report.global_check is not None
    hidden = tiny_llama.config.hidden_size
    assert seen and all(s.shape in ((1, hidden), (4, hidden)) for s in seen)
    assert report.global_check.probe_risk == pytest.approx(0.25)
    assert report.global_check.f_fact == pytest.approx(0.75)
    assert all(s.probe_risk == pytest.approx(0.25) for s in report.segments)


def test_the_answer_risk_is_the_last_tokens_risk(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    """The probe is fitted on each answer's last state: F_fact reads that state's risk."""
    engine = LLMEngine(
        ModelRunner(tiny_llama, num_slots=2, max_model_len=256, max_candidates=8, probe_layer=1)
    )
    calls: list[int] = []

    def risk(states: torch.Tensor) -> torch.Tensor:
        calls.append(len(calls) + 1)
        return torch.full((states.shape[0],), calls[-1] / 100)

    loose = {"tau_low": 0.0, "tau_high": 0.0, "tau_global": 0.0, "lam": 0.0}
    seq = guarded(engine, tiny_tokenizer, "r", risk=risk, **loose)
    report = run(engine, [seq])["r"][-1].report
    assert report is not None and report.global_check is not None
    assert len(calls) == 24  # one tree step per token (lam 0: the likeliest wins), no refining
    assert report.global_check.probe_risk == pytest.approx(0.24)
    assert report.global_check.f_fact == pytest.approx(0.76)
    assert report.segments[0].probe_risk == pytest.approx(sum(calls[:6]) / 6 / 100)


def test_tau_token_prunes_weak_tokens_from_accepted_segments(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    engine = make_engine(tiny_llama)
    seq = guarded(engine, tiny_tokenizer, "t", tau_token=1.0, tau_low=0.0, tau_high=0.0, n_max=1)
    outputs = run(engine, [seq])["t"]
    report = outputs[-1].report
    assert report is not None and report.outcome == "refused"
    assert report.segments[0].status == "discarded" and report.segments[0].refinements == 1


@pytest.mark.parametrize(
    ("text", "joint"),
    [("", ""), ("Jane", "... "), ("It is Jane.", " "), ("Why?", " "), ("Jane ", ""), ("a\n", "")],
)
def test_truncation_marker_reads_as_its_own_sentence(text: str, joint: str) -> None:
    assert marker_joint(text) == joint


def test_truncated_answer_ends_its_sentence_before_the_marker(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    loose = dict(tau_low=0.0, tau_high=0.0, m_max=0)
    engine = make_engine(tiny_llama)
    seq = guarded(engine, tiny_tokenizer, "t", tau_global=1.0, on_failure="truncate", **loose)
    outputs = run(engine, [seq])["t"]
    report = outputs[-1].report
    assert report is not None and report.outcome == "truncated"
    text = text_of(outputs)
    before, marker = text[: -len("Unsure from here")], text[-len("Unsure from here") :]
    assert marker == "Unsure from here"
    assert before.rstrip().endswith((".", "!", "?")), text
    assert before.endswith((" ", "\n")), text


PIECES = {3: " Jane", 4: " Park", 5: ",", 6: " CEO", 7: ".", 8: " 12", 9: " 4"}


class PieceTokenizer:
    """Decodes ids to fixed text pieces: enough for segment boundaries."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(PIECES[i] for i in ids)


@pytest.mark.parametrize(
    ("boundary", "tokens", "closes"),
    [
        ("sentence", [3, 4, 5], False),
        ("clause", [3, 4, 5], True),
        ("clause", [3, 4, 7], True),
        ("clause", [3, 8, 5], False),  # "12," inside a number does not close a clause
        ("sentence", [3, 6, 7], True),
        ("line", [3, 6, 7], False),
    ],
)
def test_segment_boundaries(
    tiny_llama: LlamaForCausalLM, boundary: str, tokens: list[int], closes: bool
) -> None:
    engine = make_engine(tiny_llama)
    seq = guarded(engine, PieceTokenizer(), "b", segment_boundary=boundary)  # type: ignore[arg-type]
    seq._segment.tokens = [
        TokenRecord(t, torch.zeros(1), 1.0, Shortlist([], torch.empty(0))) for t in tokens
    ]
    assert seq._at_boundary(tokens[-1]) is closes
