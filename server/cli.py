"""`guardserve serve`: its flags and the function that starts the server."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from server.config import ServerConfig

# Flags by group; each flag is a ServerConfig field and takes its default and help from there.
FLAG_GROUPS: dict[str, list[str]] = {
    "model": [
        "model",
        "served_model_name",
        "dtype",
        "max_model_len",
        "cache_dir",
        "exit_on_load_failure",
    ],
    "server": [
        "host",
        "port",
        "api_key",
        "request_timeout",
        "shutdown_grace_period",
        "max_body_bytes",
        "stream_keepalive_interval",
    ],
    "engines": [
        "plain_engine",
        "max_num_seqs",
        "max_prefill_tokens",
        "torch_threads",
        "device",
        "torch_runners",
        "tensor_parallel_size",
        "data_parallel_size",
        "gpu_memory_utilization",
        "kv_cache_memory_bytes",
        "enforce_eager",
        "seed",
    ],
    "guard": ["guard_default", "guard_probe"],
    "limits": ["max_queue"],
}

FLAG_OPTIONS: dict[str, dict[str, Any]] = {
    "served_model_name": {"nargs": "+", "metavar": "NAME"},
    "api_key": {"metavar": "KEY"},
    "model": {"metavar": "PATH"},
    "cache_dir": {"metavar": "DIR"},
}


def _add_flag(group: argparse._ArgumentGroup, name: str) -> None:
    """Add ServerConfig field `name` as `--name-with-dashes`, typed from the field."""
    info = ServerConfig.model_fields[name]
    flag = "--" + name.replace("_", "-")
    description = str(info.description)
    # A None default means "decided at start-up", which the description itself explains.
    stated = info.default is None and "default" in description
    help_text = description if stated else f"{description} (default: %(default)s)"
    options = dict(FLAG_OPTIONS.get(name, {}))
    if info.annotation is bool:
        group.add_argument(
            f"--no-{flag[2:]}",
            dest=name,
            action="store_false",
            default=info.default,
            help=f"{description} (default: {'on' if info.default else 'off'})",
        )
        return
    choices = getattr(info.annotation, "__args__", None)
    if choices is not None and all(isinstance(c, str) for c in choices):
        options["choices"] = list(choices)
    elif "nargs" not in options:
        base = next((t for t in (int, float) if info.annotation in (t, t | None)), None)
        if base is not None:
            options["type"] = base
    group.add_argument(flag, dest=name, default=info.default, help=help_text, **options)


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    """Flags of `guardserve serve`, named as in `vllm serve` where the meaning is the same."""
    serve = commands.add_parser(
        "serve",
        help="Start the OpenAI-compatible server.",
        description="Serve OpenAI chat completions: plain requests on vLLM or the torch runner, "
        "guarded ones (Token-Guard) on the torch runner.",
    )
    for title, names in FLAG_GROUPS.items():
        group = serve.add_argument_group(title)
        for name in names:
            _add_flag(group, name)
    serve.add_argument_group("logging").add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        help="Log level of the server and its engines (default: %(default)s)",
    )
    serve.set_defaults(handler=run_serve)


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig of parsed `serve` flags (the API key may come from the environment)."""
    values = {k: v for k, v in vars(args).items() if k in ServerConfig.model_fields}
    values["api_key"] = values.get("api_key") or os.environ.get("GUARDSERVE_API_KEY")
    return ServerConfig(**values)


def run_serve(args: argparse.Namespace) -> int:
    """Load the model and serve until SIGTERM/SIGINT, draining in-flight requests first."""
    from server.app import create_app
    from server.shutdown import DrainingServer

    config = server_config(args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = DrainingServer.for_app(create_app(config), log_level=args.log_level)
    server.run()
    return server.exit_code
