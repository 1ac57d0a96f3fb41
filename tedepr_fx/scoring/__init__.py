"""One registry of pruning-at-initialization scorers.

Every scorer has the interface of :class:`~tedepr_fx.scoring.base.Scorer`:
``get_scorer(name, **options).score(model, targets, batches, loss_fn, ...)``
returns one score tensor per prunable tensor, higher meaning keep. Adding a
scorer is one module plus one line in :data:`SCORERS`.
"""

from __future__ import annotations

from typing import Any

from tedepr_fx.scoring.base import Scorer, Target, collect_targets, default_output_fn, target_key
from tedepr_fx.scoring.force import ForceScorer
from tedepr_fx.scoring.grasp import GraspScorer
from tedepr_fx.scoring.magnitude import MagnitudeScorer
from tedepr_fx.scoring.random import RandomScorer
from tedepr_fx.scoring.snip import SnipScorer
from tedepr_fx.scoring.synflow import SynflowScorer
from tedepr_fx.scoring.trainability import TrainabilityScorer

SCORERS: dict[str, type[Scorer]] = {
    cls.name: cls
    for cls in (TrainabilityScorer, SnipScorer, GraspScorer, SynflowScorer, ForceScorer,
                MagnitudeScorer, RandomScorer)
}


def get_scorer(name: str, **options: Any) -> Scorer:
    """Build the scorer registered under ``name`` with the rules' ``scoring:`` options.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones) or an unknown option.
    """
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; valid scorers: {', '.join(sorted(SCORERS))}")
    unknown = sorted(set(options) - set(Scorer._options))
    if unknown:
        raise ValueError(f"scorer {name!r}: unknown options {unknown}; valid: {list(Scorer._options)}")
    return SCORERS[name](**options)


__all__ = [
    "SCORERS", "Scorer", "Target", "collect_targets", "default_output_fn", "get_scorer", "target_key",
    "ForceScorer", "GraspScorer", "MagnitudeScorer", "RandomScorer", "SnipScorer", "SynflowScorer",
    "TrainabilityScorer",
]
