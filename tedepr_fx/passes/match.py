"""The match pass: for every layer site, the first rule in file order whose selector accepts it.

A :class:`Decision` is the working state the later passes read (the rule, its
resolved budget and factorization); what ends up in the plan and the report is the
:class:`~tedepr_fx.record.LayerRecord` built from it once the rewrite is done.

A layer whose weight other holders share (``LayerSite.shared_with``: GPT-2's ``lm_head``
is its token embedding) is never split: whatever its rule asks, the decision is
``keep``, with a warning naming the tied group.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass

from torch.nn.utils import parametrize

from tedepr_fx.capture import Captured, LayerSite
from tedepr_fx.capture.sites import unsupported_layers
from tedepr_fx.errors import LayerError, LocatedError, Location, RuleError
from tedepr_fx.handlers import kinds, type_names
from tedepr_fx.ranks import RankSpec
from tedepr_fx.rules import Budget, Floor, Rule, RuleSet

# type names a functional call answers to, besides the module kind's own
_FUNCTIONAL_NAMES = {
    "linear": frozenset({"Linear", "torch.nn.Linear", "F.linear", "torch.nn.functional.linear"}),
    "conv2d": frozenset({"Conv2d", "torch.nn.Conv2d", "F.conv2d", "torch.nn.functional.conv2d"}),
}


@dataclass
class Decision:
    """What happens to one layer: the rule that decided and everything resolved from it."""

    site: LayerSite
    rule: Rule | None
    action: str  # "factorize" | "prune" | "keep" | "unmatched"
    old_type: str
    dense_shape: tuple[int, ...]
    dense_params: int
    format: str | None = None
    rank: RankSpec | None = None  # the rule's rank spec; "auto" is resolved by the factorize pass
    modes: str | tuple[list[int], list[int]] | None = None  # "auto" | (in_modes, out_modes)
    init: str = "scratch"
    scorer: str | None = None
    budget: Budget | None = None
    budget_id: str = "default"
    floor: Floor | None = None  # the rule's floors inside its budget
    min_rank: int | None = None  # the rule's floor for rank "auto"
    auto_rank: int | None = None  # set by the factorize pass when rank is "auto"

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def rule_name(self) -> str:
        return self.rule.name if self.rule is not None else ""

    @property
    def masked(self) -> bool:
        """Rewritten (factorized or pruned) with a budget: its new layer carries masks."""
        return self.action in ("factorize", "prune") and self.budget is not None


def match(captured: Captured, ruleset: RuleSet, *, strict: bool = False) -> list[Decision]:
    """Decide for every site of ``captured``; warn (or, with ``strict``, raise) on unused rules."""
    decisions = []
    used: set[str] = set()
    for site in captured.sites:
        module = site.get()
        names, dense_params = selector_inputs(site)
        dense_shape = site.kind.dense_shape(module)
        rule = ruleset.first_match(site.name, names, dense_params)
        old_type = ("F." + site.kind.name) if site.functional else type(module).__name__
        if rule is None:
            decisions.append(Decision(site, None, "unmatched", old_type, dense_shape, dense_params))
            continue
        used.add(rule.name)
        if rule.action != "keep" and site.shared_with:
            # a tied weight is one tensor with several users: never split it, keep it dense
            warnings.warn(f"layer {site.name!r} (rule {rule.name!r}): {tied_text(site)}; a tied weight is "
                          f"never {rule.action}d on one side only, so it is kept dense", UserWarning, stacklevel=3)
            decisions.append(Decision(site, rule, "keep", old_type, dense_shape, dense_params))
            continue
        decision = Decision(
            site, rule, rule.action, old_type, dense_shape, dense_params,
            init=rule.effective_init(ruleset.defaults),
        )
        if rule.action != "keep":
            _check_applicable(site, rule)
            budget = rule.effective_budget(ruleset.defaults)
            decision.budget = budget
            decision.budget_id = f"rule:{rule.name}" if rule.budget is not None else "default"
            decision.floor = rule.floor
            decision.scorer = rule.effective_scorer(ruleset.defaults) if budget is not None else None
        fact = rule.factorize
        if rule.action == "factorize" and fact is not None:  # the schema requires it there
            decision.format = fact.format
            decision.rank = fact.rank
            decision.min_rank = getattr(fact, "min_rank", None)
            modes = getattr(fact, "modes", None)
            decision.modes = modes if modes in (None, "auto") else (list(modes.in_), list(modes.out))
        decisions.append(decision)

    unsupported = _unsupported_matches(captured, ruleset)
    actions = {r.name: r.action for r in ruleset.rules}
    for rule_name, layers in unsupported.items():
        if rule_name in used and actions[rule_name] != "keep":
            warnings.warn(f"rule {rule_name!r} also matches {_listed(layers)}: unsupported layer kind "
                          f"(supported: {supported_kinds()}); left as it is", UserWarning, stacklevel=3)
    unused = [(i, r) for i, r in enumerate(ruleset.rules) if r.name not in used]
    if unused:
        why = "; ".join(f"rule {r.name!r} matches only {_listed(unsupported[r.name])}: unsupported layer kind "
                        f"(supported: {supported_kinds()})" for _, r in unused if r.name in unsupported)
        message = f"rule(s) matched no layer: {', '.join(r.name for _, r in unused)}" + (f" ({why})" if why else "")
        located = [LocatedError(ruleset.rule_where(i), f"rules[{i}]",
                                f"rule {r.name!r} matched no layer; {_nearest(r, captured)}")
                   for i, r in unused if r.name not in unsupported]
        if strict:
            raise RuleError([LocatedError(Location(ruleset.source or "<rules>"), "", message), *located])
        warnings.warn("\n  ".join([message, *map(str, located)]), UserWarning, stacklevel=3)
    return decisions


def _nearest(rule: Rule, captured: Captured) -> str:
    """Why a rule may have matched nothing: the closest layer names to its name pattern, the
    layer types present when no layer answers to its type, the sizes when its bounds exclude all."""
    sites = [(s, *selector_inputs(s)) for s in captured.sites]
    if not sites:
        return "the model has no weight-bearing layer"
    match = rule.match
    if match.type is not None:
        wanted = [match.type] if isinstance(match.type, str) else list(match.type)
        if not any(t in names for _, names, _ in sites for t in wanted):
            present = sorted({type(s.get()).__name__ for s, _, _ in sites})
            return f"no layer answers to type {'|'.join(wanted)} (the model's layer types: {', '.join(present)})"
    pattern = match.name or match.regex
    if pattern is not None:
        close = difflib.get_close_matches(pattern, [s.name for s, _, _ in sites], n=3, cutoff=0.3)
        return ("nearest layer names: " + ", ".join(close)) if close else "no layer name is close to its pattern"
    sizes = sorted(n for _, _, n in sites)
    return f"no layer within its size bounds (the layers hold {sizes[0]:,} to {sizes[-1]:,} weights)"


def _unsupported_matches(captured: Captured, ruleset: RuleSet) -> dict[str, list[str]]:
    """For each rule, the layers of an unsupported kind it would be the first to match."""
    found: dict[str, list[str]] = {}
    for name, module in unsupported_layers(captured.module, captured.sites):
        weight = module._parameters["weight"]
        numel = weight.numel() if weight is not None else 0
        rule = ruleset.first_match(name, type_names(module), numel)
        if rule is not None:
            found.setdefault(rule.name, []).append(f"{name!r} ({type(module).__name__})")
    return found


def supported_kinds() -> str:
    """The registered layer kinds, for messages about layers of another kind."""
    return ", ".join(sorted(k.name for k in kinds()))


def _listed(layers: list[str]) -> str:
    return ", ".join(layers[:5]) + (f" and {len(layers) - 5} more" if len(layers) > 5 else "")


def selector_inputs(site: LayerSite) -> tuple[frozenset[str], int]:
    """What a rule's ``match`` sees of a site besides its name: the type names it answers
    to and its dense weight count."""
    module = site.get()
    names = frozenset(type_names(module, site.kind))
    if site.functional:
        names = names | _FUNCTIONAL_NAMES.get(site.kind.name, frozenset())
    return names, site.kind.dense_params(module)


def tied_text(site: LayerSite) -> str:
    """Words for a site whose weight other holders share (its tied group)."""
    group = ", ".join(sorted((site.name, *site.shared_with)))
    return f"its weight is tied to {', '.join(site.shared_with)} (tied group: {group})"


def _check_applicable(site: LayerSite, rule: Rule) -> None:
    fmt = rule.factorize.format if rule.factorize is not None else None
    if rule.action == "factorize" and fmt not in site.kind.formats:
        raise LayerError(
            site.name,
            f"format {fmt!r} is not supported for {site.kind.name} layers "
            f"(supported: {', '.join(site.kind.formats) or 'none'})",
            rule.name,
        )
    if rule.action == "prune" and site.kind.masked is None:
        raise LayerError(site.name, f"{site.kind.name} layers cannot be pruned", rule.name)
    module = site.get()
    if rule.action == "prune" and parametrize.is_parametrized(module):
        tensors = ", ".join(getattr(module, "parametrizations", {}))
        raise LayerError(
            site.name, f"its {tensors} is parametrized (torch.nn.utils.parametrize: weight_norm, "
            "spectral_norm, ...), so a mask cannot be put on the tensor it computes with; remove the "
            f"parametrization first (torch.nn.utils.parametrize.remove_parametrizations(layer, {tensors!r})) "
            "or factorize the layer instead", rule.name)
