"""The score and mask passes: score every prunable tensor, then keep the best under the budget.

This is the one scoring-and-masking path of the library: ``transform``, the
benchmarks (through ``transform``) and distributed runs all go through
:func:`score_and_mask`, and ``plan`` builds the same :class:`~tedepr_fx.budget.Group`
objects to predict kept counts. Layers are scored by the scorer their rule names
(one scoring run per distinct scorer, over all its layers at once); under
``torch.distributed`` the scores are averaged over ranks; then
:func:`tedepr_fx.budget.allocate` turns them into exact-count masks, which are
written into the layers' mask buffers.

Without data, a rule whose scorer needs data is scored by the rule file's
``scoring.without_data`` scorer (:func:`scorer_used`), with one warning; its
default, ``error``, leaves the scorer to raise :class:`~tedepr_fx.errors.DataError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from tedepr_fx.budget import (
    Allocation,
    Group,
    all_reduce_scores,
    allocate,
    apply_masks,
    pooled_density,
)
from tedepr_fx.passes.match import Decision
from tedepr_fx.rules import Scoring
from tedepr_fx.scoring import SCORERS, collect_targets, scorer_from_rules


def scorer_used(name: str, scoring: Scoring, have_data: bool) -> str:
    """The scorer that scores a rule asking for ``name``: ``name`` itself, or the rule file's
    ``scoring.without_data`` scorer when ``name`` needs data and none was given.

    With ``without_data: error`` (the default) it is ``name``, whose scorer then raises
    :class:`~tedepr_fx.errors.DataError` for the missing data.
    """
    if have_data or scoring.without_data == "error" or name not in SCORERS or not SCORERS[name].needs_data:
        return name
    return scoring.without_data


def groups_for(model: nn.Module, decisions: Sequence[Decision],
               paths: Mapping[str, str]) -> list[tuple[Decision, Group]]:
    """One :class:`Group` per decision that has a budget, with the targets of its new layer.

    ``paths[decision.name]`` is the qualified name of the decision's new layer in ``model``.
    """
    pairs = []
    for decision in decisions:
        if not decision.masked:
            continue
        layer = paths[decision.name]
        budget = decision.budget
        assert budget is not None  # masked
        floor = decision.floor
        min_kept = max(budget.min_kept, floor.min_kept) if floor is not None else budget.min_kept
        min_density = floor.min_density if floor is not None and floor.min_density is not None \
            else budget.min_density
        pairs.append((decision, Group(
            layer=layer, targets=collect_targets(model, layers=[layer]),
            dense_params=decision.dense_params, density=budget.target_density, of=budget.of,
            allocation=budget.allocation, min_density=min_density,
            budget_id=decision.budget_id, dense_shape=tuple(decision.dense_shape), min_kept=min_kept,
        )))
    return pairs


def score_and_mask(model: nn.Module, pairs: Sequence[tuple[Decision, Group]], scoring: Scoring, *,
                   batches: Sequence[Any], loss_fn: Any = None, output_fn: Any = None,
                   example_inputs: Any = None, seed: int = 0, verbose: bool = True) -> Allocation | None:
    """Score every group with its rule's scorer, reduce over ranks, allocate, write the masks."""
    if not pairs:
        return None
    groups = [g for _, g in pairs]
    density = pooled_density(groups)
    by_scorer: dict[str, list[tuple[Decision, Group]]] = {}
    fallbacks: dict[str, set[str]] = {}  # scorer asked for -> rules scored without data instead
    for decision, group in pairs:
        used = scorer_used(str(decision.scorer), scoring, bool(batches))
        if used != decision.scorer:
            fallbacks.setdefault(str(decision.scorer), set()).add(decision.rule_name)
        by_scorer.setdefault(used, []).append((decision, group))
    if fallbacks:
        asked = "; ".join(f"scorer {name!r} of rule(s) {', '.join(repr(r) for r in sorted(rules))}"
                          for name, rules in sorted(fallbacks.items()))
        warnings.warn(f"no data was given: {asked} needs data batches, so those layers are scored by "
                      f"{scoring.without_data!r} (the rules' scoring.without_data); pass data=... to "
                      "score them as the rules ask", UserWarning, stacklevel=3)
    scores = {}
    for scorer_name, members in by_scorer.items():
        rules = sorted({d.rule_name for d, _ in members})
        scorer = scorer_from_rules(scorer_name, scoring, density=density, seed=seed, verbose=verbose)
        targets = [t for _, g in members for t in g.targets]
        scores.update(scorer.score(
            model, targets, batches, loss_fn, example_inputs=example_inputs, output_fn=output_fn,
            context="rule " + ", ".join(repr(r) for r in rules),
        ))
    allocation = allocate(all_reduce_scores(scores), groups)
    apply_masks(model, allocation.masks)
    return allocation
