"""The rule language: pydantic models (:mod:`.schema`, :mod:`.scoring`) and the YAML loader (:mod:`.loader`).

No torch import here, so that ``tedepr-fx check`` and ``tedepr-fx schema`` stay fast.
"""

from tedepr_fx.names import ScorerName
from tedepr_fx.rules.loader import MAX_DEPTH, MAX_NODES, load_rules, parse_rules
from tedepr_fx.rules.schema import (
    Budget,
    Defaults,
    Factorization,
    Floor,
    InitName,
    Match,
    Rule,
    RuleSet,
    TTFactorization,
    TTModes,
    TuckerFactorization,
)
from tedepr_fx.rules.scoring import (
    ForceOptions,
    GraspOptions,
    ScorerOptions,
    Scoring,
    SynflowOptions,
    TrainabilityOptions,
)

__all__ = [
    "MAX_DEPTH", "MAX_NODES", "Budget", "Defaults", "Factorization", "Floor", "InitName", "Match", "Rule",
    "RuleSet", "ScorerName", "Scoring", "TTFactorization", "TTModes", "TuckerFactorization",
    "ScorerOptions", "TrainabilityOptions", "GraspOptions", "SynflowOptions", "ForceOptions",
    "load_rules", "parse_rules",
]
