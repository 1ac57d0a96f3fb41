"""Records -> per (model, method, sparsity) statistics over seeds, and the best baseline of each column.

The table, the plots and the target check all read this one summary, so they
cannot disagree about a mean or about which baseline is best.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tedepr_fx.bench.settings import BASELINES, METHODS, MODELS


@dataclass(frozen=True)
class Stat:
    """One cell of the table: accuracy over the seeds run.

    Attributes
    ----------
    accuracies
        Test accuracy of each seed, in [0, 1], in seed order.
    at_chance
        How many seeds ended below twice chance.
    kept, density
        Mean kept weights over seeds, and that count over the dense weights.
    """

    accuracies: tuple[float, ...]
    at_chance: int
    kept: float
    density: float | None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def spread(self) -> float:
        """Sample standard deviation over seeds (0 for a single seed)."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    @property
    def n(self) -> int:
        return len(self.accuracies)


#: model -> method -> sparsity (None for dense) -> statistics
Summary = dict[str, dict[str, dict[float | None, Stat]]]


def summarize(records: Iterable[dict[str, Any]]) -> Summary:
    """Group finished records by model, method and sparsity; models and methods in suite order."""
    groups: dict[tuple[str, str, float | None], list[dict[str, Any]]] = {}
    for record in records:
        if record.get("status") != "ok":
            continue
        config = record["config"]
        groups.setdefault((config["model"], config["method"], config["sparsity"]), []).append(record)
    summary: Summary = {}
    order = {name: i for i, name in enumerate(MODELS)}
    for (model, method, sparsity), members in sorted(
            groups.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][0])):
        members.sort(key=lambda r: int(r["config"]["seed"]))
        kept = statistics.fmean(float(r["kept"]["total"]) for r in members)
        dense = members[0]["kept"]["dense"]
        summary.setdefault(model, {}).setdefault(method, {})[sparsity] = Stat(
            accuracies=tuple(float(r["accuracy"]) for r in members),
            at_chance=sum(bool(r["at_chance"]) for r in members),
            kept=kept, density=kept / dense if dense else None)
    for model, methods in summary.items():
        summary[model] = {m: methods[m] for m in sorted(methods, key=_method_order)}
    return summary


def _method_order(method: str) -> tuple[int, str]:
    return (METHODS.index(method) if method in METHODS else len(METHODS), method)


def sparsities(summary: Summary, model: str) -> list[float]:
    """The sparsities measured for ``model``, ascending."""
    return sorted({s for by in summary[model].values() for s in by if s is not None})


#: relative slack on kept counts before a baseline counts as keeping more than allowed
KEPT_TOLERANCE = 0.01


def over_budget(stat: Stat, sparsity: float) -> bool:
    """Whether ``stat`` kept more than the budget, ``1 - sparsity`` of the dense weights."""
    return stat.density is not None and stat.density > (1.0 - sparsity) * (1 + KEPT_TOLERANCE)


def is_rival(summary: Summary, model: str, method: str, sparsity: float) -> bool:
    """Whether ``method`` competes with TEDEPR at ``sparsity``: a baseline that keeps no more
    weights than the budget (``1 - sparsity`` of the dense weights) or than TEDEPR does.

    Every scorer baseline keeps exactly its budget; ``lowrank`` can keep more (a rank-1
    factorization above its share, or dense parts of a factorized layer such as the
    hidden-to-hidden weights of a TT-LSTM) and is then left out of the comparison.
    """
    by = summary.get(model, {})
    stat = by.get(method, {}).get(sparsity)
    if method not in BASELINES or stat is None:
        return False
    if stat.density is None:
        return True
    ours = by.get("tedepr", {}).get(sparsity)
    allowed = max(1.0 - sparsity, ours.density if ours is not None and ours.density is not None else 0.0)
    return stat.density <= allowed * (1 + KEPT_TOLERANCE)


def best_baseline(summary: Summary, model: str, sparsity: float) -> tuple[str, Stat] | None:
    """The rival baseline (:func:`is_rival`) with the highest mean accuracy at ``sparsity``."""
    rivals = [(m, by[sparsity]) for m, by in summary.get(model, {}).items()
              if sparsity in by and is_rival(summary, model, m, sparsity)]
    if not rivals:
        return None
    return max(rivals, key=lambda ms: ms[1].mean)


def chance_of(records: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Chance accuracy of each model's data (1 / classes), from its records."""
    return {r["config"]["model"]: float(r["chance"]) for r in records if r.get("status") == "ok"}
