"""`guardserve halt build-data|train`: HALT's command line (flags map to DataConfig/TrainConfig)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from halt.config import DataConfig, TrainConfig

ConfigT = TypeVar("ConfigT", DataConfig, TrainConfig)


def _flag(
    parser: argparse.ArgumentParser, schema: type[BaseModel], field: str, **kwargs: Any
) -> None:
    """Add ``--field-name``; the schema keeps the default (shown in the help)."""
    info = schema.model_fields[field]
    default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
    help_text = f"{info.description or ''} (default: {default})".strip()
    flag = "--" + field.replace("_", "-")
    parser.add_argument(flag, dest=field, default=argparse.SUPPRESS, help=help_text, **kwargs)


def add_build_data_parser(commands: argparse._SubParsersAction) -> None:
    """Flags of `guardserve halt build-data`."""
    build = commands.add_parser(
        "build-data", help="Sample and judge the model's own answers on HaluEval dev lines."
    )
    _flag(build, DataConfig, "model", metavar="PATH|default")
    _flag(build, DataConfig, "cache_dir")
    _flag(build, DataConfig, "out", type=Path, metavar="DIR")
    _flag(build, DataConfig, "first_line", type=int)
    _flag(build, DataConfig, "limit", type=int)
    _flag(build, DataConfig, "max_prompt_tokens", type=int)
    _flag(build, DataConfig, "samples", type=int)
    _flag(build, DataConfig, "max_new_tokens", type=int)
    _flag(build, DataConfig, "temperature", type=float)
    _flag(build, DataConfig, "top_p", type=float)
    _flag(build, DataConfig, "batch", type=int)
    _flag(build, DataConfig, "boundary", choices=["clause", "sentence"])
    _flag(build, DataConfig, "seed", type=int)
    _flag(build, DataConfig, "device")
    _flag(build, DataConfig, "threads", type=int)
    build.set_defaults(handler=run_build_data)


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    """Flags of `guardserve halt train`."""
    train = commands.add_parser("train", help="LoRA SFT on capability-aligned targets.")
    _flag(train, TrainConfig, "model", metavar="PATH|default")
    _flag(train, TrainConfig, "cache_dir")
    _flag(train, TrainConfig, "data", type=Path, metavar="DIR")
    _flag(train, TrainConfig, "out", type=Path, metavar="DIR")
    _flag(train, TrainConfig, "threshold", type=float)
    _flag(train, TrainConfig, "mode", choices=["cut", "drop"])
    _flag(train, TrainConfig, "max_prompt_tokens", type=int)
    _flag(train, TrainConfig, "epochs", type=int)
    _flag(train, TrainConfig, "batch_size", type=int)
    _flag(train, TrainConfig, "lr", type=float)
    _flag(train, TrainConfig, "weight_decay", type=float)
    _flag(train, TrainConfig, "max_grad_norm", type=float)
    _flag(train, TrainConfig, "lora_r", type=int)
    _flag(train, TrainConfig, "lora_alpha", type=int)
    _flag(train, TrainConfig, "lora_dropout", type=float)
    _flag(train, TrainConfig, "lora_target_modules", nargs="+")
    _flag(train, TrainConfig, "seed", type=int)
    _flag(train, TrainConfig, "device")
    _flag(train, TrainConfig, "threads", type=int)
    train.set_defaults(handler=run_train)


def add_halt_parser(commands: argparse._SubParsersAction) -> None:
    """Register `guardserve halt` with its `build-data` and `train` subcommands."""
    halt = commands.add_parser("halt", help="Build HALT data and train HALT adapters.")
    sub = halt.add_subparsers(dest="halt_command", required=True)
    add_build_data_parser(sub)
    add_train_parser(sub)


def _config(schema: type[ConfigT], args: argparse.Namespace) -> ConfigT:
    """The schema's config of parsed flags (``--model default`` is the base model)."""
    values = {k: v for k, v in vars(args).items() if k in schema.model_fields}
    if values.get("model") == "default":
        values["model"] = None
    return schema(**values)


def data_config(args: argparse.Namespace) -> DataConfig:
    """The DataConfig of parsed `halt build-data` flags."""
    return _config(DataConfig, args)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed `halt train` flags."""
    return _config(TrainConfig, args)


def _command() -> str:
    return shlex.join(["guardserve", *sys.argv[1:]])


def run_build_data(args: argparse.Namespace) -> int:
    """Build the dataset, then print where it went."""
    from halt.data import build_dataset

    print(f"saved to {build_dataset(data_config(args), command=_command())}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    """Train, then print where the adapter went."""
    from halt.trainer import run_training

    print(f"saved to {run_training(train_config(args), command=_command())}")
    return 0
