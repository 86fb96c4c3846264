"""`guardserve balto train|export`: BALTO's command line (train flags map to TrainConfig)."""

from __future__ import annotations

import argparse
from pathlib import Path

from balto.config import TrainConfig
from guardserve.flags import add_field_flags, add_flag, command_line, training_settings

TRAIN_FLAGS = (
    "model",
    "cache_dir",
    "out",
    "data",
    "first_line",
    "limit",
    "max_prompt_tokens",
    "steps",
    "prompts_per_step",
    "group_size",
    "mini_batch_prompts",
    "epochs",
    "max_new_tokens",
    "temperature",
    "top_p",
    "advantage",
    "truncation_penalty",
    "length_buffer",
    "content_reward",
    "content_claims",
    "gold_reward",
    "token_weight",
    "hold_hallucinated",
    "normalizer",
    "clip_low",
    "clip_high",
    "lr",
    "weight_decay",
    "max_grad_norm",
    "full",
    "init_adapter",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "rollout_engine",
    "label_workers",
    "max_seconds",
    "seed",
    "device",
    "threads",
)
METAVARS = {"model": "PATH|default", "out": "DIR", "init_adapter": "DIR"}


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    """Flags of `guardserve balto train`."""
    train = commands.add_parser("train", help="Train a policy with BALTO or a baseline.")
    add_field_flags(train, TrainConfig, TRAIN_FLAGS, METAVARS)
    train.set_defaults(handler=run_train)


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    """Flags of `guardserve balto export`."""
    export = commands.add_parser("export", help="Merge a LoRA adapter into an HF model folder.")
    add_flag(export, "--adapter", type=Path, required=True, metavar="DIR", help="The LoRA adapter.")
    add_flag(export, "--out", type=Path, required=True, metavar="DIR", help="The merged folder.")
    add_flag(export, "--base", help="Base model; None: the one the adapter records.")
    add_flag(
        export,
        "--cache-dir",
        help="Where models are prepared; None: $GUARDSERVE_CACHE, else ~/.cache/guardserve.",
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
    return training_settings(TrainConfig, args)


def run_train(args: argparse.Namespace) -> int:
    """Train, then print where the adapter went."""
    from balto.trainer import run_training

    print(f"saved to {run_training(train_config(args), command=command_line())}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Merge the adapter and print the folder `guardserve serve --model` can load."""
    from balto.export import export_adapter

    out = export_adapter(args.adapter, args.out, args.base, args.cache_dir)
    print(f"merged model saved to {out}")
    return 0
