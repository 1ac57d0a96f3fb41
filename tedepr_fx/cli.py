"""The ``tedepr-fx`` command line.

Each subcommand is one entry of :data:`COMMANDS`: a name, a one-line help, a
function that adds its arguments to an ``argparse`` parser, and a function that
runs it and returns the exit status. Adding ``plan`` or ``demo`` is one more entry;
import torch inside the run function, never at module level, so that ``check``
and ``schema`` stay fast.

Exit status: 0 success, 2 invalid input (bad rule file, missing file, bad
arguments). Errors a user can cause print as messages, never as tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_INVALID = 2


@dataclass(frozen=True)
class Command:
    """One subcommand of ``tedepr-fx``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="rule files (YAML) to validate")


def _check(args: argparse.Namespace) -> int:
    from tedepr_fx.errors import RuleError
    from tedepr_fx.rules import load_rules

    status = EXIT_OK
    for file in args.files:
        try:
            load_rules(Path(file))
        except RuleError as error:
            status = EXIT_INVALID
            print(f"INVALID {file}: {len(error.errors)} error(s)")
            for located in error.errors:
                print(f"  {located}")
        else:
            print(f"OK {file}")
    return status


def _schema_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--indent", type=int, default=2, help="JSON indentation (default 2)")


def _schema(args: argparse.Namespace) -> int:
    from tedepr_fx.rules import RuleSet

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **RuleSet.model_json_schema()}
    print(json.dumps(schema, indent=args.indent))
    return EXIT_OK


COMMANDS: list[Command] = [
    Command("check", "validate rule files; print OK or file:line:column errors (exit 2 if any is invalid)",
            _check_arguments, _check),
    Command("schema", "print the JSON Schema of rule files (for editors' YAML language servers)",
            _schema_arguments, _schema),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="tedepr-fx",
        description="TEDEPR for PyTorch: tensor-train / Tucker factorization and pruning at "
                    "initialization, driven by YAML rule files.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tedepr-fx``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on bad arguments, 0 on --help
        return int(exit_.code or 0)
    try:
        return args._run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
