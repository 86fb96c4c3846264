"""`guardserve serve`: its flags, grouped as an operator looks for them, and starting the server."""

from __future__ import annotations

import argparse
import logging
import os

from guardserve.flags import add_field_flags, add_flag, settings_of
from server.config import ServerConfig

# Each flag is a ServerConfig field and takes its type, default and help from there.
FLAG_GROUPS: dict[str, list[str]] = {
    "model": [
        "model",
        "served_model_name",
        "dtype",
        "max_model_len",
        "cache_dir",
        "exit_on_load_failure",
    ],
    "server": ["host", "port", "shutdown_grace_period", "stream_keepalive_interval"],
    "engines": ["plain_engine", "kv_cache_memory_bytes"],
    "engines, vLLM only": [
        "tensor_parallel_size",
        "data_parallel_size",
        "gpu_memory_utilization",
        "enforce_eager",
        "seed",
    ],
    "engines, torch only": [
        "device",
        "torch_runners",
        "torch_threads",
        "max_prefill_tokens",
        "prefix_cache_bytes",
    ],
    "limits": ["max_num_seqs", "max_queue", "max_body_bytes", "request_timeout"],
    "guard": ["guard_default", "guard_probe"],
    "observability": [],  # and --log-level, which is no server setting
    "security": ["api_key"],
}

METAVARS = {"model": "PATH", "served_model_name": "NAME", "cache_dir": "DIR", "api_key": "KEY"}


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    """Flags of `guardserve serve`, named as in `vllm serve` where the meaning is the same."""
    serve = commands.add_parser(
        "serve",
        help="Start the OpenAI-compatible server.",
        description="Serve OpenAI chat completions: plain requests on vLLM or the torch runner, "
        "guarded ones (Token-Guard) on the torch runner.",
    )
    groups = {title: serve.add_argument_group(title) for title in FLAG_GROUPS}
    groups[
        "observability"
    ].description = "Prometheus metrics at /metrics, liveness at /health, readiness at /ready."
    for title, names in FLAG_GROUPS.items():
        add_field_flags(groups[title], ServerConfig, names, METAVARS)
    add_flag(
        groups["observability"],
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        help="Log level of the server and its engines.",
    )
    serve.set_defaults(handler=run_serve)


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig of parsed `serve` flags (the API key may come from the environment)."""
    api_key = getattr(args, "api_key", None) or os.environ.get("GUARDSERVE_API_KEY")
    return settings_of(ServerConfig, args, api_key=api_key)


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
