"""`guardserve balto train|export`: the trainer's command line (flags map to TrainConfig)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from balto.advantages import AdvantageMethod
from balto.config import TrainConfig


def _flag(parser: argparse.ArgumentParser, field: str, **kwargs: Any) -> None:
    """Add ``--field-name``; TrainConfig keeps the default (shown in the help)."""
    info = TrainConfig.model_fields[field]
    default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
    help_text = f"{info.description or ''} (default: {default})".strip()
    flag = "--" + field.replace("_", "-")
    parser.add_argument(flag, dest=field, default=argparse.SUPPRESS, help=help_text, **kwargs)


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    """Flags of `guardserve balto train`."""
    train = commands.add_parser("train", help="Train a policy with BALTO or a baseline.")
    _flag(train, "model", metavar="PATH|default")
    _flag(train, "cache_dir")
    _flag(train, "out", type=Path, metavar="DIR")
    _flag(train, "data", choices=["halueval"])
    _flag(train, "first_line", type=int)
    _flag(train, "limit", type=int)
    _flag(train, "max_prompt_tokens", type=int)
    _flag(train, "steps", type=int)
    _flag(train, "prompts_per_step", type=int)
    _flag(train, "group_size", type=int)
    _flag(train, "mini_batch_prompts", type=int)
    _flag(train, "epochs", type=int)
    _flag(train, "max_new_tokens", type=int)
    _flag(train, "temperature", type=float)
    _flag(train, "top_p", type=float)
    _flag(train, "advantage", choices=[m.value for m in AdvantageMethod])
    _flag(train, "truncation_penalty", type=float)
    _flag(train, "length_buffer", type=int)
    _flag(train, "content_reward", type=float)
    _flag(train, "content_claims", type=int)
    _flag(train, "gold_reward", type=float)
    _flag(train, "token_weight", type=float)
    _flag(train, "hold_hallucinated", action="store_true")
    _flag(train, "normalizer", choices=["auto", "factual", "tokens"])
    _flag(train, "clip_low", type=float)
    _flag(train, "clip_high", type=float)
    _flag(train, "lr", type=float)
    _flag(train, "weight_decay", type=float)
    _flag(train, "max_grad_norm", type=float)
    _flag(train, "full", action="store_true")
    _flag(train, "init_adapter", type=Path, metavar="DIR")
    _flag(train, "lora_r", type=int)
    _flag(train, "lora_alpha", type=int)
    _flag(train, "lora_dropout", type=float)
    _flag(train, "lora_target_modules", nargs="+")
    _flag(train, "rollout_engine", choices=["compact", "transformers"])
    _flag(train, "label_workers", type=int)
    _flag(train, "max_seconds", type=float)
    _flag(train, "seed", type=int)
    _flag(train, "device")
    _flag(train, "threads", type=int)
    train.set_defaults(handler=run_train)


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    """Flags of `guardserve balto export`."""
    export = commands.add_parser("export", help="Merge a LoRA adapter into an HF model folder.")
    export.add_argument(
        "--adapter", type=Path, required=True, metavar="DIR", help="The LoRA adapter (required)."
    )
    export.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="The merged folder (required)."
    )
    export.add_argument(
        "--base", default=None, help="Base model (default: the one the adapter records)."
    )
    export.add_argument(
        "--cache-dir", default=None, help="Model cache (default: $GUARDSERVE_CACHE or ~/.cache)."
    )
    export.set_defaults(handler=run_export)


def add_balto_parser(commands: argparse._SubParsersAction) -> None:
    """Register `guardserve balto` with its `train` and `export` subcommands."""
    balto = commands.add_parser("balto", help="Train and export BALTO checkpoints.")
    sub = balto.add_subparsers(dest="balto_command", required=True)
    add_train_parser(sub)
    add_export_parser(sub)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed `balto train` flags (``--model default`` is the base model)."""
    values = {k: v for k, v in vars(args).items() if k in TrainConfig.model_fields}
    if values.get("model") == "default":
        values["model"] = None
    return TrainConfig(**values)


def run_train(args: argparse.Namespace) -> int:
    """Train, then print where the adapter went."""
    from balto.trainer import run_training

    out = run_training(train_config(args), command=shlex.join(["guardserve", *sys.argv[1:]]))
    print(f"saved to {out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Merge the adapter and print the folder `guardserve serve --model` can load."""
    from balto.export import export_adapter

    out = export_adapter(args.adapter, args.out, args.base, args.cache_dir)
    print(f"merged model saved to {out}")
    return 0
