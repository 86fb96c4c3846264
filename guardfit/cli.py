"""`guardserve guard fit-probe|calibrate`: a model's hallucination probe and guard thresholds."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import get_args

from engine.model_store import DEFAULT_MODEL, resolve_model
from groundedqa.halueval import check_dev_lines
from guard.calibration import ChainSetting
from guard.config import ChainChoice
from guard.probe import PROBE_FILE, PROBES_DIR


def _lines(text: str) -> tuple[int, int]:
    """'FIRST-LAST' (1-based, inclusive) as a pair, within HaluEval's development lines."""
    first, _, last = text.partition("-")
    span = (int(first), int(last or first))
    try:
        check_dev_lines(*span)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return span


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="Model name, HF folder or .gguf (default: %(default)s).",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="Model cache (default: ~/.cache/guardserve)."
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="Guard folder to write (default: guard/probes/MODEL).",
    )


def add_guard_parser(commands: argparse._SubParsersAction) -> None:
    """Register `guardserve guard` and its subcommands."""
    guard = commands.add_parser("guard", help="Fit a model's hallucination probe and thresholds.")
    sub = guard.add_subparsers(dest="guard_command", required=True)
    fit = sub.add_parser("fit-probe", help="Fit the probe on the model's own dev answers.")
    _model_flags(fit)
    fit.add_argument(
        "--fit-lines",
        type=_lines,
        default=(6001, 7400),
        help="Lines fitted on (default: 6001-7400).",
    )
    fit.add_argument(
        "--select-lines",
        type=_lines,
        default=(5601, 5800),
        help="Lines scoring the chosen probe, never fitted on (default: 5601-5800).",
    )
    fit.add_argument(
        "--c",
        type=float,
        nargs="+",
        default=[0.001, 0.003, 0.01],
        help="Inverse L2 strengths swept with the layer (default: %(default)s).",
    )
    fit.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="Keep the decoded answers here and reuse them on a later run (default: none).",
    )
    fit.set_defaults(handler=run_fit_probe)
    cal = sub.add_parser(
        "calibrate", help="Choose thresholds on dev lines for an abstention budget."
    )
    _model_flags(cal)
    cal.add_argument(
        "--lines",
        type=_lines,
        default=(5401, 5600),
        help="Lines calibrated on (default: 5401-5600).",
    )
    cal.add_argument(
        "--max-abstention",
        type=float,
        default=0.15,
        help="Abstention budget (default: %(default)s).",
    )
    cal.add_argument(
        "--grid",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="Settings to try: a JSON list of {name: value} (default: the built-in grid).",
    )
    chain_defaults = ChainSetting()
    cal.add_argument(
        "--chains",
        type=int,
        default=chain_defaults.chains,
        help="Chains decoded per question, the answer chosen among those passing the global "
        "check (default: %(default)s).",
    )
    cal.add_argument(
        "--chain-choice",
        choices=get_args(ChainChoice),
        default=chain_defaults.chain_choice,
        help="How the answer is chosen among passing chains (default: %(default)s).",
    )
    cal.add_argument(
        "--sampling-temperature",
        type=float,
        default=chain_defaults.sampling_temperature,
        help="Sampling temperature of the chains after the first (default: %(default)s).",
    )
    cal.add_argument(
        "--prefer-supported",
        action=argparse.BooleanOptionalAction,
        default=chain_defaults.prefer_supported,
        help="Choose among the passing chains whose answer the claim verifier supports, when "
        "any (default: %(default)s).",
    )
    cal.set_defaults(handler=run_calibrate)


def _guard_dir(args: argparse.Namespace) -> Path:
    return args.out or PROBES_DIR / Path(args.model).name


def run_fit_probe(args: argparse.Namespace) -> int:
    """Fit, report the AUROC figures, save the probe."""
    from guardfit.probe_fit import fit_probe

    logging.basicConfig(level=logging.INFO)
    model_dir = resolve_model(args.model, args.cache_dir)
    out = _guard_dir(args) / PROBE_FILE
    probe = fit_probe(
        model_dir,
        args.model,
        args.fit_lines,
        args.select_lines,
        out,
        strengths=tuple(args.c),
        cache_dir=args.cache,
    )
    assert probe.fit is not None
    print(f"layer {probe.layer}, C {probe.fit.c}; answer-level AUROC on {args.select_lines}:")
    for name, value in sorted(probe.fit.auroc.items(), key=lambda kv: -kv[1]):
        print(f"  {name:8s} {value:.3f}")
    print(f"wrote {out}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    """Decode the lines under each setting and save the calibration beside the probe."""
    from guardfit.calibration_run import DEFAULT_GRID, run_calibration

    logging.basicConfig(level=logging.INFO)
    model_dir = resolve_model(args.model, args.cache_dir)
    grid = tuple(args.grid) if args.grid else DEFAULT_GRID
    chains = ChainSetting(
        chains=args.chains,
        chain_choice=args.chain_choice,
        sampling_temperature=args.sampling_temperature,
        prefer_supported=args.prefer_supported,
    )
    calibration = run_calibration(
        model_dir, _guard_dir(args), args.lines, args.max_abstention, grid=grid, chains=chains
    )
    print(calibration.model_dump_json(indent=2))
    return 0
