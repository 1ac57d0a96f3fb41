"""Why did this layer get that rule? Every rule in file order, with the match term that
accepted or rejected the layer.

:func:`explain` captures the model on the meta device (as ``plan`` does: no weight
copied, nothing run), finds the layer and tries each rule's ``match`` one term at a
time: ``type``, ``name`` (glob), ``regex``, ``min_params``, ``max_params``. The first
rule whose terms all hold decides; the rules after it are listed too, marked as never
reached, so that a reviewer sees what a reordering would change.

Example
-------
>>> import tedepr_fx
>>> from tedepr_fx.models import lenet5
>>> text = str(tedepr_fx.explain(lenet5(), "rules/lenet5.yaml", "fc1"))
>>> print(text.splitlines()[0])
layer fc1: Linear, 48,000 dense weights
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any

from torch import nn

from tedepr_fx.errors import LayerError


@dataclass(frozen=True)
class Term:
    """One selector of a rule's ``match`` and whether it holds for the layer."""

    text: str  # e.g. 'name "fc*"'
    holds: bool
    why: str = ""  # e.g. "the layer has 48,000" for a size bound that fails


@dataclass(frozen=True)
class RuleVerdict:
    """One rule, where it is written, and how its match went."""

    index: int
    name: str
    location: str
    action: str
    terms: tuple[Term, ...]
    state: str  # "decides" | "rejects" | "not reached"

    @property
    def accepts(self) -> bool:
        return all(t.holds for t in self.terms)


@dataclass(frozen=True)
class Explanation:
    """The rules tried on one layer, in file order."""

    layer: str
    old_type: str
    type_names: tuple[str, ...]
    dense: int
    kind: str
    verdicts: tuple[RuleVerdict, ...]

    @property
    def decided_by(self) -> RuleVerdict | None:
        return next((v for v in self.verdicts if v.state == "decides"), None)

    def __str__(self) -> str:
        lines = [f"layer {self.layer}: {self.old_type}, {self.dense:,} dense weights",
                 f"  answers to type: {', '.join(self.type_names)}",
                 "rules in file order (the first whose terms all hold decides):"]
        for v in self.verdicts:
            terms = ", ".join(f"{t.text} {'yes' if t.holds else 'no'}" + (f" ({t.why})" if t.why else "")
                              for t in v.terms)
            lines.append(f"  {v.index + 1}. {v.name} [{v.location}] {v.state.upper()}: {terms}")
        decided = self.decided_by
        lines.append(f"decision: rule {decided.name!r} ({decided.action})" if decided is not None
                     else "decision: no rule matches; the layer is kept dense (unmatched)")
        return "\n".join(lines)


def explain(model: nn.Module, rules: Any, layer: str, example_inputs: Any = None) -> Explanation:
    """How each rule of ``rules`` matched (or did not match) ``layer`` of ``model``.

    ``layer`` is a layer name as ``plan`` prints it. An unknown name raises
    :class:`LayerError` naming the closest layer names.
    """
    from tedepr_fx.api import dry_capture
    from tedepr_fx.passes.match import selector_inputs
    from tedepr_fx.rules import load_rules

    ruleset = load_rules(rules)
    captured, _ = dry_capture(model, example_inputs)
    sites = {s.name: s for s in captured.sites}
    site = sites.get(layer)
    if site is None:
        close = difflib.get_close_matches(layer, list(sites), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise LayerError(layer, f"no weight-bearing layer of this name in {type(model).__name__} "
                                f"({len(sites)} layers){hint}")
    type_names, dense = selector_inputs(site)
    verdicts = []
    decided = False
    for i, rule in enumerate(ruleset.rules):
        terms = tuple(_terms(rule.match, layer, type_names, dense))
        accepts = all(t.holds for t in terms)
        state = "not reached" if decided else "decides" if accepts else "rejects"
        decided = decided or accepts
        verdicts.append(RuleVerdict(i, rule.name, _relative(ruleset.rule_location(i)), rule.action, terms,
                                    state))
    module = site.get()
    old_type = ("F." + site.kind.name) if site.functional else type(module).__name__
    short = sorted((n for n in type_names if "." not in n), key=str.lower)
    return Explanation(layer, old_type, tuple(short), dense, site.kind.name, tuple(verdicts))


def _relative(location: str) -> str:
    """A rule's location with its file relative to the working directory when it lies below it
    (``extends`` resolves to absolute paths; the output should read the same on every machine)."""
    import os

    path, sep, rest = location.partition(":")
    if sep and os.path.isabs(path):
        try:
            relative = os.path.relpath(path)
        except ValueError:  # another drive (Windows)
            return location
        if not relative.startswith(".."):
            return f"{relative}:{rest}"
    return location


def _terms(match: Any, name: str, type_names: frozenset[str], dense: int) -> list[Term]:
    """Each selector of ``match`` and whether it holds; the regex goes through the rule's own
    matching (``Match.accepts``), so the explanation and the decision can never disagree."""
    from tedepr_fx.rules.schema import Match

    terms = []
    if match.type is not None:
        wanted = [match.type] if isinstance(match.type, str) else list(match.type)
        text = "type " + ("|".join(wanted))
        terms.append(Term(text, any(t in type_names for t in wanted)))
    if match.name is not None:
        terms.append(Term(f"name {match.name!r}", fnmatch.fnmatchcase(name, match.name)))
    if match.regex is not None:
        terms.append(Term(f"regex {match.regex!r}", Match(regex=match.regex).accepts(name, type_names, dense)))
    if match.min_params is not None:
        terms.append(Term(f"min_params {match.min_params:,}", dense >= match.min_params,
                          "" if dense >= match.min_params else f"the layer has {dense:,}"))
    if match.max_params is not None:
        terms.append(Term(f"max_params {match.max_params:,}", dense <= match.max_params,
                          "" if dense <= match.max_params else f"the layer has {dense:,}"))
    return terms
