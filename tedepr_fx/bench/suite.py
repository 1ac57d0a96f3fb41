"""Run a suite: plan its cells, skip the cached ones, run the rest with an ETA, write the outputs.

Outputs under ``out``:

* ``records/<model>/*.json``: one record per cell (:mod:`tedepr_fx.bench.store`);
* ``results.md``: the tables (:mod:`tedepr_fx.bench.table`) and the targets;
* ``results.json``: the records of this run's cells in one list;
* ``plots/<model>.png``: accuracy against sparsity (when matplotlib is installed).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tedepr_fx.bench.cell import Cell, cell_config, run_cell, versions
from tedepr_fx.bench.datasets import reshape_images, subset, target_side
from tedepr_fx.bench.plots import have_matplotlib, write_plots
from tedepr_fx.bench.settings import Suite
from tedepr_fx.bench.store import load_record, record_path, save_record
from tedepr_fx.bench.table import markdown
from tedepr_fx.bench.targets import Target, check_targets
from tedepr_fx.bench.zoo import SUITE_MODELS
from tedepr_fx.data import Dataset


@dataclass
class SuiteResult:
    """What a run did: the records of its cells, how many ran, what failed, the targets."""

    records: list[dict[str, Any]]
    ran: int
    cached: int
    failures: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    wall_s: float = 0.0
    outputs: list[Path] = field(default_factory=list)


def plan_cells(suite: Suite) -> list[Cell]:
    """The cells of ``suite``: per model, dense per seed, then every sparsity x method x seed."""
    cells = []
    for model in suite.models:
        if "dense" in suite.methods:
            cells += [Cell(model, "dense", None, seed) for seed in suite.seeds]
        for sparsity in suite.sparsities:
            for method in suite.methods:
                if method != "dense":
                    cells += [Cell(model, method, sparsity, seed) for seed in suite.seeds]
    return cells


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class _Eta:
    """Remaining time: each pending cell costs the mean wall time of finished cells of the
    same model and method, else of the same model, else of any cell."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, str], list[float]] = {}

    def add(self, cell: Cell, seconds: float) -> None:
        self.times.setdefault((cell.model, cell.method), []).append(seconds)

    def estimate(self, cell: Cell) -> float | None:
        same = self.times.get((cell.model, cell.method))
        if same:
            return statistics.fmean(same)
        model = [t for (m, _), ts in self.times.items() if m == cell.model for t in ts]
        anything = [t for ts in self.times.values() for t in ts]
        return statistics.fmean(model or anything) if anything else None

    def remaining(self, cells: Sequence[Cell]) -> float | None:
        guesses = [self.estimate(c) for c in cells]
        return None if any(g is None for g in guesses) else sum(g for g in guesses if g is not None)


def run_suite(suite: Suite, loaded: Dataset, *, out: Path, threads: int | None = None,
              progress: bool = False, plots: bool = True, command: str = "",
              echo: Callable[[str], None] = print) -> SuiteResult:
    """Run every cell of ``suite`` on ``loaded`` not already recorded under ``out``; write the outputs.

    ``suite`` is the suite as run on that data (:meth:`Suite.for_data` applied; see
    :func:`tedepr_fx.bench.datasets.load_suite_data` for loading it). ``threads`` sets
    torch's intra-op threads for the run (restored afterwards).
    """
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        base = subset(loaded, suite.train_subset, suite.test_subset)
        shaped: dict[int, Dataset] = {}

        def data_for(model: str) -> Dataset:
            geometry = SUITE_MODELS[model].geometry
            side = target_side(base.input_shape[-1], geometry)
            if side not in shaped:
                shaped[side] = reshape_images(base, geometry)
            return shaped[side]

        cells = plan_cells(suite)
        configs = {c: cell_config(c, suite, data_for(c.model)) for c in cells}
        records: dict[Cell, dict[str, Any]] = {}
        eta = _Eta()
        for cell in cells:
            found = load_record(record_path(out, configs[cell]))
            if found is not None:
                records[cell] = found
                eta.add(cell, float(found["time_s"]["wall"]))
        todo = [c for c in cells if c not in records]
        echo(f"suite {suite.name}: {len(cells)} cells ({len(records)} cached, {len(todo)} to run) on "
             f"{loaded.name} ({len(base.train)} train / {len(base.test)} test images from {loaded.source}); "
             f"{suite.epochs} epoch(s), batch {suite.batch_size}; threads {torch.get_num_threads()}; "
             f"results in {out}")
        failures = _run_cells(todo, suite, configs, records, data_for, out, eta, progress, echo)
    finally:
        torch.set_num_threads(previous_threads)
    ordered = [records[c] for c in cells if c in records]
    result = SuiteResult(ordered, ran=len(todo) - len(failures), cached=len(cells) - len(todo),
                         failures=failures, targets=check_targets(ordered))
    result.wall_s = time.perf_counter() - started
    result.outputs = _write_outputs(result, suite, base, out, plots, command, echo)
    return result


def _run_cells(todo: list[Cell], suite: Suite, configs: dict[Cell, dict[str, Any]],
               records: dict[Cell, dict[str, Any]], data_for: Callable[[str], Dataset], out: Path,
               eta: _Eta, progress: bool, echo: Callable[[str], None]) -> list[str]:
    failures: list[str] = []
    bar = tqdm(total=len(todo), desc=f"suite {suite.name}", unit="cell", disable=not progress,
               position=0, file=sys.stderr)
    try:
        for i, cell in enumerate(todo, start=1):
            path = record_path(out, configs[cell])
            try:
                record = run_cell(cell, suite, data_for(cell.model), progress=progress,
                                  config=configs[cell])
            except Exception as error:  # noqa: BLE001 - a failed cell is recorded and reported
                message = f"{cell.label}: {type(error).__name__}: {error}"
                failures.append(message)
                save_record(path, {"status": "error", "config": configs[cell], "versions": versions(),
                                   "error": message, "traceback": traceback.format_exc()})
                line = f"[{i}/{len(todo)}] FAILED {message}"
            else:
                record["key"] = path.stem.rsplit("_", 1)[-1]
                save_record(path, record)
                records[cell] = record
                wall = float(record["time_s"]["wall"])
                eta.add(cell, wall)
                chance = " (at chance)" if record["at_chance"] else ""
                line = (f"[{i}/{len(todo)}] {cell.label}: {100 * record['accuracy']:.2f} %{chance}, "
                        f"kept {record['kept']['total']} of {record['kept']['dense']} weights, "
                        f"{wall:.0f} s; suite ETA {_duration(eta.remaining(todo[i:]))}")
            bar.update(1)
            bar.set_postfix_str(f"ETA {_duration(eta.remaining(todo[i:]))}")
            with tqdm.external_write_mode(file=sys.stderr):
                echo(line)
    finally:
        bar.close()
    return failures


def _write_outputs(result: SuiteResult, suite: Suite, data: Dataset, out: Path, plots: bool,
                   command: str, echo: Callable[[str], None]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    compute = sum(float(r["time_s"]["wall"]) for r in result.records)
    preamble = [
        *([f"Command: `{command}`  "] if command else []),
        f"Suite `{suite.name}`: {len(suite.models)} model(s) x {len(suite.methods)} method(s) x "
        f"sparsities {', '.join(f'{s:g}' for s in suite.sparsities)} x seeds "
        f"{', '.join(map(str, suite.seeds))}.  ",
        f"Data: {data.name} from {data.source}, {len(data.train)} train / {len(data.test)} test images.  ",
        f"Training: {suite.epochs} epoch(s) of SGD, lr {suite.lr}, momentum {suite.momentum}, batch "
        f"{suite.batch_size}, constant schedule; scorers see {suite.scoring_batches} seeded batches of "
        f"{suite.scoring_batch_size} train images.  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}.  ",
        f"Cells: {len(result.records)} recorded ({result.ran} run now, {result.cached} from the cache), "
        f"{_duration(compute)} of cell time in all; this invocation took {_duration(result.wall_s)}.",
    ]
    lines = [t.line() for t in result.targets]
    text = markdown(result.records, title=f"tedepr-fx bench --suite {suite.name}", preamble=preamble,
                    failures=result.failures, targets=lines)
    written = [out / "results.md", out / "results.json"]
    written[0].write_text(text)
    written[1].write_text(json.dumps(result.records, indent=1, sort_keys=True) + "\n")
    if plots and have_matplotlib():
        written += write_plots(result.records, out / "plots")
    elif plots:
        echo("plots skipped: matplotlib is not installed (pip install 'tedepr_fx[bench]')")
    echo("")
    echo(text)
    echo("targets:")
    for line in lines:
        echo(f"  {line}")
    echo(f"wrote {', '.join(str(p) for p in written)}")
    return written
