"""The factorize pass: put the module each decision asks for in the layer's place.

``action: factorize`` builds the layer of the rule's format (:mod:`tedepr_fx.formats`,
from scratch or decomposed from the layer's weight); ``action: prune`` builds the masked dense
module. ``rank: auto`` is resolved here from the layer's budget: the largest
uniform rank whose factors hold at most ``auto_rank_multiple`` times the entries
the budget keeps, so that fine-grained pruning has room to choose, and never below the
rule's ``min_rank`` or the format's :attr:`~tedepr_fx.formats.base.Format.auto_rank_floor`.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from tedepr_fx.errors import LayerError
from tedepr_fx.formats.base import get_format
from tedepr_fx.passes.match import Decision

DEFAULT_AUTO_RANK_MULTIPLE = 4.0


def factorize(decisions: list[Decision], *, auto_rank_multiple: float = DEFAULT_AUTO_RANK_MULTIPLE,
              input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Swap in the new module of every ``factorize`` / ``prune`` decision (in place).

    ``input_shapes`` (layer name -> input shape at the example input) lets a budget's
    ``flops`` bound the factorized layers' cost.
    """
    for decision in decisions:
        if decision.action not in ("factorize", "prune"):
            continue
        module = decision.site.get()
        try:
            new = build(decision, module, auto_rank_multiple, _flops_bound(decision, module, input_shapes))
        except LayerError:
            raise
        except (ValueError, NotImplementedError, TypeError) as error:
            raise LayerError(decision.name, str(error), decision.rule_name) from error
        decision.site.set(new)


def build(decision: Decision, module: nn.Module, auto_rank_multiple: float,
          flops_bound: tuple[float, tuple[int, ...]] | None = None) -> nn.Module:
    """The module replacing ``module``: the masked dense layer (prune) or the format's layer.

    ``flops_bound`` is (most FLOPs, input shape) for a factorized layer whose budget sets ``flops``.
    """
    kind = decision.site.kind
    if decision.action == "prune":
        return kind.build_masked(module)
    if decision.format is None or decision.rank is None:
        raise LayerError(decision.name, "action: factorize needs a format and a rank", decision.rule_name)
    rank = decision.rank
    if rank == "auto":
        rank = resolve_auto_rank(decision, decision.format, module, auto_rank_multiple, flops_bound)
    new = kind.build(decision.format, module, rank, decision.modes or "auto", decision.init)
    if flops_bound is not None:
        cost = new.flops(flops_bound[1])  # type: ignore[operator]
        if cost > flops_bound[0]:
            fix = ("no rank meets it (lowest tried)" if decision.rank == "auto" else "lower the rank, or write rank: auto")
            raise LayerError(decision.name, f"rank {rank} costs {cost:,} FLOPs at the example input, more than "
                             f"the budget's flops bound of {int(flops_bound[0]):,}: {fix}; raise budget.flops "
                             "or choose another format or modes", decision.rule_name)
    return new


def _flops_bound(decision: Decision, module: nn.Module,
                 input_shapes: Mapping[str, tuple[int, ...]] | None) -> tuple[float, tuple[int, ...]] | None:
    """(most FLOPs, input shape) for a factorized layer whose budget sets ``flops``; else None."""
    budget = decision.budget
    if decision.action != "factorize" or budget is None or budget.flops is None:
        return None
    shape = (input_shapes or {}).get(decision.name)
    if shape is None:
        raise LayerError(decision.name, "budget.flops needs the layer's input shape: pass example_inputs "
                         "(or data) so that the model can be run once", decision.rule_name)
    return budget.flops * decision.site.kind.dense_flops(module, shape), tuple(shape)


def resolve_auto_rank(decision: Decision, format_name: str, module: nn.Module, multiple: float,
                      flops_bound: tuple[float, tuple[int, ...]] | None = None) -> int:
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
                                            floor=decision.min_rank, flops_bound=flops_bound)
    if flops_bound is not None and decision.min_rank is None and low > 1:
        # the format's floor yields to an explicit flops bound; a rule's min_rank does not
        fits = get_format(format_name).auto_rank(decision.site.kind.name, module, decision.modes or "auto",
                                                 target, floor=1, flops_bound=flops_bound)
        low = min(low, fits)
    decision.auto_rank = low
    return low
