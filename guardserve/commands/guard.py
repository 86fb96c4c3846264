"""`guardserve guard fit-probe|calibrate`: a model's hallucination probe and guard thresholds."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from engine.model_store import DEFAULT_MODEL, resolve_model
from groundedqa.halueval import check_dev_lines
from guard.calibration import ChainSetting
from guardserve.flags import add_field_flags, add_flag, settings_of


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
    add_flag(parser, "--model", default=DEFAULT_MODEL, help="Model name, HF folder or .gguf.")
    add_flag(
        parser,
        "--cache-dir",
        help="Where models are prepared; None: $GUARDSERVE_CACHE, else ~/.cache/guardserve.",
    )
    add_flag(
        parser,
        "--out",
        type=Path,
        metavar="DIR",
        help="Guard folder to write; None: guard/probes/MODEL.",
    )


def add_guard_parser(commands: argparse._SubParsersAction) -> None:
    """Register `guardserve guard` and its subcommands."""
    guard = commands.add_parser("guard", help="Fit a model's hallucination probe and thresholds.")
    sub = guard.add_subparsers(dest="guard_command", required=True)
    fit = sub.add_parser("fit-probe", help="Fit the probe on the model's own dev answers.")
    _model_flags(fit)
    add_flag(fit, "--fit-lines", type=_lines, default="6001-7400", help="Lines fitted on.")
    add_flag(
        fit,
        "--select-lines",
        type=_lines,
        default="5601-5800",
        help="Lines scoring the chosen probe, never fitted on.",
    )
    add_flag(
        fit,
        "--c",
        type=float,
        nargs="+",
        default=[0.001, 0.003, 0.01],
        help="Inverse L2 strengths swept with the layer.",
    )
    add_flag(
        fit,
        "--cache",
        type=Path,
        metavar="DIR",
        help="Keep the decoded answers here and reuse them on a later run; None: not kept.",
    )
    fit.set_defaults(handler=run_fit_probe)
    cal = sub.add_parser(
        "calibrate", help="Choose thresholds on dev lines for an abstention budget."
    )
    _model_flags(cal)
    add_flag(cal, "--lines", type=_lines, default="5401-5600", help="Lines calibrated on.")
    add_flag(cal, "--max-abstention", type=float, default=0.15, help="Abstention budget.")
    add_flag(
        cal,
        "--grid",
        type=json.loads,
        metavar="JSON",
        help="Settings to try, a JSON list of {name: value}; None: the built-in grid.",
    )
    add_field_flags(cal, ChainSetting, ChainSetting.model_fields)
    cal.set_defaults(handler=run_calibrate)


def _guard_dir(args: argparse.Namespace) -> Path:
    from guard.probe import PROBES_DIR

    return args.out or PROBES_DIR / Path(args.model).name


def run_fit_probe(args: argparse.Namespace) -> int:
    """Fit, report the AUROC figures, save the probe."""
    from guard.probe import PROBE_FILE
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
    calibration = run_calibration(
        model_dir,
        _guard_dir(args),
        args.lines,
        args.max_abstention,
        grid=grid,
        chains=settings_of(ChainSetting, args),
    )
    print(calibration.model_dump_json(indent=2))
    return 0
