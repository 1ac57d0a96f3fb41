"""What each method of the suite does to the dense model: the rules it is transformed with.

Every method starts from the same dense model (same seed), sees the same scoring
batches and counts its sparsity against the dense weights:

* ``dense``: no transform.
* ``random``, ``magnitude``, ``snip``, ``grasp``, ``synflow``, ``force``,
  ``trainability``: that scorer on the dense weight of every ``Linear``, ``Conv2d``
  and ``LSTM`` (ViT attention included: tedepr_fx splits ``nn.MultiheadAttention``
  into its q, k, v and out projections), one global budget of the given sparsity, the
  library's default per-layer floor (``min_density``). ``trainability`` on the dense
  weights is ProsPr-style meta-gradient pruning (Alizadeh et al., ICLR 2022). The
  scorers' options (``scoring:``: batches, K steps, iterations...) are the model's
  policy's, so that a scorer is run the same way as inside TEDEPR.
* ``tedepr``: the model's shipped policy with only the sparsity changed
  (:meth:`~tedepr_fx.rules.RuleSet.with_budget`).
* ``lowrank``: the policy's structure with no pruning of the factors: every
  ``factorize`` rule gets the rank whose factors hold at most ``1 - sparsity`` of the
  layer's dense weights (a float rank share: the largest rank that fits, at least 1)
  and no budget (nor ``floor``); ``prune`` rules keep the policy's pruning at the same sparsity
  (their shared default budget becomes a budget of each rule, its ``min_density``
  capped at that share), ``keep`` rules keep.
  So the model keeps about the count TEDEPR keeps, from rank alone in the factorized
  layers. At extreme sparsity a rank-1 factorization can store more than its share:
  the records give the kept count of every cell.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tedepr_fx.bench.settings import SCORER_BASELINES
from tedepr_fx.layers.masked import MaskedMixin
from tedepr_fx.rules import RuleSet

#: the layer types every scorer baseline prunes
PRUNED_TYPES = ["Linear", "Conv2d", "LSTM"]


def method_rules(method: str, policy: RuleSet, sparsity: float) -> RuleSet | None:
    """The rules ``method`` transforms the dense model with (None: ``dense``, no transform).

    Raises
    ------
    ValueError
        For an unknown method.
    """
    if method == "dense":
        return None
    if method == "tedepr":
        return policy.with_budget(sparsity=sparsity)
    if method == "lowrank":
        return lowrank_rules(policy, sparsity)
    if method in SCORER_BASELINES:
        return baseline_rules(method, policy, sparsity)
    raise ValueError(f"unknown method {method!r}")


def baseline_rules(scorer: str, policy: RuleSet, sparsity: float) -> RuleSet:
    """``scorer`` on the dense weight of every Linear / Conv2d / LSTM, one global budget.

    The ``scoring:`` section (batches and scorer options) is the policy's.
    """
    data = policy.model_dump(by_alias=True, exclude_none=True)
    data["defaults"] = {"scorer": scorer,
                        "budget": {"sparsity": sparsity, "of": "dense", "allocation": "global"}}
    data["rules"] = [{"name": f"dense-{scorer}", "match": {"type": list(PRUNED_TYPES)},
                      "action": "prune"}]
    return RuleSet.model_validate(data)


def lowrank_rules(policy: RuleSet, sparsity: float) -> RuleSet:
    """The policy's factorizations at the rank share ``1 - sparsity``, factors not pruned."""
    with_budget = policy.with_budget(sparsity=sparsity)
    data = with_budget.model_dump(by_alias=True, exclude_none=True)
    default_budget = data["defaults"].pop("budget", None)
    rules: list[dict[str, Any]] = []
    for rule, raw in zip(with_budget.rules, data["rules"]):
        budget = rule.effective_budget(with_budget.defaults)
        if rule.action == "factorize":
            share = budget.target_density if budget is not None else 1.0
            raw["factorize"]["rank"] = min(1.0, max(float(share), 1e-9))
            raw.pop("budget", None)
            raw.pop("floor", None)  # nothing is pruned, so there is nothing to floor
        elif rule.action == "prune" and "budget" not in raw and default_budget is not None:
            raw["budget"] = _own_share(default_budget, budget)
        rules.append(raw)
    data["rules"] = rules
    return RuleSet.model_validate(data)


def _own_share(default_budget: dict[str, Any], budget: Any) -> dict[str, Any]:
    """The shared default budget as a prune rule's own, its floor capped at its share.

    A floor above the share (``transformer.yaml``'s ``min_density: 0.05`` at sparsity 0.99)
    is legal in a pool shared with factorized layers, but a rule that pools alone would keep
    more than its budget in every layer, which the rule check refuses.
    """
    own = dict(default_budget)
    if budget is not None and own.get("min_density", 0.0) > budget.target_density:
        own["min_density"] = budget.target_density
    return own


def mask_kept(model: nn.Module) -> tuple[int, int]:
    """``(kept, stored)``: True entries of every mask buffer, and the entries they cover.

    Counted from the modules' masks, independently of :func:`tedepr_fx.report`.
    """
    kept = stored = 0
    for module in model.modules():
        if isinstance(module, MaskedMixin):
            for name in module.prunable:
                mask = module.get_mask(name)
                kept += int(mask.sum())
                stored += mask.numel()
    return kept, stored


def plain_weights(model: nn.Module) -> dict[str, int]:
    """Weight entries (biases excluded) of every weight-bearing layer tedepr_fx did not replace."""
    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, MaskedMixin):
            continue
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            counts[name] = module.weight.numel()
        elif isinstance(module, nn.RNNBase):
            counts[name] = sum(p.numel() for n, p in module.named_parameters() if n.startswith("weight_"))
        elif isinstance(module, nn.MultiheadAttention):
            counts[name] = sum(p.numel() for n, p in module.named_parameters(recurse=False)
                               if n.endswith("proj_weight"))
    return counts
