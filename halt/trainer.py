"""HALT trainer: LoRA SFT on grounded prompts and capability-aligned targets, a JSONL step log.

Each question of a `build-data` folder gives one example: its grounded prompt
(groundedqa.prompts) and the target built from the model's own judged answers at the configured
threshold and mode (halt.targets), followed by an end token. The loss is the mean
cross-entropy over target tokens only (prompt and padding positions carry the label -100);
AdamW updates the LoRA weights (peft) over seeded shuffles of the examples for a few epochs.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import PeftModel
from pydantic import BaseModel, Field
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from engine.model_runner import pick_device
from engine.model_store import BASE_MODEL
from finetune.run import (
    LOG_FILE,
    SUMMARY_FILE,
    append_log,
    load_float32,
    lora_model,
    resolve_base,
    save_adapter,
    trained_with,
    write_summary,
)
from groundedqa.prompts import grounded_prompt_ids
from halt.config import Mode, TrainConfig
from halt.data import SUMMARY_FILE as DATA_SUMMARY_FILE
from halt.data import ItemSamples, load_dataset
from halt.targets import Target, choose_target

TARGETS_FILE = "targets.jsonl"
IGNORE_INDEX = -100  # the label transformers' loss skips


@dataclass(frozen=True)
class SftExample:
    """One training pair as token ids; `target_ids` ends with the end token."""

    key: str
    prompt_ids: list[int]
    target_ids: list[int]


class StepLog(BaseModel):
    """One line of the training log (JSONL), for one optimizer update."""

    step: int
    epoch: int
    loss: float = Field(description="Mean cross-entropy per target token of the batch.")
    grad_norm: float = Field(description="Gradient norm before clipping.")
    target_tokens: int
    seconds: float


def sft_examples(
    rows: Sequence[ItemSamples],
    tokenizer: PreTrainedTokenizerBase,
    threshold: float,
    mode: Mode,
    max_prompt_tokens: int,
) -> tuple[list[SftExample], list[Target]]:
    """Examples of the rows whose prompt fits, and the target each one was built from."""
    examples, targets = [], []
    for row in rows:
        prompt = grounded_prompt_ids(tokenizer, row.knowledge, row.question)
        if len(prompt) > max_prompt_tokens:
            continue
        target = choose_target(row.samples, threshold, mode)
        ids = list(tokenizer(target.text, add_special_tokens=False)["input_ids"])
        examples.append(SftExample(str(row.line), prompt, [*ids, tokenizer.eos_token_id]))
        targets.append(target)
    return examples, targets


def sft_batch(examples: Sequence[SftExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 but on targets)."""
    width = max(len(e.prompt_ids) + len(e.target_ids) for e in examples)
    size = (len(examples), width)
    ids = torch.full(size, pad_id, dtype=torch.long)
    mask = torch.zeros(size, dtype=torch.long)
    labels = torch.full(size, IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n_prompt, n = len(example.prompt_ids), len(example.prompt_ids) + len(example.target_ids)
        ids[row, :n] = torch.tensor(example.prompt_ids + example.target_ids)
        mask[row, :n] = 1
        labels[row, n_prompt:n] = torch.tensor(example.target_ids)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sft_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's target tokens (transformers' shifted loss)."""
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in batch.items()}).loss


class HaltTrainer:
    """Fine-tunes a causal LM with LoRA on HALT examples (see the module docstring)."""

    def __init__(
        self,
        config: TrainConfig,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        examples: Sequence[SftExample],
        log_path: Path | None = None,
    ) -> None:
        if not examples:
            raise ValueError("no training examples")
        torch.manual_seed(config.seed)
        self.config = config
        self.tokenizer = tokenizer
        self.examples = list(examples)
        self.log_path = log_path
        self.peft: PeftModel = lora_model(model.float().to(pick_device(config.device)), config)
        self.trainable = [p for p in self.peft.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=config.lr, weight_decay=config.weight_decay
        )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.step_index = 0
        self._rng = random.Random(config.seed)

    def batches(self) -> list[list[SftExample]]:
        """One epoch's batches: a seeded shuffle of the examples, cut into batch_size pieces."""
        order = list(range(len(self.examples)))
        self._rng.shuffle(order)
        size = self.config.batch_size
        return [[self.examples[i] for i in order[k : k + size]] for k in range(0, len(order), size)]

    def step(self, examples: Sequence[SftExample], epoch: int) -> StepLog:
        """One optimizer update on a batch; appends its log line to ``log_path`` when set."""
        start = time.perf_counter()
        batch = sft_batch(examples, self.pad_id)
        self.peft.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = sft_loss(self.peft, batch)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        self.optimizer.step()
        self.peft.eval()
        log = StepLog(
            step=self.step_index,
            epoch=epoch,
            loss=float(loss.detach()),
            grad_norm=float(norm),
            target_tokens=int((batch["labels"] != IGNORE_INDEX).sum()),
            seconds=time.perf_counter() - start,
        )
        self.step_index += 1
        append_log(self.log_path, log)
        return log

    def train(self) -> list[StepLog]:
        """``config.epochs`` passes over the examples with a tqdm progress bar."""
        logs = []
        for epoch in range(self.config.epochs):
            bar = tqdm(self.batches(), desc=f"halt epoch {epoch}", file=sys.stderr)
            for examples in bar:
                log = self.step(examples, epoch)
                logs.append(log)
                bar.set_postfix(loss=f"{log.loss:.3f}")
        return logs

    def save(self, out_dir: Path, base_model: str) -> None:
        """Write the LoRA adapter into ``out_dir``, recording ``base_model`` as its base."""
        save_adapter(self.peft, out_dir, base_model)


def run_training(config: TrainConfig, command: str = "") -> Path:
    """Train on a `build-data` folder as configured; write adapter, logs and summary to ``out``.

    The data must come from the model being trained (capability alignment is per model).
    """
    data_summary = json.loads((config.data / DATA_SUMMARY_FILE).read_text())
    base_name = config.model or BASE_MODEL
    if data_summary["base_model"] != base_name:
        raise ValueError(
            f"the data were sampled from {data_summary['base_model']!r}, not {base_name!r}"
        )
    base_name, model_path, tokenizer = resolve_base(config)
    model = load_float32(model_path)
    rows = load_dataset(config.data)
    examples, targets = sft_examples(
        rows, tokenizer, config.threshold, config.mode, config.max_prompt_tokens
    )
    config.out.mkdir(parents=True, exist_ok=True)
    with (config.out / TARGETS_FILE).open("w", encoding="utf-8") as handle:
        for example, target in zip(examples, targets, strict=True):
            handle.write(json.dumps({"line": int(example.key), **asdict(target)}) + "\n")
    log_path = config.out / LOG_FILE
    log_path.unlink(missing_ok=True)
    trainer = HaltTrainer(config, model, tokenizer, examples, log_path)
    start = time.perf_counter()
    logs = trainer.train()
    seconds = time.perf_counter() - start
    trainer.save(config.out, base_name if config.model is None else str(model_path))
    data = {
        **data_summary["data"],
        "folder": str(config.data),
        "lines_trained": sorted(int(e.key) for e in examples),
    }
    write_summary(
        config.out / SUMMARY_FILE,
        command,
        config,
        base_name,
        data,
        targets={
            "threshold": config.threshold,
            "mode": config.mode,
            "examples": len(targets),
            "abstained": sum(t.abstained for t in targets) / len(targets),
            "completeness": sum(t.completeness for t in targets) / len(targets),
        },
        steps=len(logs),
        final_loss=logs[-1].loss,
        seconds=round(seconds, 1),
        **trained_with(),
    )
    return config.out
