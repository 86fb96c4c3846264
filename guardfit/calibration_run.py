"""`guardserve guard calibrate`: guarded decoding of dev lines in process, thresholds to budget.

Each candidate setting of the segment thresholds is decoded once with the global check
switched off (tau_global 0), recording every answer's F_global; `tau_global` is then the
threshold on F_global that, within what is left of the abstention budget, keeps the answers
most often containing the gold answer. With several chains per item, every chain is decoded
and each candidate `tau_global` is replayed: the chains passing it, the answer chosen among
them as the server chooses it, abstention when none passes. The best setting overall is saved
beside the probe, with the chain setting.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from engine.llm_engine import LLMEngine
from engine.model_runner import ModelRunner
from engine.sampling import SamplingParams
from groundedqa.halueval import HaluEvalItem, load_dev_lines
from groundedqa.metrics import gold_in_answer
from groundedqa.prompts import grounded_messages, grounded_prompt_ids
from guard.calibration import ChainSetting, GuardCalibration
from guard.chains import pick_chain
from guard.config import GuardConfig, GuardRun, SegmentEvidence
from guard.guarded_sequence import GuardedSequence
from guard.probe import HallucinationProbe
from guard.report import GuardReport
from guardfit.calibration import (
    SettingResult,
    best_threshold,
    calibrate,
    threshold_for_budget,
)
from verify.claims import without_questions
from verify.verifier import Verifier, VerifierConfig

logger = logging.getLogger(__name__)

DEFAULT_GRID: tuple[dict[str, float], ...] = (
    # lam 0: candidates chosen by P(a) alone, the probe judging the answer (F_fact). With the
    # probe in F_tok at the paper's lam 0.6, decoding drifted from the gold answer (measured
    # on lines 5401-5600 and 5801-6000; see the README).
    {"lam": 0.0, "tau_token": 0.0, "tau_low": 0.0, "tau_high": 0.0},
)


@dataclass(frozen=True)
class GuardedAnswer:
    """One dev item decoded under a setting: the answer, its report, gold containment, and
    whether the claim verifier supports the whole answer (None: not checked)."""

    line: int
    text: str
    report: GuardReport
    correct: bool
    supported: bool | None = None

    @property
    def answered(self) -> bool:
        """Whether the guard gave an answer (a truncated one counts)."""
        return self.report.outcome != "refused"

    @property
    def confidence(self) -> float:
        """F_global of the answer (0 when the chain never reached the global check)."""
        check = self.report.global_check
        return 0.0 if check is None else check.f_global


def conversation_context(item: HaluEvalItem) -> str:
    """The text an answer is checked against, as the server builds it from the messages."""
    return "\n".join(m["content"] for m in grounded_messages(item.knowledge, item.question))


def decode_guarded(
    runner: ModelRunner,
    tokenizer: PreTrainedTokenizerBase,
    items: list[HaluEvalItem],
    config: GuardConfig,
    probe: HallucinationProbe | None,
    verifier: Verifier,
    max_tokens: int,
) -> list[list[GuardedAnswer]]:
    """Decode every item's `config.chains` chains on one engine, batched: chain 0 greedily,
    the others sampling among candidates (seeded by line and chain), as the server does."""
    engine = LLMEngine(runner)
    eos = runner.eos_token_ids(tokenizer)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    seqs: dict[str, tuple[HaluEvalItem, GuardedSequence]] = {}
    for item in items:
        context = conversation_context(item)
        prompt = grounded_prompt_ids(tokenizer, item.knowledge, item.question)

        def evidence(text: str, context: str = context) -> SegmentEvidence:
            return SegmentEvidence.of(verifier.verify(text, context))

        for chain in range(config.chains):
            seq = GuardedSequence(
                f"{item.line}/{chain}",
                prompt,
                replace(params, seed=item.line * config.chains + chain),
                tokenizer,
                eos,
                runner.max_model_len,
                GuardRun(
                    config, evidence=evidence if config.use_evidence else None, explore=chain > 0
                ),
                runner.embed,
                risk=None if probe is None else probe.risk,
            )
            seqs[seq.request_id] = (item, seq)
            engine.add(seq)
    texts = {request_id: "" for request_id in seqs}
    reports: dict[str, GuardReport] = {}
    while engine.has_work():
        result = engine.step()
        if result.failed:
            raise RuntimeError(f"guarded decoding failed: {result.failed}")
        for request_id, output in result.outputs.items():
            texts[request_id] += output.text
            if output.report is not None:
                reports[request_id] = output.report
    by_line: dict[int, list[GuardedAnswer]] = {}
    for rid, (item, _) in seqs.items():
        correct = gold_in_answer(texts[rid], item.right_answer)
        by_line.setdefault(item.line, []).append(
            GuardedAnswer(item.line, texts[rid], reports[rid], correct)
        )
    return list(by_line.values())


def check_answers(
    items: list[HaluEvalItem], decoded: list[list[GuardedAnswer]], verifier: Verifier
) -> list[list[GuardedAnswer]]:
    """The decoded answers with `supported` set: the verifier's view of each whole answer
    against the statements of its conversation, as the server checks chains."""
    contexts = {item.line: without_questions(conversation_context(item)) for item in items}
    return [
        [
            replace(a, supported=not verifier.verify(a.text, contexts[a.line]).hallucinated)
            for a in chains
        ]
        for chains in decoded
    ]


def with_global_threshold(
    thresholds: dict[str, float], answers: list[GuardedAnswer], max_abstention: float
) -> SettingResult:
    """The setting completed by the tau_global that best spends the rest of the budget."""
    answered = [a for a in answers if a.answered]
    spent = 1 - len(answered) / len(answers)
    left = max(max_abstention - spent, 0.0) * len(answers) / max(len(answered), 1)
    tau = 0.0
    if answered and left > 0:
        tau = threshold_for_budget(
            [a.confidence for a in answered], [a.correct for a in answered], min(left, 1.0)
        )
    kept = [a.answered and a.confidence >= tau for a in answers]
    return SettingResult(
        thresholds={**thresholds, "tau_global": tau},
        answered=kept,
        correct=[a.correct for a in answers],
    )


def chosen_answer(
    chains: list[GuardedAnswer], tau: float, setting: ChainSetting, clusters: int
) -> GuardedAnswer | None:
    """The answer the server gives from these chains at `tau_global` (None: it abstains)."""
    index = pick_chain(
        [a.text for a in chains],
        [a.confidence if a.answered and a.confidence >= tau else None for a in chains],
        setting.chain_choice,
        clusters,
        supported=[a.supported for a in chains] if setting.prefer_supported else None,
    )
    return None if index is None else chains[index]


def with_chain_threshold(
    thresholds: dict[str, float],
    items: list[list[GuardedAnswer]],
    max_abstention: float,
    setting: ChainSetting,
    clusters: int,
    candidates: int = 200,
) -> SettingResult:
    """The setting completed by the tau_global that best spends the budget over several chains,
    tried at `candidates` quantiles of the chains' F_global (and 0). Each item's choice is
    made once per set of passing chains, however many thresholds leave that set."""
    scores = [a.confidence for chains in items for a in chains if a.answered]
    taus = sorted({0.0, *np.quantile(scores, np.linspace(0, 1, candidates)).tolist()})
    choices: dict[tuple[int, tuple[int, ...]], GuardedAnswer | None] = {}

    def answer_at(item: int, tau: float) -> GuardedAnswer | None:
        chains = items[item]
        passing = tuple(k for k, a in enumerate(chains) if a.answered and a.confidence >= tau)
        if (item, passing) not in choices:
            choices[item, passing] = chosen_answer(chains, tau, setting, clusters)
        return choices[item, passing]

    answers = [[answer_at(i, tau) for i in range(len(items))] for tau in taus]
    answered = np.array([[a is not None for a in row] for row in answers])
    correct = np.array([[a is not None and a.correct for a in row] for row in answers])
    best = best_threshold(taus, answered, correct, max_abstention)
    return SettingResult(
        thresholds={**thresholds, "tau_global": taus[best]},
        answered=answered[best].tolist(),
        correct=correct[best].tolist(),
    )


def log_separation(thresholds: dict[str, float], answers: list[GuardedAnswer]) -> None:
    """Log how well F_global and the probe risk separate wrong answers from right ones."""
    answered = [a for a in answers if a.answered and a.report.global_check is not None]
    wrong = [not a.correct for a in answered]
    if len(set(wrong)) < 2:
        return
    risks = [a.report.global_check.probe_risk or 0.0 for a in answered if a.report.global_check]
    logger.info(
        "setting %s: %d answered, AUROC of 1 - F_global %.3f, of probe risk %.3f",
        json.dumps(thresholds),
        len(answered),
        roc_auc_score(wrong, [-a.confidence for a in answered]),
        roc_auc_score(wrong, risks),
    )


def run_calibration(
    model_dir: Path,
    guard_dir: Path,
    lines: tuple[int, int],
    max_abstention: float,
    grid: tuple[dict[str, float], ...] = DEFAULT_GRID,
    chains: ChainSetting | None = None,
    max_tokens: int = 64,
    slots_per_chain: int = 16,
) -> GuardCalibration:
    """Decode the dev lines under each setting (and chain setting), pick the best in budget,
    save it."""
    chains = chains or ChainSetting()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    probe = HallucinationProbe.load(guard_dir / "guard_probe.json")
    runner = ModelRunner.load(
        model_dir,
        num_slots=slots_per_chain * chains.chains,
        max_model_len=2048,
        max_candidates=GuardConfig().num_candidates,
        device="cpu",
        probe_layer=probe.layer,
    )
    items = load_dev_lines(*lines)
    verifier = Verifier(VerifierConfig(use_embeddings=False))
    results = []
    for thresholds in grid:
        config = GuardConfig(
            enabled=True, token_score="probe", tau_global=0.0, **chains.model_dump(), **thresholds
        )
        decoded = decode_guarded(runner, tokenizer, items, config, probe, verifier, max_tokens)
        if chains.prefer_supported and chains.chains > 1:
            decoded = check_answers(items, decoded, Verifier())
        log_separation(thresholds, [first for first, *_ in decoded])
        if chains.chains == 1:
            result = with_global_threshold(thresholds, [a for (a,) in decoded], max_abstention)
        else:
            result = with_chain_threshold(
                thresholds, decoded, max_abstention, chains, config.clusters
            )
        logger.info("setting %s -> %s", json.dumps(result.thresholds), result.answered.count(True))
        results.append(result)
    calibration = calibrate(results, max_abstention, lines[0], lines[1], chains=chains)
    calibration.save(guard_dir / "guard_calibration.json")
    return calibration
