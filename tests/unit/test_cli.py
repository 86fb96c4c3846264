"""The `guardserve` command line: --version, and help with a default for every flag."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator

import pytest

from guardserve import __version__
from guardserve.cli import build_parser
from guardserve.commands.serve import server_config
from server.config import ServerConfig


def parsers(parser: argparse.ArgumentParser, path: str = "guardserve") -> Iterator[tuple]:
    """Every parser and subparser under `parser`, with its command path."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{path} {name}")


def test_version_and_serve_help_run_as_a_module() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "guardserve", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0
    assert version.stdout.strip() == f"guardserve {__version__}"
    helped = subprocess.run(
        [sys.executable, "-m", "guardserve", "serve", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0
    for group in ("model:", "server:", "engines:", "guard:", "limits:"):
        assert f"\n{group}\n" in helped.stdout
    assert "--request-timeout" in helped.stdout and "(default: 600.0)" in helped.stdout


def test_every_flag_of_every_command_has_help_with_its_default() -> None:
    missing = []
    for path, parser in parsers(build_parser()):
        for action in parser._actions:
            if not action.option_strings or action.dest in ("help", "version"):
                continue
            text = action.help or ""
            ok = "required" in text if action.required else "default" in text
            if not ok:
                missing.append(f"{path} {action.option_strings[0]}: {text!r}")
    assert not missing, "\n".join(missing)


def test_serve_defaults_are_the_server_config_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert server_config(args) == ServerConfig()
    assert ServerConfig().request_timeout < float("inf")
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["serve"]._actions}
    assert set(ServerConfig.model_fields) <= flags


HEAVY_MODULES = ("torch", "transformers", "openai", "sklearn", "vllm", "spacy")


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_import_no_heavy_library(flag: str) -> None:
    # Run as `python -m guardserve FLAG` would, then list what got imported.
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['guardserve', {flag!r}]\n"
        "try:\n"
        "    runpy.run_module('guardserve', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"
