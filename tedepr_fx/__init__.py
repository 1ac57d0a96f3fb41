"""tedepr_fx: TEDEPR (tensor decomposition + pruning at initialization) as a torch.fx pass.

The public names are loaded lazily, so that ``tedepr-fx check`` and
``import tedepr_fx`` stay fast and do not import torch until a name needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tedepr_fx.errors import (
    BudgetError,
    CaptureError,
    DataError,
    LayerError,
    RuleError,
    StorageError,
)

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load_rules": "tedepr_fx.rules",
    "RuleSet": "tedepr_fx.rules",
    "transform": "tedepr_fx.api",
    "plan": "tedepr_fx.api",
    "report": "tedepr_fx.api",
    "save": "tedepr_fx.api",
    "load": "tedepr_fx.api",
    "save_pretrained": "tedepr_fx.storage",
    "from_pretrained": "tedepr_fx.storage",
    "Plan": "tedepr_fx.reporting",
    "Report": "tedepr_fx.reporting",
    "LayerRecord": "tedepr_fx.record",
    "diff": "tedepr_fx.lock",
    "check_lock": "tedepr_fx.lock",
    "load_lock": "tedepr_fx.lock",
    "explain": "tedepr_fx.explanation",
    "bake": "tedepr_fx.deploy",
    "densify": "tedepr_fx.deploy",
    "compact": "tedepr_fx.compaction",
    "CompactionRecord": "tedepr_fx.compaction",
}

__all__ = [
    "BudgetError", "CaptureError", "DataError", "LayerError", "RuleError", "StorageError", "__version__",
    "load_rules", "RuleSet", "transform", "plan", "report", "save", "load", "Plan", "Report",
    "LayerRecord", "diff", "check_lock", "load_lock", "bake", "densify", "compact", "CompactionRecord",
    "save_pretrained", "from_pretrained", "explain",
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tedepr_fx' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from tedepr_fx.api import load, plan, report, save, transform
    from tedepr_fx.compaction import CompactionRecord, compact
    from tedepr_fx.deploy import bake, densify
    from tedepr_fx.explanation import explain
    from tedepr_fx.lock import check_lock, diff, load_lock
    from tedepr_fx.record import LayerRecord
    from tedepr_fx.reporting import Plan, Report
    from tedepr_fx.rules import RuleSet, load_rules
    from tedepr_fx.storage import from_pretrained, save_pretrained
