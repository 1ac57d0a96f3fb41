"""One registry of pruning-at-initialization scorers.

Every scorer has the interface of :class:`~tedepr_fx.scoring.base.Scorer`:
``get_scorer(name, **options).score(model, targets, batches, loss_fn, ...)``
returns one score tensor per prunable tensor, higher meaning keep. Each scorer
takes its own options only (a model in :mod:`tedepr_fx.rules.scoring`, written
under its name in the rules' ``scoring:``). Adding a scorer is one module, one
line in :data:`SCORERS`, its name in :data:`tedepr_fx.names.SCORER_NAMES` and,
if it has options, their model; the registry checks itself against both at import.
"""

from __future__ import annotations

from typing import Any

from tedepr_fx.names import SCORER_NAMES
from tedepr_fx.rules.scoring import Scoring, scorers_reading
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
_COMMON = ("density", "seed", "verbose")  # what every scorer takes besides its own options


def _check_registry() -> None:
    """The registry holds the scorers the rule language names, each with its section's options."""
    if sorted(SCORERS) != sorted(SCORER_NAMES):
        raise RuntimeError(f"tedepr_fx.scoring.SCORERS {sorted(SCORERS)} and tedepr_fx.names.SCORER_NAMES "
                           f"{sorted(SCORER_NAMES)} disagree")
    for name, cls in SCORERS.items():
        if cls.options_model is not Scoring.options_model(name):
            raise RuntimeError(f"scorer {name!r} takes {cls.options_model.__name__}, but the rules' "
                               f"scoring.{name} is {Scoring.options_model(name).__name__}")


_check_registry()


def _scorer_class(name: str) -> type[Scorer]:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; valid scorers: {', '.join(sorted(SCORERS))}")
    return SCORERS[name]


def get_scorer(name: str, *, density: float | None = None, seed: int = 0, verbose: bool = True,
               **options: Any) -> Scorer:
    """Build the scorer registered under ``name`` with its own ``options``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones), an option this scorer
        does not take (naming the scorers that do), or an invalid option value.
    """
    cls = _scorer_class(name)
    own = cls.options_model.model_fields
    unknown = sorted(set(options) - set(own))
    if unknown:
        owners = {key: scorers_reading(key) for key in unknown}
        hint = "".join(f"; {key!r} is an option of {', '.join(s)}" for key, s in owners.items() if s)
        raise ValueError(f"scorer {name!r}: unknown options {unknown}{hint}; "
                         f"valid: {sorted(own) + list(_COMMON)}")
    return cls(cls.options_model(**options), density=density, seed=seed, verbose=verbose)


def scorer_from_rules(name: str, scoring: Scoring, *, density: float | None, seed: int = 0,
                      verbose: bool = False) -> Scorer:
    """The scorer ``name`` configured by a rule file's ``scoring:`` section.

    The one place where rule options become scorer arguments: the transform pass,
    ``plan`` and the benchmarks all build their scorers here.
    """
    return _scorer_class(name)(scoring.options(name), density=density, seed=seed, verbose=verbose)


__all__ = [
    "SCORERS", "Scorer", "Target", "collect_targets", "default_output_fn", "get_scorer", "scorer_from_rules",
    "target_key",
    "ForceScorer", "GraspScorer", "MagnitudeScorer", "RandomScorer", "SnipScorer", "SynflowScorer",
    "TrainabilityScorer",
]
