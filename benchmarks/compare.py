"""The frame both checkpoint comparisons share (benchmarks.balto_compare, benchmarks.halt_compare).

Flags, then the base model and every entry answering the same held-out HaluEval development
lines greedily in one batched engine run each, then each entry's rows and the report on disk.
An entry is a LoRA adapter applied to the base model, or a whole model folder (one with a
config.json, e.g. an adapter merged by `guardserve balto export`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from benchmarks.held_out import held_out_lines, parse_entries
from engine.model_runner import ModelRunner, pick_device
from engine.model_store import BASE_MODEL, resolve_model
from engine.offline import sample_responses
from engine.sampling import SamplingParams
from finetune.run import load_float32
from groundedqa.halueval import HaluEvalItem, load_dev_lines
from groundedqa.prompts import grounded_prompt_ids


def comparison_parser(description: str, max_new_tokens: int, out: Path) -> argparse.ArgumentParser:
    """The flags of a checkpoint comparison (a script adds its own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=BASE_MODEL, help="base model (name, folder, .gguf)")
    parser.add_argument(
        "--adapter", action="append", default=[], metavar="NAME=DIR", help="adapter to compare"
    )
    parser.add_argument("--first-line", type=int, default=4001)
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--batch", type=int, default=32, help="sequences decoded together")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", type=Path, default=out)
    return parser


def entry_model(model_dir: Path, entry: Path | None) -> PreTrainedModel:
    """The base model, with an adapter merged in, or a whole model folder given as the entry."""
    whole = entry is not None and (entry / "config.json").exists()
    model = load_float32(entry if whole and entry is not None else model_dir)
    if entry is not None and not whole:
        model = PeftModel.from_pretrained(model, str(entry)).merge_and_unload()
    return model


@dataclass(frozen=True)
class Answers:
    """One entry's greedy answers, in item order, and how long they took."""

    name: str
    entry: Path | None
    texts: list[str]
    tokens: list[int]
    seconds: float


@dataclass(frozen=True)
class Comparison:
    """A comparison's held-out items and their grounded prompts under the base tokenizer."""

    args: argparse.Namespace
    entries: dict[str, Path]
    model_dir: Path
    tokenizer: PreTrainedTokenizerBase
    items: list[HaluEvalItem]
    prompts: list[list[int]]

    @classmethod
    def start(cls, args: argparse.Namespace) -> Comparison:
        """Check the lines are held out from every entry, load them, make the output folder."""
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        entries = parse_entries(args.adapter)
        lines = held_out_lines(args.first_line, args.limit, entries)
        model_dir = resolve_model(args.model, args.cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        items = load_dev_lines(lines.start, lines[-1])
        prompts = [grounded_prompt_ids(tokenizer, i.knowledge, i.question) for i in items]
        args.out.mkdir(parents=True, exist_ok=True)
        return cls(args, entries, model_dir, tokenizer, items, prompts)

    @property
    def lines(self) -> list[int]:
        """The first and last line compared."""
        return [self.items[0].line, self.items[-1].line]

    def answers(self) -> Iterator[Answers]:
        """The base model's answers ("base"), then each entry's."""
        for name, entry in [("base", None), *self.entries.items()]:
            started = time.perf_counter()
            texts, tokens = self._greedy(entry_model(self.model_dir, entry))
            yield Answers(name, entry, texts, tokens, time.perf_counter() - started)

    def _greedy(self, model: PreTrainedModel) -> tuple[list[str], list[int]]:
        """Greedy answers (decoded, stripped) and their generated token counts."""
        args = self.args
        runner = ModelRunner(
            model.requires_grad_(False).to(pick_device(args.device)),
            num_slots=args.batch,
            max_model_len=max(len(p) for p in self.prompts) + args.max_new_tokens,
            max_candidates=1,
        )
        params = SamplingParams(max_tokens=args.max_new_tokens, temperature=0.0)
        groups = sample_responses(runner, self.tokenizer, self.prompts, params, n=1, seed=0)
        texts = [self.tokenizer.decode(s.output_ids, skip_special_tokens=True) for (s,) in groups]
        return [t.strip() for t in texts], [len(s.output_ids) for (s,) in groups]

    def write_rows(self, name: str, rows: Iterable[str]) -> None:
        """Write one entry's per-item rows (JSON lines) as OUT/NAME.jsonl."""
        with (self.args.out / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            handle.writelines(row + "\n" for row in rows)

    def write_report(self, report: dict[str, Any], table: str, table_file: str) -> None:
        """Write OUT/results.json and the markdown table, and print the table."""
        (self.args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (self.args.out / table_file).write_text(table + "\n")
        print(table)
