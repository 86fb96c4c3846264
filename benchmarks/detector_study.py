"""How well the answer's own states tell right answers from wrong ones (issue 29's detector).

`collect` decodes the default model's answers to HaluEval development questions (greedy, and
`--samples` more at temperature 0.7) on the torch engine and keeps, per answer, its tokens'
states at several layers (one teacher-forced forward that reuses the prompt's cache: the same
states the decoding forward computes), its tokens' log-probabilities, entropies and P(a) at
Token-Guard's score temperature, the committed probe's last-token risk, its segments, and
whether it contains the gold answer. `report` fits logistic detectors on pooled states of the
fit lines, chooses one on the choice lines, and prints answer-level and first-segment AUROC on
the report lines beside the scores the guard has today (docs/detector.md).

    python -m benchmarks.detector_study collect --lines 5801-6600 --samples 1 \\
        --out runs/detector/fit
    python -m benchmarks.detector_study report --fit runs/detector/fit \\
        --choose runs/detector/select --report runs/detector/report
"""

from __future__ import annotations

import argparse
import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from engine.model_runner import ModelRunner
from engine.model_store import DEFAULT_MODEL, resolve_model
from engine.offline import sample_responses
from engine.sampling import SamplingParams
from groundedqa.halueval import check_dev_lines, load_halueval
from groundedqa.metrics import f1_score, gold_in_answer
from groundedqa.prompts import grounded_prompt_ids
from guard.probe import PROBE_FILE, PROBES_DIR, HallucinationProbe

logger = logging.getLogger(__name__)

LAYERS = (4, 8, 12, 16, 20, 24, 28)
SCORE_TEMPERATURE = 0.3
SAMPLE_TEMPERATURE = 0.7
SENTENCE_ENDS = (".", "!", "?")
LAYER_CHOICES = ((8,), (12,), (16,), (20,), (24,), (12, 16, 20), (8, 12, 16, 20, 24), LAYERS)
POOL_CHOICES = (("last",), ("mean",), ("mean", "last"), ("mean", "max", "last"))
STRENGTHS = (0.001, 0.003, 0.01)


@dataclass
class Answer:
    """One decoded answer and what a detector may read of it."""

    line: int
    kind: str  # "greedy" or "sample"
    text: str
    correct: bool
    tokens: list[int]
    segments: list[tuple[int, int]]
    states: dict[int, np.ndarray]  # layer -> [tokens, d] float16
    logprob: np.ndarray
    entropy: np.ndarray
    p_a: np.ndarray
    old_risk: float


def segments_of(tokenizer: PreTrainedTokenizerBase, tokens: list[int]) -> list[tuple[int, int]]:
    """Token spans of the answer's sentences (a point after a digit does not end one)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for i, token in enumerate(tokens):
        piece = tokenizer.decode([token])
        end = "\n" in piece
        if not end and piece.rstrip().endswith(SENTENCE_ENDS):
            before = tokenizer.decode([tokens[i - 1]]) if i > 0 else ""
            end = not (piece.strip() in SENTENCE_ENDS and before[-1:].isdigit())
        if end:
            spans.append((start, i + 1))
            start = i + 1
    if start < len(tokens):
        spans.append((start, len(tokens)))
    return spans


@torch.inference_mode()
def token_features(
    runner: ModelRunner, prompt: list[int], answers: list[list[int]]
) -> list[tuple[dict[int, np.ndarray], np.ndarray, np.ndarray, np.ndarray]]:
    """Per answer: its tokens' states at `LAYERS`, log-probability, entropy and P(a)."""
    model = runner.model.model
    out = model(torch.tensor([prompt]), use_cache=True)
    cache, last_prompt = out.past_key_values, out.last_hidden_state[0, -1]
    cache.batch_repeat_interleave(len(answers))
    width = max(len(a) for a in answers)
    ids = torch.tensor([a + [0] * (width - len(a)) for a in answers])
    # Right padding: every real token sees only the prompt and real tokens before it.
    out = model(ids, past_key_values=cache, output_hidden_states=True)
    features = []
    for row, answer in enumerate(answers):
        n = len(answer)
        states = {
            layer: out.hidden_states[layer][row, :n].float().numpy().astype(np.float16)
            for layer in LAYERS
        }
        logits = runner.logits(torch.cat([last_prompt[None], out.last_hidden_state[row, : n - 1]]))
        log_probs = torch.log_softmax(logits, -1)
        target = torch.tensor(answer)[:, None]
        logprob = log_probs.gather(1, target)[:, 0]
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        p_a = torch.softmax(logits / SCORE_TEMPERATURE, -1).gather(1, target)[:, 0]
        features.append((states, logprob.numpy(), entropy.numpy(), p_a.numpy()))
    return features


def collect(first: int, last: int, samples: int, out_dir: Path, batch: int = 16) -> None:
    """Answer lines [first, last] and keep each batch's answers in `out_dir` (resumable)."""
    check_dev_lines(first, last)
    model_dir = resolve_model(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    runner = ModelRunner.load(
        model_dir,
        num_slots=batch * (1 + samples),
        max_model_len=2048,
        max_candidates=1,
        device="cpu",
        dtype="float32",
    )
    probe = HallucinationProbe.load(PROBES_DIR / DEFAULT_MODEL / PROBE_FILE)
    eos = runner.eos_token_ids(tokenizer)
    items = [i for i in load_halueval("dev") if first <= i.line <= last]
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for b in range(0, len(items), batch):
        chunk = items[b : b + batch]
        path = out_dir / f"{chunk[0].line}.pkl"
        if path.exists():
            continue
        prompts = [grounded_prompt_ids(tokenizer, i.knowledge, i.question) for i in chunk]
        greedy = SamplingParams(max_tokens=64, temperature=0.0)
        groups = [
            [("greedy", g[0])] for g in sample_responses(runner, tokenizer, prompts, greedy, 1, 0)
        ]
        if samples:
            params = SamplingParams(max_tokens=64, temperature=SAMPLE_TEMPERATURE)
            sampled = sample_responses(
                runner, tokenizer, prompts, params, samples, 1000 + 10 * chunk[0].line
            )
            for group, more in zip(groups, sampled, strict=True):
                group += [("sample", seq) for seq in more]
        records = []
        for item, prompt, group in zip(chunk, prompts, groups, strict=True):
            answers = [(kind, [t for t in s.output_ids if t not in eos]) for kind, s in group]
            answers = [(kind, a) for kind, a in answers if a]
            if not answers:
                continue
            features = token_features(runner, prompt, [a for _, a in answers])
            for (kind, answer), (states, logprob, entropy, p_a) in zip(
                answers, features, strict=True
            ):
                text = tokenizer.decode(answer, skip_special_tokens=True)
                last_state = states[probe.layer][-1:].astype(np.float32)
                records.append(
                    Answer(
                        item.line,
                        kind,
                        text,
                        gold_in_answer(text, item.right_answer),
                        answer,
                        segments_of(tokenizer, answer),
                        states,
                        logprob,
                        entropy,
                        p_a,
                        float(probe.risk_numpy(last_state)[0]),
                    )
                )
        with path.open("wb") as handle:
            pickle.dump(records, handle)
        logger.info("%d / %d items, %.0f s", b + len(chunk), len(items), time.time() - start)


def load(folder: Path) -> list[Answer]:
    """Every answer `collect` kept in a folder."""
    answers: list[Answer] = []
    for path in sorted(folder.glob("*.pkl")):
        with path.open("rb") as handle:
            answers += pickle.load(handle)
    return answers


def pooled(
    answer: Answer, layers: tuple[int, ...], pools: tuple[str, ...], upto: int
) -> np.ndarray:
    """The answer's states over its first `upto` tokens, pooled per layer and concatenated."""
    parts = []
    for layer in layers:
        states = answer.states[layer][:upto].astype(np.float32)
        pooled_by = {"mean": states.mean(0), "max": states.max(0), "last": states[-1]}
        parts += [pooled_by[pool] for pool in pools]
    return np.concatenate(parts)


def features(
    answers: list[Answer], layers: tuple[int, ...], pools: tuple[str, ...], first_segment: bool
) -> np.ndarray:
    """Pooled features of each answer, whole or up to the end of its first segment."""
    return np.stack(
        [
            pooled(a, layers, pools, a.segments[0][1] if first_segment else len(a.tokens))
            for a in answers
        ]
    )


def wrong(answers: list[Answer]) -> np.ndarray:
    """1 where the answer lacks the gold answer."""
    return np.array([not a.correct for a in answers], dtype=int)


def fit(x: np.ndarray, y: np.ndarray, c: float) -> Pipeline:
    """Standardise, then a class-balanced L2 logistic regression."""
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
    )
    return model.fit(x, y)


def agreement(answers: list[Answer]) -> dict[int, float]:
    """Per line: mean token F1 of the sampled answers against the greedy one."""
    by_line: dict[int, list[Answer]] = {}
    for answer in answers:
        by_line.setdefault(answer.line, []).append(answer)
    scores = {}
    for line, group in by_line.items():
        greedy = [a for a in group if a.kind == "greedy"]
        sampled = [a for a in group if a.kind == "sample"]
        if greedy and sampled:
            scores[line] = float(np.mean([f1_score(s.text, greedy[0].text) for s in sampled]))
    return scores


def report(fit_dir: Path, choose_dir: Path, report_dir: Path) -> None:
    """Fit on `fit_dir`, choose on `choose_dir`'s greedy answers, print AUROCs on `report_dir`'s."""
    fitted = load(fit_dir)
    chosen = [a for a in load(choose_dir) if a.kind == "greedy"]
    reported_all = load(report_dir)
    reported = [a for a in reported_all if a.kind == "greedy"]
    print(
        f"fit {len(fitted)} answers ({wrong(fitted).mean():.3f} wrong), choose {len(chosen)} "
        f"greedy, report {len(reported)} greedy ({wrong(reported).mean():.3f} wrong)"
    )
    y_fit, y_choose, y_report = wrong(fitted), wrong(chosen), wrong(reported)
    scores = {}
    for layers in LAYER_CHOICES:
        for pools in POOL_CHOICES:
            x_fit, x_choose = (
                features(fitted, layers, pools, False),
                features(chosen, layers, pools, False),
            )
            for c in STRENGTHS:
                risk = fit(x_fit, y_fit, c).predict_proba(x_choose)[:, 1]
                scores[(layers, pools, c)] = roc_auc_score(y_choose, risk)
    ranked = sorted(scores, key=lambda k: -scores[k])
    for key in ranked[:5]:
        print(f"choice AUROC {scores[key]:.3f}: layers {key[0]}, pools {key[1]}, C {key[2]}")
    layers, pools, c = ranked[0]
    detector = fit(features(fitted, layers, pools, False), y_fit, c)
    first_detector = fit(features(fitted, layers, pools, True), y_fit, c)
    agree = agreement(load(choose_dir))
    choose_agree = np.array([agree[a.line] for a in chosen])
    combined = LogisticRegression().fit(
        np.column_stack(
            [detector.decision_function(features(chosen, layers, pools, False)), choose_agree]
        ),
        y_choose,
    )
    report_agree = agreement(reported_all)
    agree_scores = np.array([report_agree.get(a.line, 1.0) for a in reported])
    detector_scores = detector.decision_function(features(reported, layers, pools, False))
    rows = {
        "committed probe (last token, layer 20)": [a.old_risk for a in reported],
        "mean log-probability": [-a.logprob.mean() for a in reported],
        "min log-probability": [-a.logprob.min() for a in reported],
        "mean P(a) at T 0.3": [-a.p_a.mean() for a in reported],
        "mean entropy": [a.entropy.mean() for a in reported],
        "agreement of 3 samples with greedy (token F1)": list(-agree_scores),
        "pooled detector, whole answer": list(detector_scores),
        "pooled detector, first segment only": list(
            first_detector.decision_function(features(reported, layers, pools, True))
        ),
        "pooled detector + agreement": list(
            combined.decision_function(np.column_stack([detector_scores, agree_scores]))
        ),
    }
    for name, risk in rows.items():
        print(f"report AUROC {roc_auc_score(y_report, risk):.3f}: {name}")


def crossval(fit_dir: Path, c: float = 0.003) -> None:
    """5-fold AUROC on the fit lines alone (folds by question), each single layer and pooling
    beside the committed probe (in-sample on its own fit lines 6001-6800) and the mean
    log-probability: a look before choice and report lines exist."""
    answers = load(fit_dir)
    y, greedy = wrong(answers), np.array([a.kind == "greedy" for a in answers])
    lines = np.array([a.line for a in answers])
    print(f"{len(answers)} answers of {len(set(lines))} questions, {y[greedy].mean():.3f} wrong")
    probe = np.array([a.old_risk for a in answers])
    outside = greedy & ((lines < 6001) | (lines > 6800))
    print(
        f"committed probe: {roc_auc_score(y[greedy], probe[greedy]):.3f} (greedy answers), ", end=""
    )
    print(
        f"{roc_auc_score(y[outside], probe[outside]):.3f} on {outside.sum()} outside its fit lines"
    )
    logprob = np.array([-a.logprob.mean() for a in answers])
    print(f"mean log-probability: {roc_auc_score(y[greedy], logprob[greedy]):.3f}")
    for layers in LAYER_CHOICES[:5]:
        for pools in POOL_CHOICES[:3]:
            x = features(answers, layers, pools, False)
            risk = np.zeros(len(answers))
            for train, test in GroupKFold(5).split(x, y, lines):
                risk[test] = fit(x[train], y[train], c).decision_function(x[test])
            auroc = roc_auc_score(y[greedy], risk[greedy])
            print(f"5-fold AUROC {auroc:.3f} (greedy answers): layers {layers}, pools {pools}")


def main() -> None:
    """`collect`, `crossval` or `report`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gather = commands.add_parser("collect", help="Decode answers and keep their features.")
    gather.add_argument("--lines", required=True, help="FIRST-LAST development lines")
    gather.add_argument("--samples", type=int, default=1, help="Sampled answers per question.")
    gather.add_argument("--out", type=Path, required=True)
    look = commands.add_parser("crossval", help="5-fold AUROCs on the fit lines alone.")
    look.add_argument("--fit", type=Path, required=True)
    study = commands.add_parser("report", help="Fit, choose and report the detectors.")
    study.add_argument("--fit", type=Path, required=True)
    study.add_argument("--choose", type=Path, required=True)
    study.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(2)
    if args.command == "collect":
        first, last = (int(n) for n in args.lines.split("-"))
        collect(first, last, args.samples, args.out)
    elif args.command == "crossval":
        crossval(args.fit)
    else:
        report(args.fit, args.choose, args.report)


if __name__ == "__main__":
    main()
