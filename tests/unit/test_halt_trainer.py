"""HALT data and trainer on a tiny random Llama: sampling, SFT masking, a run that saves, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from engine.model_runner import ModelRunner
from engine.sampling import SamplingParams
from groundedqa.halueval import HaluEvalItem
from groundedqa.metrics import gold_in_answer
from guardserve.cli import build_parser
from guardserve.commands.halt import data_config, train_config
from halt.config import DataConfig, TrainConfig
from halt.data import (
    DATA_FILE,
    SUMMARY_FILE,
    ItemSamples,
    data_figures,
    judge_item,
    load_dataset,
    sample_answers,
)
from halt.fragments import Fragment, JudgedResponse
from halt.trainer import (
    IGNORE_INDEX,
    LOG_FILE,
    TARGETS_FILE,
    HaltTrainer,
    SftExample,
    StepLog,
    run_training,
    sft_batch,
    sft_loss,
)
from halt.trainer import SUMMARY_FILE as TRAINING_FILE
from tests.unit.conftest import build_tiny_llama, build_tiny_tokenizer
from verify.verifier import Verification

# The tiny tokenizer knows w3..w95; unknown words become <eos> (id 0), which is fine here.
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} \n {% endfor %}"


def item(line: int, gold: str = "w7") -> HaluEvalItem:
    return HaluEvalItem(
        knowledge="w5 w6 w7",
        question="w8 w9",
        right_answer=gold,
        hallucinated_answer="w10",
        line=line,
    )


def no_claims(response: str, context: str) -> Verification:
    return Verification(verdicts=[])


def test_sampled_answers_are_judged_per_item_with_distinct_seeds() -> None:
    tokenizer = build_tiny_tokenizer()
    runner = ModelRunner(build_tiny_llama(), num_slots=6, max_model_len=24, max_candidates=1)
    params = SamplingParams(max_tokens=5, temperature=1.0)
    answers = sample_answers(runner, tokenizer, [[5, 17, 33], [40, 41]], params, 3, seed=7)
    assert [len(a) for a in answers] == [3, 3]
    assert len({text for a in answers for text, _ in a}) > 1
    again = sample_answers(runner, tokenizer, [[5, 17, 33], [40, 41]], params, 3, seed=7)
    assert again == answers  # seeded

    row = judge_item(item(12), answers[0], no_claims)
    assert (row.line, len(row.samples)) == (12, 3)
    for sample, (text, finished) in zip(row.samples, answers[0], strict=True):
        assert (sample.text, sample.finished) == (text, finished)
        if text.strip():  # no claims: the whole answer is one fragment, judged by the gold
            assert [f.correct for f in sample.fragments] == [gold_in_answer(text, "w7")]
    assert ItemSamples.model_validate_json(row.model_dump_json()) == row
    figures = data_figures([row])
    assert figures["responses"] == 3
    assert set(figures["targets"]) == {"cut", "drop"}


def test_sft_labels_cover_target_tokens_only() -> None:
    examples = [
        SftExample("1", prompt_ids=[5, 6, 7], target_ids=[20, 21, 0]),
        SftExample("2", prompt_ids=[8, 9], target_ids=[30, 0]),
    ]
    batch = sft_batch(examples, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 20, 21, 0], [8, 9, 30, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    i = IGNORE_INDEX
    assert batch["labels"].tolist() == [[i, i, i, 20, 21, 0], [i, i, 30, 0, i, i]]

    model = build_tiny_llama()
    with torch.no_grad():
        loss = sft_loss(model, batch)
        picked = []
        for row, example in enumerate(examples):
            n_prompt = len(example.prompt_ids)
            ids = batch["input_ids"][row : row + 1, : n_prompt + len(example.target_ids)]
            logprobs = model(ids).logits[0].log_softmax(-1)
            for k, token in enumerate(example.target_ids):  # predicted from the position before
                picked.append(-logprobs[n_prompt - 1 + k, token])
    torch.testing.assert_close(loss, torch.stack(picked).mean(), atol=1e-5, rtol=0)


def test_a_step_changes_only_the_adapter_weights(tmp_path: Path) -> None:
    model = build_tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    examples = [SftExample(str(k), [5 + k, 6, 7], [20 + k, 21, 0]) for k in range(3)]
    config = TrainConfig(batch_size=2, lr=0.05, lora_r=4, out=tmp_path, seed=1)
    log_path = tmp_path / "log.jsonl"
    trainer = HaltTrainer(config, model, build_tiny_tokenizer(), examples, log_path)
    batches = trainer.batches()
    assert sorted(len(b) for b in batches) == [1, 2]
    assert sorted(e.key for b in batches for e in b) == ["0", "1", "2"]
    log = trainer.step(batches[0], epoch=0)
    assert set(json.loads(log_path.read_text())) == set(StepLog.model_fields)
    assert log.grad_norm > 0 and log.target_tokens == 3 * len(batches[0])
    after = model.state_dict()
    assert any("lora_B" in k and after[k].abs().sum() > 0 for k in after)
    for key, value in before.items():
        base_key = key.replace(".weight", ".base_layer.weight")
        assert torch.equal(after[base_key] if base_key in after else after[key], value), key


def judged(text: str, correct: bool) -> JudgedResponse:
    fragment = Fragment(
        start=0, end=len(text), text=text, claims=[], unsupported=[], correct=correct
    )
    return JudgedResponse(text=text, finished=True, fragments=[fragment])


def test_run_training_builds_targets_trains_and_saves_an_adapter(tmp_path: Path) -> None:
    base_dir, data_dir, out_dir = tmp_path / "base", tmp_path / "data", tmp_path / "run"
    build_tiny_llama().save_pretrained(base_dir)
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(base_dir)
    data_dir.mkdir()
    rows = [
        ItemSamples(
            line=3,
            knowledge="w5 w6 w7",
            question="w8",
            right_answer="w7",
            samples=[judged("w7 w6 .", True), judged("w9 .", False)],
        ),
        ItemSamples(
            line=4,
            knowledge="w5",
            question="w9",
            right_answer="w5",
            samples=[judged("w11 .", False)],
        ),
    ]
    (data_dir / DATA_FILE).write_text("".join(r.model_dump_json() + "\n" for r in rows))
    summary = {"base_model": str(base_dir), "data": {"lines": [3, 4]}}
    (data_dir / SUMMARY_FILE).write_text(json.dumps(summary))
    assert load_dataset(data_dir) == rows

    config = TrainConfig(
        model=str(base_dir), data=data_dir, out=out_dir, epochs=1, batch_size=4, lora_r=2
    )
    assert run_training(config, command="test") == out_dir

    adapter = json.loads((out_dir / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base_dir)
    assert (out_dir / "adapter_model.safetensors").exists()
    assert len((out_dir / LOG_FILE).read_text().splitlines()) == 1
    targets = [json.loads(line) for line in (out_dir / TARGETS_FILE).read_text().splitlines()]
    assert [(t["line"], t["text"], t["kept"]) for t in targets] == [
        (3, "w7 w6 .", 1),
        (4, "Unsure from here", 0),
    ]
    training = json.loads((out_dir / TRAINING_FILE).read_text())
    assert training["data"]["lines_trained"] == [3, 4]
    assert training["targets"]["abstained"] == pytest.approx(0.5)
    assert training["steps"] == 1

    with pytest.raises(ValueError, match="sampled from"):
        run_training(config.model_copy(update={"model": "smollm2-135m-instruct"}))


def test_cli_flags_map_onto_the_configs(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["halt", "build-data", "--model", "default", "--limit", "4", "--max-new-tokens", "24"]
    )
    config = data_config(args)
    assert (config.model, config.limit, config.max_new_tokens) == (None, 4, 24)
    assert config.samples == DataConfig().samples
    args = build_parser().parse_args(
        ["halt", "train", "--threshold", "0.8", "--mode", "drop", "--out", str(tmp_path)]
    )
    config = train_config(args)
    assert (config.threshold, config.mode, config.out) == (0.8, "drop", tmp_path)
    assert config.lora_target_modules == TrainConfig().lora_target_modules
    with pytest.raises(ValidationError):
        DataConfig(first_line=7990, limit=20)
    with pytest.raises(ValidationError):
        TrainConfig(threshold=1.5)
