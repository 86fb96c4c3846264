"""`guardserve serve`: its flags and the function that starts the server."""

from __future__ import annotations

import argparse
import logging
import os

from server.config import ServerConfig


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    """Flags of `guardserve serve`, named as in `vllm serve` where the meaning is the same."""
    serve = commands.add_parser("serve", help="Start the OpenAI-compatible server.")
    serve.add_argument("--model", default=None, help="HF folder or .gguf (default: embedded).")
    serve.add_argument("--served-model-name", nargs="+", default=None)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=os.environ.get("GUARDSERVE_API_KEY"))
    serve.add_argument("--max-model-len", type=int, default=None)
    serve.add_argument("--max-num-seqs", type=int, default=16)
    serve.add_argument("--max-queue", type=int, default=256)
    serve.add_argument("--tensor-parallel-size", type=int, default=1)
    serve.add_argument("--data-parallel-size", type=int, default=1)
    serve.add_argument("--gpu-memory-utilization", type=float, default=0.1)
    serve.add_argument("--kv-cache-memory-bytes", type=int, default=None)
    serve.add_argument("--plain-engine", choices=["vllm", "torch", "auto"], default="auto")
    serve.add_argument("--guard-default", choices=["on", "off"], default="off")
    serve.add_argument("--guard-probe", default="auto")
    serve.add_argument("--device", default="auto")
    serve.add_argument("--torch-runners", type=int, default=None)
    serve.add_argument("--dtype", default="auto")
    serve.add_argument("--no-enforce-eager", dest="enforce_eager", action="store_false")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--request-timeout", type=float, default=None)
    serve.add_argument("--shutdown-grace-period", type=float, default=30.0)
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20)
    serve.add_argument("--cache-dir", default=None)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Load the model and serve until SIGTERM/SIGINT, draining in-flight requests first."""
    from server.app import create_app
    from server.shutdown import DrainingServer

    fields = ServerConfig.model_fields
    config = ServerConfig(**{k: v for k, v in vars(args).items() if k in fields})
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    DrainingServer.for_app(create_app(config), log_level=args.log_level).run()
    return 0
