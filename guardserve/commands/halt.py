"""`guardserve halt build-data|train`: HALT's command line (flags map to DataConfig/TrainConfig)."""

from __future__ import annotations

import argparse

from guardserve.flags import add_field_flags, command_line, training_settings
from halt.config import DataConfig, TrainConfig

BUILD_DATA_FLAGS = (
    "model",
    "cache_dir",
    "out",
    "first_line",
    "limit",
    "max_prompt_tokens",
    "samples",
    "max_new_tokens",
    "temperature",
    "top_p",
    "batch",
    "boundary",
    "seed",
    "device",
    "threads",
)
TRAIN_FLAGS = (
    "model",
    "cache_dir",
    "data",
    "out",
    "threshold",
    "mode",
    "max_prompt_tokens",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "max_grad_norm",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "seed",
    "device",
    "threads",
)
METAVARS = {"model": "PATH|default", "out": "DIR", "data": "DIR"}


def add_halt_parser(commands: argparse._SubParsersAction) -> None:
    """Register `guardserve halt` with its `build-data` and `train` subcommands."""
    halt = commands.add_parser("halt", help="Build HALT data and train HALT adapters.")
    sub = halt.add_subparsers(dest="halt_command", required=True)
    build = sub.add_parser(
        "build-data", help="Sample and judge the model's own answers on HaluEval dev lines."
    )
    add_field_flags(build, DataConfig, BUILD_DATA_FLAGS, METAVARS)
    build.set_defaults(handler=run_build_data)
    train = sub.add_parser("train", help="LoRA SFT on capability-aligned targets.")
    add_field_flags(train, TrainConfig, TRAIN_FLAGS, METAVARS)
    train.set_defaults(handler=run_train)


def data_config(args: argparse.Namespace) -> DataConfig:
    """The DataConfig of parsed `halt build-data` flags (``--model default``: the base model)."""
    return training_settings(DataConfig, args)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed `halt train` flags (``--model default``: the base model)."""
    return training_settings(TrainConfig, args)


def run_build_data(args: argparse.Namespace) -> int:
    """Build the dataset, then print where it went."""
    from halt.data import build_dataset

    print(f"saved to {build_dataset(data_config(args), command=command_line())}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    """Train, then print where the adapter went."""
    from halt.trainer import run_training

    print(f"saved to {run_training(train_config(args), command=command_line())}")
    return 0
