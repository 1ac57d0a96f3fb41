"""One cell of the suite: (model, method, sparsity, seed) -> build, transform, train, evaluate, record.

For a given model and seed every method starts from the same dense initialisation
(``torch.manual_seed(seed)`` before the model is built), its scorer sees the same
seeded scoring batches, and training sees the same batches in the same order
(a loader seeded by ``seed``) with the same optimizer, schedule and epochs.

Transform (and so scoring) runs with PyTorch's ``math`` attention kernel: the
fused CPU attention kernel has no double backward, which GraSP and the exact
trainability meta-gradient need on the ViT. The library's scorers switch to it
themselves where they differentiate twice; the suite runs the whole transform under
it so that every method, the forward-only ones included, runs the same kernel.
"""

from __future__ import annotations

import hashlib
import platform
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import tedepr_fx
from tedepr_fx.api import report, transform
from tedepr_fx.bench.methods import mask_kept, method_rules, plain_weights
from tedepr_fx.bench.settings import Suite
from tedepr_fx.bench.zoo import SUITE_MODELS
from tedepr_fx.data import Dataset, make_loaders, scoring_batches
from tedepr_fx.policies import path as policy_path
from tedepr_fx.rules import load_rules
from tedepr_fx.scoring.base import math_attention
from tedepr_fx.train import evaluate, train

RECORD_SCHEMA = 1


@dataclass(frozen=True)
class Cell:
    """One cell of the grid; ``sparsity`` is None for ``dense``."""

    model: str
    method: str
    sparsity: float | None
    seed: int

    @property
    def label(self) -> str:
        sparsity = "-" if self.sparsity is None else f"{self.sparsity:g}"
        return f"{self.model} {self.method} s={sparsity} seed={self.seed}"


def policy_sha256(name: str) -> str:
    """sha256 of the shipped policy file's bytes (part of every cell's configuration)."""
    return hashlib.sha256(policy_path(name).read_bytes()).hexdigest()


def cell_config(cell: Cell, suite: Suite, data: Dataset) -> dict[str, Any]:
    """Everything that decides a cell's result; its hash is the cache key.

    ``data`` is the data set as the model reads it (subsets taken, images reshaped).
    """
    spec = SUITE_MODELS[cell.model]
    return {
        "schema": RECORD_SCHEMA,
        "model": cell.model,
        "model_build": spec.describe(data.input_shape, data.num_classes),
        "policy": spec.policy,
        "policy_sha256": policy_sha256(spec.policy),
        "method": cell.method,
        "sparsity": cell.sparsity,
        "seed": cell.seed,
        "data": {"name": data.name, "input_shape": list(data.input_shape), "geometry": spec.geometry,
                 "train_images": len(data.train), "test_images": len(data.test)},
        "training": {"optimizer": "sgd", "epochs": suite.epochs, "batch_size": suite.batch_size,
                     "lr": suite.lr, "momentum": suite.momentum, "schedule": "constant"},
        "scoring": {"batches": suite.scoring_batches, "batch_size": suite.scoring_batch_size},
        "tedepr_fx": tedepr_fx.__version__,
    }


def versions() -> dict[str, str]:
    """Library and interpreter versions for the records."""
    return {"tedepr_fx": tedepr_fx.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def run_cell(cell: Cell, suite: Suite, data: Dataset, *, progress: bool = False,
             config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one cell on ``data`` (as the model reads it); return its record (``status: "ok"``).

    ``config`` is the cell's configuration as planned (default: computed now); a policy
    file that changed since is an error, so that a record never carries the hash of a
    policy other than the one it ran. Exceptions of the transform or of training
    propagate; the suite records them.
    """
    started = time.perf_counter()
    spec = SUITE_MODELS[cell.model]
    config = config if config is not None else cell_config(cell, suite, data)
    if policy_sha256(spec.policy) != config["policy_sha256"]:
        raise RuntimeError(f"{policy_path(spec.policy)} changed since the suite was planned; "
                           "run the suite again to plan the cell with the new policy")
    torch.manual_seed(cell.seed)
    dense = spec.build(data.input_shape, data.num_classes)
    dense_counts = plain_weights(dense)
    batches = scoring_batches(data, n_batches=suite.scoring_batches,
                              batch_size=suite.scoring_batch_size, seed=cell.seed)
    example = (batches[0][0][:2],)
    rules = None
    if cell.method != "dense":
        if cell.sparsity is None:
            raise ValueError(f"{cell.label}: method {cell.method!r} needs a sparsity")
        rules = method_rules(cell.method, load_rules(policy_path(spec.policy)), cell.sparsity)
    caught: list[str] = []
    model: nn.Module = dense
    if rules is not None:
        with warnings.catch_warnings(record=True) as seen, math_attention():
            warnings.simplefilter("always")
            model = transform(dense, rules, example_inputs=example, data=batches, seed=cell.seed,
                              verbose=progress)
        caught = sorted({str(w.message) for w in seen})
    transformed = time.perf_counter()

    train_loader, test_loader = make_loaders(data, batch_size=suite.batch_size, seed=cell.seed)
    torch.manual_seed(cell.seed)
    losses = train(model, train_loader, epochs=suite.epochs, lr=suite.lr, momentum=suite.momentum,
                   progress=progress, desc=cell.label)
    trained = time.perf_counter()
    accuracy = evaluate(model, test_loader)
    finished = time.perf_counter()

    chance = 1.0 / data.num_classes
    record: dict[str, Any] = {
        "status": "ok",
        "config": config,
        "versions": versions(),
        "data_source": data.source,
        "accuracy": accuracy,
        "chance": chance,
        "at_chance": accuracy < 2 * chance,
        "losses": losses,
        "warnings": caught,
        "time_s": {"transform": transformed - started, "train": trained - transformed,
                   "evaluate": finished - trained, "wall": finished - started},
        "threads": torch.get_num_threads(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    record.update(_counts(model, dense_counts, transformed=rules is not None))
    return record


def _counts(model: nn.Module, dense_counts: dict[str, int], *, transformed: bool) -> dict[str, Any]:
    """Kept weights of the model, from the report and counted again from the masks."""
    dense_total = sum(dense_counts.values())
    if not transformed:
        layers = [{"name": n, "action": "dense", "dense": c, "stored": c, "kept": c}
                  for n, c in dense_counts.items()]
        return {"kept": {"total": dense_total, "dense": dense_total, "density": 1.0,
                         "report": None, "masks": None, "check": "dense model"},
                "layers": layers, "collapsed": []}
    rep = report(model)
    totals = rep.totals
    masked, _ = mask_kept(model)
    unchanged = sum(plain_weights(model).values())  # layers kept dense (keep rules, unmatched)
    counted = masked + unchanged
    reported = int(totals["kept"]) + int(totals["unmatched_dense"])
    layers = []
    for row in rep.rows:
        layers.append({"name": row.name, "rule": row.rule, "action": row.action, "type": row.new_type,
                       "format": row.format, "ranks": row.ranks, "dense": row.dense,
                       "stored": row.stored, "kept": row.kept, "collapse": row.collapse})
    layers += [{"name": row.name, "rule": "", "action": "unmatched", "type": row.old_type,
                "dense": row.dense, "stored": row.dense, "kept": row.dense} for row in rep.unmatched]
    check = "ok" if counted == reported and int(totals["dense"]) + int(totals["unmatched_dense"]) == dense_total \
        else f"mismatch: masks + dense layers {counted}, report {reported}, dense {dense_total}"
    return {"kept": {"total": reported, "dense": dense_total,
                     "density": reported / dense_total if dense_total else None,
                     "report": int(totals["kept"]), "masks": masked, "check": check},
            "layers": layers, "collapsed": [r.name for r in rep.rows if r.collapse]}
