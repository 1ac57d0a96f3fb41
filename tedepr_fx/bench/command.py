"""``tedepr-fx bench``: its arguments and what it runs (torch is imported only when it runs).

Exit status: 0 when every cell has a record, 1 when some cell failed (its error is
in the report and in its record), 2 for bad arguments or missing data.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from tedepr_fx.bench.settings import DATA_CHOICES, METHODS, MODELS, SUITES, resolve_suite


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``tedepr-fx bench``."""
    parser.add_argument("--suite", default="quick", metavar="|".join(SUITES),
                        help="quick: every model, 1 seed, sparsities 0.99 and 0.998, reduced training "
                             "(13 minutes measured on a shared 2-core CPU); paper: the full table, "
                             "5 sparsities x 3 seeds, 3 epochs (default: quick)")
    parser.add_argument("--out", default="bench-results", metavar="DIR",
                        help="records, results.md, results.json and plots/ (default: bench-results); "
                             "finished cells found here are not run again")
    parser.add_argument("--models", nargs="+", metavar="MODEL", help=f"subset of: {' '.join(MODELS)}")
    parser.add_argument("--methods", nargs="+", metavar="METHOD", help=f"subset of: {' '.join(METHODS)}")
    parser.add_argument("--sparsities", nargs="+", type=float, metavar="S",
                        help="sparsities against the dense weights, each in [0, 1)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="N", help="seeds (ints >= 0)")
    parser.add_argument("--epochs", type=int, metavar="N", help="training epochs (overrides the suite's)")
    parser.add_argument("--data", default="auto", metavar="NAME|DIR",
                        help=f"{DATA_CHOICES} (default auto: Fashion-MNIST if installed, else digits, "
                             "which only the quick suite accepts)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch intra-op threads (default 1: these small models train faster on one "
                             "thread than on two that share the cores with other work)")
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")


def check_arguments(args: argparse.Namespace) -> None:
    """Validate the grid without loading anything; ``ValueError`` with a clear message."""
    resolve_suite(args.suite, models=args.models, methods=args.methods, sparsities=args.sparsities,
                  seeds=args.seeds, epochs=args.epochs)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1; got {args.threads}")


def command_line(args: argparse.Namespace) -> str:
    """The ``tedepr-fx bench`` command that reproduces ``args`` (for the report)."""
    words = ["tedepr-fx", "bench", "--suite", args.suite, "--out", args.out]
    for flag in ("models", "methods", "sparsities", "seeds"):
        value = getattr(args, flag)
        if value is not None:
            words += [f"--{flag}", *(f"{v:g}" if isinstance(v, float) else str(v) for v in value)]
    if args.epochs is not None:
        words += ["--epochs", str(args.epochs)]
    if args.threads != 1:
        words += ["--threads", str(args.threads)]
    if args.data != "auto":
        words += ["--data", args.data]
    if args.no_plots:
        words.append("--no-plots")
    return " ".join(shlex.quote(w) for w in words)


def run(args: argparse.Namespace) -> int:
    """Run the suite ``args`` describe; the exit status."""
    from pathlib import Path

    from tedepr_fx.bench.datasets import load_suite_data
    from tedepr_fx.bench.suite import run_suite

    check_arguments(args)
    loaded = load_suite_data(args.data, real_data=SUITES[args.suite].real_data)
    suite = resolve_suite(args.suite, models=args.models, methods=args.methods,
                          sparsities=args.sparsities, seeds=args.seeds, epochs=args.epochs,
                          dataset=loaded.name)
    result = run_suite(suite, loaded, out=Path(args.out), threads=args.threads,
                       progress=sys.stderr.isatty(), plots=not args.no_plots, command=command_line(args))
    if result.failures:
        print(f"{len(result.failures)} cell(s) failed; see {Path(args.out) / 'results.md'}", file=sys.stderr)
        return 1
    return 0
