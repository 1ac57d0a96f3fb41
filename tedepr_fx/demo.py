"""``tedepr-fx demo``: LeNet-300-100, dense vs TEDEPR vs every pruning-at-initialization baseline.

Uses Fashion-MNIST when Debian's ``dataset-fashion-mnist`` is installed, else the
8x8 ``digits`` set that ships inside scikit-learn (no download either way). Each
baseline is a scorer of the library (SNIP, GraSP, SynFlow, FORCE, magnitude,
random) on the dense weights of every layer, under the same global budget,
initialisation, data and training as TEDEPR. Every accuracy printed is measured
in this run.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tedepr_fx.api import plan, report, transform
from tedepr_fx.data import Dataset, load_dataset, make_loaders, scoring_batches
from tedepr_fx.models import LeNet300100
from tedepr_fx.policies import path as policy_path
from tedepr_fx.rules import load_rules
from tedepr_fx.train import evaluate, train

TEDEPR = "tedepr (TT + trainability)"
RULES = policy_path("lenet")  # package data: found in a clone and in an installed wheel alike


BASELINES = ("snip", "grasp", "synflow", "force", "magnitude", "random")


@dataclass(frozen=True)
class Settings:
    """What the demo trains with on one data set."""

    sparsity: float
    epochs: int
    batch_size: int


# digits has 1,437 training images: 20 epochs of batch 32 take about a second per model and are
# what it takes to train at all this sparse (50,200 weights -> 251); Fashion-MNIST's 60,000
# need 2 epochs of 128
SETTINGS = {"digits": Settings(0.995, 20, 32)}
DEFAULT_SETTINGS = Settings(0.99, 2, 128)


def baseline_rules(scorer: str, sparsity: float) -> dict[str, Any]:
    """A baseline: ``scorer`` on the dense weights of every layer, one global budget."""
    return {
        "version": 1,
        "defaults": {"scorer": scorer, "budget": {"sparsity": sparsity, "allocation": "global"}},
        "rules": [{"name": f"dense-{scorer}", "match": {"type": "Linear"}, "action": "prune"}],
    }


def run(*, sparsity: float | None = None, epochs: int | None = None, batch_size: int | None = None,
        dataset: str = "auto", root: str | None = None, seed: int = 0, rules_path: str | Path = RULES,
        baselines: tuple[str, ...] = BASELINES, progress: bool = True,
        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train dense, TEDEPR and baseline LeNet-300-100 models; return their measured accuracies.

    ``sparsity``, ``epochs`` and ``batch_size`` default to the data set's :data:`SETTINGS`.
    """
    started = time.perf_counter()
    # small batches of a small MLP: one thread is faster than two fighting over a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_dataset(dataset, root)
        chosen = SETTINGS.get(data.name, DEFAULT_SETTINGS)
        settings = Settings(chosen.sparsity if sparsity is None else sparsity,
                            chosen.epochs if epochs is None else epochs,
                            chosen.batch_size if batch_size is None else batch_size)
        return _run(data, settings, seed, rules_path, baselines, progress, echo, started)
    finally:
        torch.set_num_threads(threads)


def _run(data: Dataset, settings: Settings, seed: int, rules_path: str | Path, baselines: tuple[str, ...],
         progress: bool, echo: Callable[[str], None], started: float) -> dict[str, Any]:
    sparsity, epochs, batch = settings.sparsity, settings.epochs, settings.batch_size
    batches = scoring_batches(data, n_batches=10, batch_size=batch, seed=seed)
    in_features = math.prod(data.input_shape)
    example = (batches[0][0][:2],)
    echo(f"data: {data.name} ({len(data.train)} train / {len(data.test)} test images, "
         f"from {data.source})")

    torch.manual_seed(seed)
    dense = LeNet300100(in_features=in_features, num_classes=data.num_classes)
    rules = load_rules(rules_path).with_budget(sparsity=sparsity)
    echo("")
    echo(str(plan(dense, rules, example_inputs=example)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collapsed layers are listed in the table below instead
        models: dict[str, nn.Module] = {"dense": dense, TEDEPR: transform(
            dense, rules, example_inputs=example, data=batches, seed=seed, verbose=progress)}
        for scorer in baselines:
            models[f"{scorer} on dense"] = transform(dense, baseline_rules(scorer, sparsity),
                                                     example_inputs=example, data=batches, seed=seed,
                                                     verbose=progress)
    results: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        # every model sees the same batches in the same order: a fresh loader from the same seed
        train_loader, test_loader = make_loaders(data, batch_size=batch, seed=seed)
        torch.manual_seed(seed)
        train(model, train_loader, epochs=epochs, lr=0.05, momentum=0.9, progress=progress, desc=name)
        rows = report(model).rows if model is not dense else []
        kept = (sum(r.kept for r in rows) if model is not dense
                else sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight")))
        results[name] = {"accuracy": evaluate(model, test_loader), "kept_weights": kept,
                         "collapsed": [r.name for r in rows if r.collapse]}

    dense_weights = results["dense"]["kept_weights"]
    echo("")
    echo(f"test accuracy after {epochs} epoch(s) of SGD (lr 0.05, momentum 0.9, batch {batch}), "
         f"sparsity {sparsity} of the {dense_weights} dense weights:")
    for name, r in results.items():
        collapsed = f"   collapsed after masking: {', '.join(r['collapsed'])}" if r["collapsed"] else ""
        echo(f"  {name:<28} {100 * r['accuracy']:6.2f} %   weights kept: {r['kept_weights']}{collapsed}")
    rivals = {n: r["accuracy"] for n, r in results.items() if n not in ("dense", TEDEPR)}
    if rivals:
        best = max(rivals, key=lambda n: rivals[n])
        gap = 100 * (results[TEDEPR]["accuracy"] - rivals[best])
        echo(f"TEDEPR vs the strongest pruning-at-initialization baseline ({best}): "
             f"{gap:+.2f} points, chance is {100 / data.num_classes:.0f} %")
    echo(f"({time.perf_counter() - started:.0f} s)")
    return results
