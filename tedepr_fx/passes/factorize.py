"""The factorize pass: put the module each decision asks for in the layer's place.

``action: factorize`` builds the TT / Tucker module of the registry (from scratch
or decomposed from the layer's weight); ``action: prune`` builds the masked dense
module. ``rank: auto`` is resolved here from the layer's budget: the largest
uniform rank whose factors hold at most ``auto_rank_multiple`` times the entries
the budget keeps, so that fine-grained pruning has room to choose.
"""

from __future__ import annotations

from torch import nn

from tedepr_fx.errors import LayerError
from tedepr_fx.passes.match import Decision
from tedepr_fx.utils import meta_copy

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
    kind = decision.site.kind
    if decision.action == "prune":
        new = kind.builders["prune"](module)
        info = {"format": "dense"}
    else:
        rank = decision.rank
        if rank == "auto":
            rank = resolve_auto_rank(decision, module, auto_rank_multiple)
        new = kind.builders[decision.format](module, rank, decision.modes or "auto", decision.init)
        info = dict(getattr(new, "tedepr_info", {}))
    info.update({
        "name": decision.name,
        "rule": decision.rule_name,
        "action": decision.action,
        "old_type": decision.old_type,
        "how": decision.site.how,
        "dense_shape": list(decision.dense_shape),
        "init": decision.init if decision.action == "factorize" else None,
    })
    new.tedepr_info = info
    decision.record.update({k: info[k] for k in ("ranks", "in_modes", "out_modes") if k in info})
    return new


def resolve_auto_rank(decision: Decision, module: nn.Module, multiple: float) -> int:
    """Largest uniform rank whose stored factors fit ``multiple`` x the layer's budget (at least 1)."""
    budget = decision.budget
    if budget is None:
        raise LayerError(decision.name, "rank: auto needs a budget (defaults.budget or the rule's budget)",
                         decision.rule_name)
    if budget.of != "dense":
        raise LayerError(decision.name, "rank: auto needs a budget counted 'of: dense'", decision.rule_name)
    target = multiple * budget.target_density * decision.dense_params
    builder = decision.site.kind.builders[decision.format]
    probe = meta_copy(module)

    def stored(rank) -> int | None:
        try:
            return builder(probe, rank, decision.modes or "auto", "scratch").stored_params()
        except ValueError:
            return None

    full = builder(probe, "full", decision.modes or "auto", "scratch")
    high = max(full.tedepr_info.get("ranks", [1]))
    low = 1
    while low < high:  # stored(rank) grows with rank: binary search for the last rank that fits
        mid = (low + high + 1) // 2
        count = stored(mid)
        if count is not None and count <= target:
            low = mid
        else:
            high = mid - 1
    decision.record["auto_rank"] = low
    return low
