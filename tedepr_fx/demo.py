"""``tedepr-fx demo``: LeNet-300-100, dense vs TEDEPR vs SNIP-on-dense, trained briefly.

Uses Fashion-MNIST when Debian's ``dataset-fashion-mnist`` is installed, else the
8x8 ``digits`` set that ships inside scikit-learn (no download either way).
Every accuracy printed is measured in this run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tedepr_fx.api import plan, report, transform
from tedepr_fx.data import load_dataset, make_loaders, scoring_batches
from tedepr_fx.models import LeNet300100
from tedepr_fx.policies import path as policy_path
from tedepr_fx.rules import load_rules
from tedepr_fx.train import evaluate, train

RULES = policy_path("lenet")  # package data: found in a clone and in an installed wheel alike


def snip_rules(sparsity: float) -> dict[str, Any]:
    """The baseline: SNIP (Lee et al. 2019) on the dense weights of every layer, same sparsity."""
    return {
        "version": 1,
        "defaults": {"scorer": "snip", "budget": {"sparsity": sparsity, "allocation": "global"}},
        "rules": [{"name": "dense-snip", "match": {"type": "Linear"}, "action": "prune"}],
    }


def run(*, sparsity: float = 0.99, epochs: int = 2, dataset: str = "auto", root: str | None = None,
        seed: int = 0, rules_path: str | Path = RULES, progress: bool = True,
        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train dense, TEDEPR and SNIP LeNet-300-100 models; return their measured accuracies."""
    started = time.perf_counter()
    # small batches of a small MLP: one thread is faster than two fighting over a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(sparsity, epochs, dataset, root, seed, rules_path, progress, echo, started)
    finally:
        torch.set_num_threads(threads)


def _run(sparsity: float, epochs: int, dataset: str, root: str | None, seed: int,
         rules_path: str | Path, progress: bool, echo: Callable[[str], None],
         started: float) -> dict[str, Any]:
    data = load_dataset(dataset, root)
    train_loader, test_loader = make_loaders(data, batch_size=128, seed=seed)
    batches = scoring_batches(data, n_batches=10, batch_size=128, seed=seed)
    in_features = math.prod(data.input_shape)
    example = (batches[0][0][:2],)
    echo(f"data: {data.name} ({len(data.train)} train / {len(data.test)} test images, "
         f"from {data.source})")

    torch.manual_seed(seed)
    dense = LeNet300100(in_features=in_features, num_classes=data.num_classes)
    rules = load_rules(rules_path).with_budget(sparsity=sparsity)
    echo("")
    echo(str(plan(dense, rules, example_inputs=example)))

    tedepr = transform(dense, rules, example_inputs=example, data=batches, seed=seed, verbose=progress)
    snip = transform(dense, snip_rules(sparsity), example_inputs=example, data=batches, seed=seed,
                     verbose=progress)

    results = {}
    for name, model in (("dense", dense), ("tedepr (TT + trainability)", tedepr),
                        ("snip on dense", snip)):
        torch.manual_seed(seed)
        train(model, train_loader, epochs=epochs, lr=0.05, momentum=0.9, progress=progress, desc=name)
        kept = (report(model).totals["kept"] if model is not dense
                else sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight")))
        results[name] = {"accuracy": evaluate(model, test_loader), "kept_weights": kept}

    dense_weights = results["dense"]["kept_weights"]
    echo("")
    echo(f"test accuracy after {epochs} epoch(s) of SGD (lr 0.05, momentum 0.9, batch 128), "
         f"sparsity {sparsity} of the {dense_weights} dense weights:")
    for name, r in results.items():
        echo(f"  {name:<28} {100 * r['accuracy']:6.2f} %   weights kept: {r['kept_weights']}")
    echo(f"({time.perf_counter() - started:.0f} s)")
    return results
