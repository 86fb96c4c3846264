"""HALT data: K sampled answers per HaluEval dev question, judged fragment by fragment, as JSONL.

`guardserve halt build-data` writes ``data.jsonl`` (one `ItemSamples` per question: the item
and its K judged responses) and ``data.json`` (the run's settings and figures, with the
targets' completeness and abstention share at a few thresholds). The targets themselves are
built at training time (halt.targets), so one sampling run serves every threshold.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from engine.model_runner import ModelRunner
from engine.offline import sample_responses
from engine.sampling import SamplingParams
from finetune.run import halueval_lines, resolve_base, write_summary
from groundedqa.halueval import HaluEvalItem, load_dev_lines
from groundedqa.metrics import gold_in_answer
from groundedqa.prompts import grounded_prompt_ids
from halt.config import Boundary, DataConfig, Mode
from halt.fragments import JudgedResponse, judge_fragments, stated_content
from halt.targets import choose_target
from verify.verifier import Verification, Verifier

DATA_FILE = "data.jsonl"
SUMMARY_FILE = "data.json"
REPORTED_THRESHOLDS = (0.0, 0.25, 0.5, 0.75, 1.0)

VerifyFn = Callable[[str, str], Verification]


class ItemSamples(BaseModel):
    """One HaluEval question and the model's K judged answers to it."""

    line: int
    knowledge: str
    question: str
    right_answer: str
    samples: list[JudgedResponse]


def sample_answers(
    runner: ModelRunner,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    params: SamplingParams,
    samples: int,
    seed: int,
) -> list[list[tuple[str, bool]]]:
    """K answers per prompt in one batched run: (text, ended with an end token) each."""
    groups = sample_responses(runner, tokenizer, prompts, params, samples, seed)
    return [
        [
            (tokenizer.decode(s.output_ids, skip_special_tokens=True), s.finish_reason == "stop")
            for s in group
        ]
        for group in groups
    ]


def judge_item(
    item: HaluEvalItem,
    answers: Sequence[tuple[str, bool]],
    verify: VerifyFn,
    boundary: Boundary = "clause",
) -> ItemSamples:
    """Verify each answer against the item's knowledge and judge its fragments."""
    samples = []
    for text, finished in answers:
        verification = verify(stated_content(text), item.knowledge)
        fragments = judge_fragments(text, verification, item.right_answer, boundary)
        samples.append(JudgedResponse(text=text, finished=finished, fragments=fragments))
    return ItemSamples(
        line=item.line,
        knowledge=item.knowledge,
        question=item.question,
        right_answer=item.right_answer,
        samples=samples,
    )


def load_dataset(folder: Path) -> list[ItemSamples]:
    """The judged questions of a `build-data` folder."""
    with (folder / DATA_FILE).open(encoding="utf-8") as handle:
        return [ItemSamples.model_validate_json(line) for line in handle if line.strip()]


def target_stats(rows: Sequence[ItemSamples], threshold: float, mode: Mode) -> dict[str, float]:
    """Mean completeness and abstention share of the rows' targets at one threshold."""
    targets = [choose_target(row.samples, threshold, mode) for row in rows]
    return {
        "completeness": sum(t.completeness for t in targets) / len(targets),
        "abstained": sum(t.abstained for t in targets) / len(targets),
    }


def data_figures(rows: Sequence[ItemSamples]) -> dict[str, object]:
    """The sampled answers' figures and their targets' statistics at REPORTED_THRESHOLDS."""
    responses = [(row, s) for row in rows for s in row.samples]
    fragments = [f for _, s in responses for f in s.fragments]
    return {
        "questions": len(rows),
        "responses": len(responses),
        "fragments_per_response": len(fragments) / len(responses),
        "fragment_correctness": sum(f.correct for f in fragments) / max(len(fragments), 1),
        "gold_in_answer": sum(gold_in_answer(s.text, row.right_answer) for row, s in responses)
        / len(responses),
        "finished": sum(s.finished for _, s in responses) / len(responses),
        "targets": {
            mode: {str(t): target_stats(rows, t, mode) for t in REPORTED_THRESHOLDS}
            for mode in ("cut", "drop")
        },
    }


def build_dataset(config: DataConfig, verify: VerifyFn | None = None, command: str = "") -> Path:
    """Sample, judge and write the dataset as configured; returns the output folder."""
    base_name, model_path, tokenizer = resolve_base(config)
    items = load_dev_lines(config.first_line, config.last_line)
    prompts = [grounded_prompt_ids(tokenizer, i.knowledge, i.question) for i in items]
    fits = [len(p) <= config.max_prompt_tokens for p in prompts]
    kept = [(i, p) for i, p, ok in zip(items, prompts, fits, strict=True) if ok]
    per_run = max(1, config.batch // config.samples)
    runner = ModelRunner.load(
        model_path,
        num_slots=per_run * config.samples,
        max_model_len=max(len(p) for _, p in kept) + config.max_new_tokens,
        max_candidates=1,
        device=config.device,
        dtype="float32",
    )
    params = SamplingParams(
        max_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p
    )
    verify = verify or Verifier().verify
    config.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows: list[ItemSamples] = []
    with (config.out / DATA_FILE).open("w", encoding="utf-8") as handle:
        for first in tqdm(range(0, len(kept), per_run), desc="halt data", file=sys.stderr):
            chunk = kept[first : first + per_run]
            seed = config.seed * 10**9 + first * config.samples
            answers = sample_answers(
                runner, tokenizer, [p for _, p in chunk], params, config.samples, seed
            )
            for (item, _), item_answers in zip(chunk, answers, strict=True):
                row = judge_item(item, item_answers, verify, config.boundary)
                handle.write(row.model_dump_json() + "\n")
                rows.append(row)
    write_summary(
        config.out / SUMMARY_FILE,
        command,
        config,
        base_name,
        halueval_lines(config.first_line, config.last_line, len(items) - len(kept)),
        seconds=round(time.perf_counter() - start, 1),
        figures=data_figures(rows),
    )
    return config.out
