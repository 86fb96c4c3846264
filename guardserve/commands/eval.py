"""`guardserve eval`: evaluate a running server over HTTP; `eval plot` and `eval table` of runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from groundedqa.datasets import HALUEVAL
from guardserve.flags import add_flag

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


def _default_api_key() -> str:
    return os.environ.get("GUARDSERVE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "unused"


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def add_eval_parser(commands: argparse._SubParsersAction) -> None:
    """Register `eval` (run an evaluation) with its nested `plot` and `table` subcommands."""
    parser = commands.add_parser(
        "eval",
        help="Evaluate a running OpenAI-compatible server (gold-in-answer, coverage, AURC, "
        "verifier Faith./Info./Q-Score, EM/F1).",
        description="Ask a running OpenAI-compatible server grounded questions over HTTP, judge "
        "every answer by the gold answer and by verifying its claims against its context, and "
        "write DIR/responses.jsonl and DIR/summary.json. `eval plot RUN_DIR... --out PNG` draws "
        "runs side by side (Faith. vs Info. in PNG, risk vs coverage beside it); `eval table "
        "RUN_DIR...` prints them as a markdown table.",
    )
    add_flag(parser, "--base-url", default=DEFAULT_BASE_URL, help="The server's /v1 URL.")
    add_flag(
        parser,
        "--api-key",
        help="API key; None: $GUARDSERVE_API_KEY, else $OPENAI_API_KEY, else 'unused'.",
    )
    add_flag(parser, "--model", help="Model to ask; None: the first of GET /v1/models.")
    add_flag(
        parser,
        "--dataset",
        default=HALUEVAL,
        help="'halueval' (development lines 1-8000 only) or a JSONL of {question, context, "
        "answer}.",
    )
    add_flag(
        parser,
        "--mode",
        choices=["plain", "guard", "verify"],
        default="plain",
        help="How the server answers.",
    )
    add_flag(
        parser,
        "--guard-options",
        type=_json_object,
        default="{}",
        metavar="JSON",
        help='Extra guard settings for guard or verify mode, e.g. \'{"on_failure": "truncate"}\'.',
    )
    add_flag(parser, "--limit", type=int, help="Items to run; None: all.")
    add_flag(parser, "--offset", type=int, default=0, help="Items to skip first.")
    add_flag(parser, "--concurrency", type=int, default=4, help="Requests in flight.")
    add_flag(parser, "--seed", type=int, default=0, help="Seed sent with every request.")
    add_flag(parser, "--max-tokens", type=int, default=128, help="Answer length cap.")
    add_flag(parser, "--temperature", type=float, default=0.0, help="Sampling temperature.")
    add_flag(parser, "--timeout", type=float, default=600.0, help="Seconds per request.")
    add_flag(
        parser,
        "--reference",
        type=Path,
        help="A previous run (typically plain) for Info. and abstention precision; None: each "
        "response is its own reference.",
    )
    add_flag(parser, "--out", type=Path, help="Run folder; None: runs/eval/MODE-TIMESTAMP.")
    add_flag(
        parser,
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Show progress bars.",
    )
    parser.set_defaults(handler=run_eval)

    nested = parser.add_subparsers(dest="eval_command", metavar="{plot,table}")
    plot = nested.add_parser(
        "plot", help="Plot Faith. vs Info. (PNG) and risk vs coverage (PNG_risk_coverage.png)."
    )
    plot.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="eval run folders")
    add_flag(
        plot, "--out", dest="plot_out", type=Path, required=True, metavar="PNG", help="The image."
    )
    plot.set_defaults(handler=run_plot)
    table = nested.add_parser("table", help="Print runs as a markdown table (judge per column).")
    table.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="eval run folders")
    table.set_defaults(handler=run_table)


def run_eval(args: argparse.Namespace) -> int:
    """Run one evaluation and write its run folder; prints the summary."""
    import asyncio

    from evals.harness import EvalSettings, run_requests, score_responses
    from evals.report import RESPONSES, build_summary, read_records, write_run
    from groundedqa.datasets import load_items
    from verify.verifier import Verifier

    out_dir: Path = args.out or Path("runs/eval") / (
        f"{args.mode}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    )
    if (out_dir / RESPONSES).exists():
        raise SystemExit(f"{out_dir} already holds a run; choose another --out")
    try:
        settings = EvalSettings(
            base_url=args.base_url,
            api_key=args.api_key or _default_api_key(),
            model=args.model,
            mode=args.mode,
            guard_options=args.guard_options,
            concurrency=args.concurrency,
            seed=args.seed,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            timeout_s=args.timeout,
        )
        items = load_items(args.dataset, args.offset, args.limit)
        reference = read_records(args.reference) if args.reference else None
    except (ValueError, OSError) as exc:
        raise SystemExit(f"guardserve eval: {exc}") from exc
    verifier = Verifier()
    run = asyncio.run(run_requests(settings, items, progress=args.progress))
    records = score_responses(
        items, run.completions, verifier, args.progress, settings.refusal_message
    )
    summary = build_summary(
        records,
        settings,
        model=run.model,
        dataset=args.dataset,
        offset=args.offset,
        limit=args.limit,
        wall_s=run.wall_s,
        reference=reference,
        reference_dir=args.reference,
    )
    write_run(out_dir, records, summary)
    print(summary.model_dump_json(indent=2))
    print(f"wrote {out_dir}", file=sys.stderr)
    return 0


def run_plot(args: argparse.Namespace) -> int:
    """Draw the runs' Faith. against Info. into a PNG, and their risk against coverage beside."""
    from evals.report import plot_risk_coverage, plot_runs, risk_coverage_png

    plot_runs(args.runs, args.plot_out)
    risk_png = risk_coverage_png(args.plot_out)
    plot_risk_coverage(args.runs, risk_png)
    print(f"wrote {args.plot_out} and {risk_png}", file=sys.stderr)
    return 0


def run_table(args: argparse.Namespace) -> int:
    """Print the runs' figures as a markdown table, the lines and judge of each named."""
    from evals.report import markdown_table

    print(markdown_table(args.runs), end="")
    return 0
