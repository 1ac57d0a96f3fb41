"""The ``tedepr-fx`` command line.

Each subcommand is one entry of :data:`COMMANDS`: a name, a one-line help, a
function that adds its arguments to an ``argparse`` parser, and a function that
runs it and returns the exit status. Adding ``plan`` or ``demo`` is one more entry;
import torch inside the run function, never at module level, so that ``check``
and ``schema`` stay fast.

Exit status: 0 success, 1 a lock file that no longer matches (``plan --check-lock``), 2 invalid input (bad rule file, missing file, bad
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
from typing import TYPE_CHECKING, Any, cast

from tedepr_fx.names import LOSS_NAMES, SCORER_NAMES

if TYPE_CHECKING:  # torch is imported inside the run functions, never at module level
    import torch
    from torch import nn

EXIT_OK = 0
EXIT_CHANGED = 1  # plan --check-lock: the lock file no longer matches
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


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="PACKAGE.MODULE:FACTORY",
                        help="a zero-argument callable returning the model, e.g. tedepr_fx.models:resnet20")
    parser.add_argument("--rules", required=True, metavar="FILE", help="rule file (YAML)")
    parser.add_argument("--input-shape", metavar="N,C,H,W",
                        help="shape of one example input, e.g. 1,3,32,32 (default: what the model says "
                             "for itself: the zoo's example_input(), Hugging Face dummy_inputs, ...)")
    parser.add_argument("--input-dtype", choices=["float", "long"], default="float",
                        help="float: random normal inputs; long: token ids (0 or 1) for language models")
    parser.add_argument("--strict", action="store_true", help="a rule that matches no layer is an error")


def _factory(spec: str, what: str) -> Callable[[], object]:
    """The zero-argument callable ``PACKAGE.MODULE:NAME``, found in the current directory too."""
    import importlib

    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"{what} must be PACKAGE.MODULE:NAME; got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:  # console scripts do not search it
        sys.path.insert(0, os.getcwd())
    try:
        target = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot load {what} {spec!r}: {error}") from error
    if not callable(target):
        raise ValueError(f"{what} {spec!r} is not callable")
    return cast("Callable[[], object]", target)


def _load_model(spec: str) -> nn.Module:
    from torch import nn

    model = _factory(spec, "model")()
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _example(shape: str | None, dtype: str = "float") -> tuple[torch.Tensor] | None:
    if shape is None:
        return None
    import torch

    try:
        dims = tuple(int(d) for d in shape.split(","))
    except ValueError:
        raise ValueError(f"--input-shape must be comma-separated ints; got {shape!r}") from None
    if any(d < 1 for d in dims):
        raise ValueError(f"--input-shape must be positive ints (a batch of at least one sample); got {shape!r}")
    if dtype == "long":
        return (torch.randint(0, 2, dims, generator=torch.Generator().manual_seed(0)),)
    return (torch.randn(*dims),)


def _rules(args: argparse.Namespace) -> Any:
    from tedepr_fx.rules import load_rules

    rules = load_rules(Path(args.rules))
    return rules.with_scorer(args.scorer) if getattr(args, "scorer", None) else rules


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Print the errors a user can cause as one message, exit 2."""

    def wrapper(args: argparse.Namespace) -> int:
        from tedepr_fx.errors import TedeprError

        try:
            return run(args)
        except (TedeprError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_INVALID

    return wrapper


def _plan(args: argparse.Namespace) -> int:
    from tedepr_fx.api import plan

    if args.lock_file and not (args.lock or args.check_lock):
        raise ValueError("--lock-file needs --lock or --check-lock")
    result = plan(_load_model(args.model), _rules(args), _example(args.input_shape, args.input_dtype),
                  strict=args.strict)
    if args.lock or args.check_lock:
        return _lock(args, result)
    print(_formatted(result, args), end="")
    return EXIT_OK


def _formatted(result: Any, args: argparse.Namespace) -> str:
    """A plan or report as the output flags ask: terminal table, Markdown, JSON or CSV."""
    if getattr(args, "json", False):
        return str(result.to_json())
    if getattr(args, "csv", False):
        return str(result.to_csv())
    if getattr(args, "markdown", False):
        return str(result.to_markdown())
    return f"{result}\n"


def _format_arguments(parser: argparse.ArgumentParser) -> None:
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="print a Markdown table")
    fmt.add_argument("--json", action="store_true",
                     help="print JSON (versioned schema: docs/report.schema.json)")
    fmt.add_argument("--csv", action="store_true", help="print CSV, one row per layer")


def _lock(args: argparse.Namespace, result: Any) -> int:
    """``plan --lock``: write the lock file; ``plan --check-lock``: exit 1 with a diff when it moved."""
    from tedepr_fx.lock import check_lock, load_lock, lock_path, version_notes

    path = Path(args.lock_file) if args.lock_file else lock_path(args.rules)
    if args.lock:
        result.write_lock(path)
        print(f"wrote {path}")
        return EXIT_OK
    committed = load_lock(path)  # LockError (a ValueError): missing or garbled, exit 2
    for note in version_notes(result, committed):
        print(note, file=sys.stderr)
    moved = check_lock(result, committed)
    if moved:
        print(f"{path} no longer matches what {args.rules} does to the model "
              f"(rerun with --lock to update it):")
        print("\n".join(moved))
        return EXIT_CHANGED
    print(f"OK {path}")
    return EXIT_OK


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    _format_arguments(parser)
    lock = parser.add_mutually_exclusive_group()
    lock.add_argument("--lock", action="store_true",
                      help="write the lock file (default: the rule file with its suffix replaced by "
                           ".lock, e.g. rules/lenet.yaml -> rules/lenet.lock) instead of printing")
    lock.add_argument("--check-lock", action="store_true",
                      help="compare with the committed lock file: exit 0 when it matches, 1 with a "
                           "short diff when it does not, 2 when it is missing or garbled (a tool "
                           "or torch version difference is only a note)")
    parser.add_argument("--lock-file", metavar="PATH", help="the lock file for --lock / --check-lock")


def _diff_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD.lock", help="the lock file before")
    parser.add_argument("new", metavar="NEW.lock", help="the lock file after")


def _diff(args: argparse.Namespace) -> int:
    from tedepr_fx.lock import diff

    print(diff(Path(args.old), Path(args.new)), end="")
    return EXIT_OK


def _show_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--diff", action="store_true",
                        help="print the unified diff of the annotated code before and after the rewrite")
    parser.add_argument("--dot", metavar="PATH",
                        help="also write the rewritten graph as Graphviz DOT (.dot/.gv), or rendered "
                             "(.svg/.png/.pdf, needs Graphviz's dot program)")
    parser.add_argument("--chart", metavar="PATH.png",
                        help="also write a per-layer chart of weights and FLOPs (PNG, needs matplotlib)")


def _show(args: argparse.Namespace) -> int:
    from tedepr_fx.api import plan

    for option in ("dot", "chart"):
        _check_output_path(getattr(args, option), f"--{option}")
    result = plan(_load_model(args.model), _rules(args), _example(args.input_shape, args.input_dtype),
                  strict=args.strict)
    print(result.graph_diff() if args.diff else result.graph(), end="")
    if args.dot:
        print(f"wrote {result.write_dot(args.dot)}", file=sys.stderr)
    if args.chart:
        print(f"wrote {result.write_chart(args.chart)}", file=sys.stderr)
    return EXIT_OK


def _check_output_path(path: str | None, option: str) -> None:
    """An output file's directory must exist before any work is done."""
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise ValueError(f"{option} {path}: directory {Path(path).parent} does not exist")


def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("layer", metavar="LAYER", help="a layer name as `plan` prints it, e.g. encoder.layer.0.attention.self.query")


def _explain(args: argparse.Namespace) -> int:
    from tedepr_fx.explanation import explain

    print(explain(_load_model(args.model), _rules(args), args.layer,
                  _example(args.input_shape, args.input_dtype)))
    return EXIT_OK


def _transform_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("-o", "--output", required=True,
                        help="where to save the model (tedepr_fx.save: safetensors, compact, no pickle)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", choices=["scratch", "decompose"], help="override every rule's init")
    parser.add_argument("--data", metavar="PACKAGE.MODULE:FUNCTION",
                        help="a zero-argument callable returning the scoring batches: (inputs, targets) "
                             "pairs or dicts with labels (found in the current directory too)")
    parser.add_argument("--scorer", choices=list(SCORER_NAMES), help="score every rule with this scorer")
    parser.add_argument("--loss", choices=list(LOSS_NAMES),
                        help="the loss the scorers differentiate (default: the rules' scoring.loss)")


def _transform(args: argparse.Namespace) -> int:
    from tedepr_fx.api import report, save, transform

    _check_output(Path(args.output))  # before the transform, not after minutes of it
    data = _factory(args.data, "data")() if args.data else None
    model = transform(_load_model(args.model), _rules(args), example_inputs=_example(args.input_shape, args.input_dtype),
                      data=data, loss_fn=args.loss, seed=args.seed, strict=args.strict, init=args.init)
    save(model, args.output)
    print(report(model))
    print(f"saved {args.output}")
    return EXIT_OK


def _check_output(path: Path) -> None:
    """A ``ValueError`` when ``path`` cannot be written: a missing or read-only folder, a directory."""
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"-o {path}: is a directory; give a file name")
    if not folder.is_dir():
        raise ValueError(f"-o {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"-o {path}: the folder {folder} is not writable")


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a model saved by `tedepr-fx transform` or tedepr_fx.save")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")


def _inspect(args: argparse.Namespace) -> int:
    from tedepr_fx.storage import read_report

    result = read_report(args.file)  # the file's metadata alone: no unpickling, no model code
    print(result.to_markdown() if args.markdown else result)
    return EXIT_OK


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sparsity", type=float, default=None,
                        help="default: 0.995 on digits, 0.99 on Fashion-MNIST / MNIST")
    parser.add_argument("--epochs", type=int, default=None,
                        help="default: 20 on digits, 2 on Fashion-MNIST / MNIST")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 32 on digits, 128 on Fashion-MNIST / MNIST")
    parser.add_argument("--dataset", default="auto",
                        help="auto (Fashion-MNIST if installed, else scikit-learn digits), digits, "
                             "fashion-mnist, mnist")
    parser.add_argument("--root", help="directory with the data set's files")
    parser.add_argument("--seed", type=int, default=0)


def _demo(args: argparse.Namespace) -> int:
    from tedepr_fx.demo import run

    run(sparsity=args.sparsity, epochs=args.epochs, batch_size=args.batch_size, dataset=args.dataset,
        root=args.root, seed=args.seed, progress=sys.stderr.isatty())
    return EXIT_OK


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    from tedepr_fx.bench.command import add_arguments

    add_arguments(parser)


def _bench(args: argparse.Namespace) -> int:
    from tedepr_fx.bench.command import run

    return run(args)


COMMANDS += [
    Command("plan", "dry run: print what transform would do to a model (no weights touched)",
            _plan_arguments, _guarded(_plan)),
    Command("diff", "print the layers that changed between two lock files, and how",
            _diff_arguments, _guarded(_diff)),
    Command("show", "print the rewritten graph's code, each layer call annotated with what the rewrite "
            "makes of it (--diff: before vs after; --dot / --chart: pictures)",
            _show_arguments, _guarded(_show)),
    Command("explain", "why a layer gets its rule: every rule in order with the match term that "
            "accepted or rejected the layer", _explain_arguments, _guarded(_explain)),
    Command("transform", "transform a model and save it", _transform_arguments, _guarded(_transform)),
    Command("inspect", "print the report of a saved transformed model", _inspect_arguments,
            _guarded(_inspect)),
    Command("demo", "LeNet-300-100: dense vs TEDEPR vs SNIP at the same sparsity, trained briefly",
            _demo_arguments, _guarded(_demo)),
    Command("bench", "the benchmark suite: every model x method x sparsity x seed, cached records, "
            "Markdown table, plots, issue 10's targets", _bench_arguments, _guarded(_bench)),
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
    run: Callable[[argparse.Namespace], int] = args._run  # set by build_parser
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
