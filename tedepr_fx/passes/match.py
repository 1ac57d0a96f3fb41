"""The match pass: for every layer site, the first rule in file order whose selector accepts it.

Each decision is recorded in the fx node's ``meta["tedepr"]`` when the layer is a
node of a traced region, and always in :attr:`Decision.record` (the module-swap
equivalent), from which the plan and the report are built.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from tedepr_fx.capture import Captured, LayerSite
from tedepr_fx.errors import LayerError, RuleError
from tedepr_fx.handlers import type_names

# type names a functional call answers to, besides the module kind's own
_FUNCTIONAL_NAMES = {
    "linear": frozenset({"Linear", "torch.nn.Linear", "F.linear", "torch.nn.functional.linear"}),
    "conv2d": frozenset({"Conv2d", "torch.nn.Conv2d", "F.conv2d", "torch.nn.functional.conv2d"}),
}


@dataclass
class Decision:
    """What happens to one layer: the rule that decided and everything resolved from it."""

    site: LayerSite
    rule: Any  # tedepr_fx.rules.Rule | None
    action: str  # "factorize" | "prune" | "keep" | "unmatched"
    old_type: str
    dense_shape: tuple[int, ...]
    dense_params: int
    format: str | None = None
    rank: Any = None  # the rule's rank spec; "auto" is resolved by the factorize pass
    modes: Any = None  # "auto" | (in_modes, out_modes) | None
    init: str = "scratch"
    scorer: str | None = None
    budget: Any = None  # tedepr_fx.rules.Budget | None
    budget_id: str = "default"
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def rule_name(self) -> str:
        return self.rule.name if self.rule is not None else ""


def site_module(site: LayerSite):
    """The module rules look at: a meta view for split attention projections, else the layer."""
    return site.meta["view"] if "view" in site.meta else site.get()


def match(captured: Captured, ruleset, *, strict: bool = False) -> list[Decision]:
    """Decide for every site of ``captured``; warn (or, with ``strict``, raise) on unused rules."""
    decisions = []
    used: set[str] = set()
    for site in captured.sites:
        module = site_module(site)
        names = type_names(module, site.kind)
        if site.functional:
            names = names | _FUNCTIONAL_NAMES.get(site.kind.name, frozenset())
        dense_shape = site.kind.dense_shape(module)
        dense_params = site.kind.dense_params(module)
        rule = ruleset.first_match(site.name, names, dense_params)
        old_type = ("F." + site.kind.name) if site.functional else type(module).__name__
        if rule is None:
            decisions.append(Decision(site, None, "unmatched", old_type, dense_shape, dense_params))
            continue
        used.add(rule.name)
        decision = Decision(
            site, rule, rule.action, old_type, dense_shape, dense_params,
            init=rule.effective_init(ruleset.defaults),
        )
        if rule.action != "keep":
            _check_applicable(decision)
            budget = rule.effective_budget(ruleset.defaults)
            decision.budget = budget
            decision.budget_id = f"rule:{rule.name}" if rule.budget is not None else "default"
            decision.scorer = rule.effective_scorer(ruleset.defaults) if budget is not None else None
        if rule.action == "factorize":
            fact = rule.factorize
            decision.format = fact.format
            decision.rank = fact.rank
            modes = getattr(fact, "modes", None)
            decision.modes = modes if modes in (None, "auto") else (list(modes.in_), list(modes.out))
        decisions.append(decision)
        _record(decision)

    unused = [r.name for r in ruleset.rules if r.name not in used]
    if unused:
        message = f"rule(s) matched no layer: {', '.join(unused)}"
        if strict:
            raise RuleError(f"{ruleset.source or '<rules>'}: {message}")
        warnings.warn(message, UserWarning, stacklevel=3)
    return decisions


def _check_applicable(decision: Decision) -> None:
    site, rule = decision.site, decision.rule
    if site.shared_with:
        raise LayerError(
            site.name,
            f"shares its weight with {', '.join(site.shared_with)}; a tied weight cannot be "
            f"{rule.action}d on one side only (use action: keep, or untie the weights)",
            rule.name,
        )
    if rule.action == "factorize" and rule.factorize.format not in site.kind.formats:
        raise LayerError(
            site.name,
            f"format {rule.factorize.format!r} is not supported for {site.kind.name} layers "
            f"(supported: {', '.join(site.kind.formats) or 'none'})",
            rule.name,
        )
    if rule.action == "prune" and "prune" not in site.kind.builders:
        raise LayerError(site.name, f"{site.kind.name} layers cannot be pruned", rule.name)


def _record(decision: Decision) -> None:
    decision.record = {
        "rule": decision.rule_name,
        "action": decision.action,
        "format": decision.format,
        "rank": decision.rank,
        "modes": decision.modes,
        "init": decision.init,
        "scorer": decision.scorer,
    }
    node = decision.site.node
    if node is not None:
        node.meta.setdefault("tedepr", {})[decision.name] = decision.record
