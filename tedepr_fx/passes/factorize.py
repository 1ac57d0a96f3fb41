"""The factorize pass: put the module each decision asks for in the layer's place.

``action: factorize`` builds the layer of the rule's format (:mod:`tedepr_fx.formats`,
from scratch or decomposed from the layer's weight); ``action: prune`` builds the masked dense
module. ``rank: auto`` is resolved here from the layer's budget: the largest
uniform rank whose factors hold at most ``auto_rank_multiple`` times the entries
the budget keeps, so that fine-grained pruning has room to choose, and never below the
rule's ``min_rank`` or the format's :attr:`~tedepr_fx.formats.base.Format.auto_rank_floor`.
"""

from __future__ import annotations

from torch import nn

from tedepr_fx.errors import LayerError
from tedepr_fx.formats.base import get_format
from tedepr_fx.passes.match import Decision

DEFAULT_AUTO_RANK_MULTIPLE = 4.0


def factorize(decisions: list[Decision], *, auto_rank_multiple: float = DEFAULT_AUTO_RANK_MULTIPLE) -> None:
    """Swap in the new module of every ``factorize`` / ``prune`` decision (in place)."""
    for decision in decisions:
        if decision.action not in ("factorize", "prune"):
            continue
        module = decision.site.get()
        try:
            new = build(decision, module, auto_rank_multiple)
        except LayerError:
            raise
        except (ValueError, NotImplementedError, TypeError) as error:
            raise LayerError(decision.name, str(error), decision.rule_name) from error
        decision.site.set(new)


def build(decision: Decision, module: nn.Module, auto_rank_multiple: float) -> nn.Module:
    """The module replacing ``module``: the masked dense layer (prune) or the format's layer."""
    kind = decision.site.kind
    if decision.action == "prune":
        return kind.build_masked(module)
    if decision.format is None or decision.rank is None:
        raise LayerError(decision.name, "action: factorize needs a format and a rank", decision.rule_name)
    rank = decision.rank
    if rank == "auto":
        rank = resolve_auto_rank(decision, decision.format, module, auto_rank_multiple)
    return kind.build(decision.format, module, rank, decision.modes or "auto", decision.init)


def resolve_auto_rank(decision: Decision, format_name: str, module: nn.Module, multiple: float) -> int:
    """Largest uniform rank whose stored factors fit ``multiple`` x the layer's budget (at least 1).

    The budget checks live here; the search is the format's (:meth:`Format.auto_rank`).
    """
    budget = decision.budget
    if budget is None:
        raise LayerError(decision.name, "rank: auto needs a budget (defaults.budget or the rule's budget)",
                         decision.rule_name)
    if budget.of != "dense":
        raise LayerError(decision.name, "rank: auto needs a budget counted 'of: dense'", decision.rule_name)
    target = multiple * budget.target_density * decision.dense_params
    low = get_format(format_name).auto_rank(decision.site.kind.name, module, decision.modes or "auto", target,
                                            floor=decision.min_rank)
    decision.auto_rank = low
    return low
