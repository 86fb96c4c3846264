"""The `guardserve` command: `serve`, `balto`, `halt`, `eval`, `guard`, each in guardserve.commands.

Building the parser reads only the settings models (pydantic); a subcommand imports torch,
transformers, vLLM, openai or scikit-learn when it runs, so `--version` and `--help` stay quick.
"""

from __future__ import annotations

import argparse
import sys

from guardserve import __version__
from guardserve.commands.balto import add_balto_parser
from guardserve.commands.eval import add_eval_parser
from guardserve.commands.guard import add_guard_parser
from guardserve.commands.halt import add_halt_parser
from guardserve.commands.serve import add_serve_parser


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="guardserve")
    parser.add_argument("--version", action="version", version=f"guardserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(commands)
    add_balto_parser(commands)
    add_halt_parser(commands)
    add_eval_parser(commands)
    add_guard_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `guardserve` console script."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
