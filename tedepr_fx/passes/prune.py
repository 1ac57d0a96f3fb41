"""The score and mask passes: score every prunable tensor, then keep the best under the budget.

Layers are scored by the scorer their rule names (one scoring run per distinct
scorer, over all its layers at once), then :func:`tedepr_fx.budget.allocate`
turns the scores into exact-count masks, which are written into the layers'
mask buffers.
"""

from __future__ import annotations

from collections import defaultdict

from torch import nn

from tedepr_fx.passes.match import Decision


def prune(model: nn.Module, decisions: list[Decision], scoring, *, batches, loss_fn=None,
          output_fn=None, example_inputs=None, seed: int = 0, verbose: bool = True):
    """Score and mask every decision that has a budget; returns the allocation (or None)."""
    from tedepr_fx.budget import Group, allocate, apply_masks
    from tedepr_fx.scoring import collect_targets, get_scorer

    pruned = [d for d in decisions if d.action in ("factorize", "prune") and d.budget is not None]
    if not pruned:
        return None
    qualnames = {id(m): n for n, m in model.named_modules()}
    groups, by_scorer = [], defaultdict(list)
    for decision in pruned:
        layer = qualnames[id(decision.site.get())]
        targets = collect_targets(model, layers=[layer])
        budget = decision.budget
        group = Group(
            layer=layer, targets=targets, dense_params=decision.dense_params,
            density=budget.target_density, of=budget.of, allocation=budget.allocation,
            min_density=budget.min_density, budget_id=decision.budget_id,
            dense_shape=tuple(decision.dense_shape),
        )
        groups.append(group)
        by_scorer[decision.scorer].append((decision, group))

    total_budget = sum(g.density * (g.dense_params if g.of == "dense" else _stored(g)) for g in groups)
    total_stored = sum(_stored(g) for g in groups)
    density = min(1.0, total_budget / total_stored) if total_stored else 1.0

    scores = {}
    for scorer_name, members in by_scorer.items():
        rules = sorted({d.rule_name for d, _ in members})
        scorer = get_scorer(
            scorer_name, steps=scoring.steps, inner_lr=scoring.inner_lr,
            first_order=scoring.first_order, checkpoint=scoring.checkpoint, density=density, seed=seed, verbose=verbose,
        )
        targets = [t for _, g in members for t in g.targets]
        scores.update(scorer.score(
            model, targets, batches, loss_fn, example_inputs=example_inputs, output_fn=output_fn,
            context="rule " + ", ".join(repr(r) for r in rules),
        ))
    allocation = allocate(scores, groups, seed=seed)
    apply_masks(model, allocation.masks)
    return allocation


def _stored(group) -> int:
    return sum(t.module.get_mask(t.tensor_name).numel() for t in group.targets)
