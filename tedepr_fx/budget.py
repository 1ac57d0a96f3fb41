"""Scores -> exact-count boolean masks under a sparsity budget (the fine grain of TEDEPR).

A :class:`Group` is one layer under one budget. Its budget in entries is
``round(density * dense_params)`` (``of: "dense"``, counted against the original
dense weight, as TEDEPR states its sparsities) or ``round(density * stored)``
(``of: "factors"``). A layer storing no more than its budget stays whole.

Layers sharing a ``budget_id`` share one allocation:

* ``global``: one threshold over all their entries, ranked by score;
* ``uniform``: every layer keeps exactly its own budget;
* ``erk``: the pooled budget spread by Erdos-Renyi-kernel densities (Evci et al.,
  "Rigging the Lottery: Making All Tickets Winners", ICML 2020), redistributing
  what full layers cannot take.

Every tensor first keeps its floor ``max(1, ceil(min_density * numel))`` (an empty
TT core zeroes the whole chain), every layer then its ``min_kept`` (its best-scored
entries), the rest goes by score; the total kept equals the budget exactly. When the floors alone exceed the budget the floors are kept
and the layer is flagged ``floors_exceed_budget`` (so kept > budget there).
Ties are broken by position (target order, then flat index): same scores, same masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tedepr_fx.errors import BudgetError, DataError
from tedepr_fx.scoring.base import Target, check_density, collect_targets
from tedepr_fx.scoring.iterative import top_by_position

ALLOCATIONS = ("global", "uniform", "erk")


@dataclass
class Group:
    """One layer (module) under one budget."""

    layer: str  # module qualname
    targets: list[Target]  # its prunable tensors
    dense_params: int  # weight count of the ORIGINAL dense layer
    density: float  # target density (1 - sparsity)
    of: str = "dense"  # "dense" | "factors"
    allocation: str = "global"  # "global" | "uniform" | "erk"
    min_density: float = 0.0005
    budget_id: str = "default"  # layers sharing a budget_id share one global/erk allocation
    dense_shape: tuple[int, ...] = ()  # shape of the original dense weight (needed by erk)
    min_kept: int = 0  # at least this many entries over the layer's tensors (capped at stored)

    @property
    def stored(self) -> int:
        return sum(t.tensor().numel() for t in self.targets)

    @property
    def budget(self) -> int:
        """Entries this layer may keep, before pooling."""
        counted = self.dense_params if self.of == "dense" else self.stored
        return round(self.density * counted)


@dataclass
class LayerAllocation:
    """What one layer got."""

    layer: str
    budget: int  # entries allotted (after pooling for global / erk)
    kept: int
    stored: int
    dense_params: int
    at_floor: list[str] = field(default_factory=list)  # target keys kept at exactly their floor
    whole: bool = False  # stores no more than its budget: kept whole
    floors_exceed_budget: bool = False  # floors alone exceed the budget: floors kept, kept > budget


@dataclass
class Allocation:
    """Masks and counts of one allocation."""

    masks: dict[str, Tensor]  # bool, per target key
    kept: dict[str, int]  # per target key
    per_layer: dict[str, LayerAllocation]

    @property
    def total_kept(self) -> int:
        return sum(self.kept.values())


def floor_count(numel: int, min_density: float) -> int:
    """Entries a tensor keeps whatever its scores: ``max(1, ceil(min_density * numel))``."""
    return min(numel, max(1, math.ceil(min_density * numel)))


def layer_floor(group: Group) -> int:
    """Entries a layer keeps whatever its scores: its tensors' floors, raised to ``min_kept``."""
    floors = sum(floor_count(t.tensor().numel(), group.min_density) for t in group.targets)
    return min(group.stored, max(floors, group.min_kept))


def allocate(scores: dict[str, Tensor], groups: list[Group]) -> Allocation:
    """Turn scores into boolean masks that keep exactly each budget.

    Parameters
    ----------
    scores : dict of str to Tensor
        One score tensor per target key (shape of the tensor), higher = keep.
    groups : list of Group
        One per layer; layers with the same ``budget_id`` are allocated together.
        Allocation uses no randomness: ties are broken by position.

    Returns
    -------
    Allocation

    Raises
    ------
    DataError
        A score is NaN or infinite (names the target key).
    BudgetError
        Invalid groups: bad density/of/allocation, missing or misshaped scores, a
        target in two groups, mixed allocations in one budget_id, erk without dense_shape.
    """
    _validate(scores, groups)
    masks: dict[str, Tensor] = {}
    per_layer: dict[str, LayerAllocation] = {}
    pools: dict[str, list[Group]] = {}
    for g in groups:
        stored = g.stored
        if g.budget >= stored:
            for t in g.targets:
                masks[t.key] = torch.ones(t.tensor().shape, dtype=torch.bool)
            per_layer[g.layer] = LayerAllocation(g.layer, g.budget, stored, stored, g.dense_params,
                                                 whole=True)
        else:
            pools.setdefault(g.budget_id, []).append(g)
    for pool in pools.values():
        allocation = pool[0].allocation
        if allocation == "global":
            _allocate_global(scores, pool, masks, per_layer)
            continue
        counts = [g.budget for g in pool] if allocation == "uniform" else _erk_counts(pool)
        for g, count in zip(pool, counts):
            _allocate_pool(scores, [g], count, masks, per_layer)
    kept = {k: int(m.sum()) for k, m in masks.items()}
    return Allocation(masks=masks, kept=kept, per_layer=per_layer)


def _validate(scores: dict[str, Tensor], groups: list[Group]) -> None:
    seen: dict[str, str] = {}
    allocation_of: dict[str, tuple[str, str]] = {}
    for g in groups:
        who = f"layer {g.layer!r}"
        check_density_budget(g.density, who)
        if g.of not in ("dense", "factors"):
            raise BudgetError(f"{who}: of must be 'dense' or 'factors'; got {g.of!r}")
        if g.allocation not in ALLOCATIONS:
            raise BudgetError(f"{who}: allocation must be one of {ALLOCATIONS}; got {g.allocation!r}")
        if not 0.0 <= g.min_density <= 1.0:
            raise BudgetError(f"{who}: min_density must be in [0, 1]; got {g.min_density!r}")
        if g.min_kept < 0:
            raise BudgetError(f"{who}: min_kept must be >= 0; got {g.min_kept!r}")
        if not g.targets:
            raise BudgetError(f"{who}: has no prunable tensors")
        if g.dense_params < 1:
            raise BudgetError(f"{who}: dense_params must be >= 1; got {g.dense_params!r}")
        if g.allocation == "erk" and (not g.dense_shape or math.prod(g.dense_shape) < 1):
            raise BudgetError(f"{who}: allocation 'erk' needs dense_shape (the original weight's shape)")
        first = allocation_of.setdefault(g.budget_id, (g.allocation, g.layer))
        if first[0] != g.allocation:
            raise BudgetError(
                f"budget {g.budget_id!r} mixes allocations: layer {first[1]!r} uses {first[0]!r}, "
                f"{who} uses {g.allocation!r}"
            )
        for t in g.targets:
            if t.key in seen:
                raise BudgetError(f"target {t.key!r} is in two groups: {seen[t.key]!r} and {g.layer!r}")
            seen[t.key] = g.layer
            if t.key not in scores:
                raise BudgetError(f"{who}: no scores for target {t.key!r}")
            s = scores[t.key]
            if tuple(s.shape) != tuple(t.tensor().shape):
                raise BudgetError(f"{who}: scores for {t.key!r} have shape {tuple(s.shape)}, "
                                  f"expected {tuple(t.tensor().shape)}")
            if not torch.isfinite(s).all():
                raise DataError(f"non-finite scores (NaN or inf) for layer {g.layer!r} "
                                f"tensor {t.tensor_name!r} (key {t.key!r})")


def check_density_budget(density: float, who: str) -> None:
    try:
        check_density(density, who)
    except ValueError as exc:
        raise BudgetError(str(exc)) from None


def _allocate_global(scores: dict[str, Tensor], pool: list[Group], masks: dict[str, Tensor],
                     per_layer: dict[str, LayerAllocation]) -> None:
    """One threshold over the pool's entries: the pool's budget is kept by one ranking.

    (Scores of one scorer compare directly across layers, as in SNIP, GraSP and SynFlow;
    the ranking is all that matters, so they are not rescaled.)
    """
    _allocate_pool(scores, pool, sum(g.budget for g in pool), masks, per_layer)


def _allocate_pool(scores: dict[str, Tensor], pool: list[Group], total: int,
                   masks: dict[str, Tensor], per_layer: dict[str, LayerAllocation]) -> None:
    """Keep each tensor's floor, then each layer's ``min_kept``, then the pool's best entries up to ``total``.

    Every choice is "the highest scores, ties by position" over the pool's entries laid
    end to end (target order, then flat index), so the same scores give the same masks.
    """
    targets = [(g, t) for g in pool for t in g.targets]
    flat = torch.cat([scores[t.key].detach().reshape(-1).double().cpu() for _, t in targets])
    bounds, start = [], 0
    for _, t in targets:
        bounds.append((start, start + t.tensor().numel()))
        start += t.tensor().numel()
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    floors = {}
    for (g, t), (a, b) in zip(targets, bounds):
        floors[t.key] = floor_count(b - a, g.min_density)
        chosen[a:b] = top_by_position(flat[a:b], floors[t.key])
    for g in pool:  # a layer below its min_kept takes its best entries not yet chosen
        spans = [bounds[i] for i, (owner, _) in enumerate(targets) if owner is g]
        deficit = layer_floor(g) - sum(int(chosen[a:b].sum()) for a, b in spans)
        if deficit > 0:
            index = torch.cat([torch.arange(a, b) for a, b in spans])
            free = index[~chosen[index]]
            chosen[free[top_by_position(flat[free], deficit)]] = True
    extra = total - int(chosen.sum())
    if extra > 0:
        free = (~chosen).nonzero().flatten()
        chosen[free[top_by_position(flat[free], extra)]] = True
    over = extra < 0
    for g in pool:
        at_floor, kept = [], 0
        for (owner, t), (a, b) in zip(targets, bounds):
            if owner is not g:
                continue
            mask = chosen[a:b].reshape(t.tensor().shape)
            masks[t.key] = mask
            n = int(mask.sum())
            kept += n
            if n == floors[t.key] and n < t.tensor().numel():
                at_floor.append(t.key)
        # a pooled (global) layer reports its own budget; a single layer the count it was given
        per_layer[g.layer] = LayerAllocation(
            g.layer, total if len(pool) == 1 else g.budget, kept, g.stored, g.dense_params,
            at_floor=at_floor, floors_exceed_budget=over,
        )


def _erk_counts(pool: list[Group]) -> list[int]:
    """Integer counts per layer from ERK densities, summing exactly to the pool's budget.

    Density of layer l is ``c * sum(dense_shape) / prod(dense_shape)`` (Evci et al.
    2020), applied to the layer's counted weights (dense or stored) and clamped to
    [floors, stored]; ``c`` is solved by bisection so that the clamped counts sum to
    the pooled budget, and rounding uses largest remainders (ties: layer order).
    """
    total = sum(g.budget for g in pool)
    lo = [layer_floor(g) for g in pool]
    hi = [g.stored for g in pool]
    if sum(lo) >= total:
        return lo  # floors alone exceed the pooled budget: keep floors, flagged downstream
    base = [g.dense_params if g.of == "dense" else g.stored for g in pool]
    weight = [sum(g.dense_shape) / math.prod(g.dense_shape) * b for g, b in zip(pool, base)]

    def counts(c: float) -> list[float]:
        return [min(h, max(low, c * w)) for w, low, h in zip(weight, lo, hi)]

    low_c, high_c = 0.0, 1.0
    while sum(counts(high_c)) < total:
        high_c *= 2.0
    for _ in range(200):
        mid = (low_c + high_c) / 2
        if sum(counts(mid)) < total:
            low_c = mid
        else:
            high_c = mid
    real = counts(high_c)
    out = [min(h, max(low, math.floor(x))) for x, low, h in zip(real, lo, hi)]
    deficit = total - sum(out)
    order = sorted(range(len(pool)), key=lambda i: (-(real[i] - math.floor(real[i])), i))
    while deficit > 0:
        for i in order:
            if deficit and out[i] < hi[i]:
                out[i] += 1
                deficit -= 1
    while deficit < 0:
        for i in reversed(order):
            if deficit and out[i] > lo[i]:
                out[i] -= 1
                deficit += 1
    return out


def apply_masks(model_or_targets: nn.Module | Sequence[Target], masks: dict[str, Tensor]) -> None:
    """Write ``masks`` (by target key) into the mask buffers with ``module.set_mask``.

    Raises ``KeyError`` naming a key that is not a prunable tensor of the model / targets.
    """
    if isinstance(model_or_targets, nn.Module):
        targets = collect_targets(model_or_targets)
    else:
        targets = list(model_or_targets)
    by_key = {t.key: t for t in targets}
    for key, mask in masks.items():
        if key not in by_key:
            raise KeyError(f"mask for {key!r}: no such prunable tensor (known: {sorted(by_key)})")
        t = by_key[key]
        t.module.set_mask(t.tensor_name, mask)  # type: ignore[operator]


def pooled_density(groups: Sequence[Group]) -> float:
    """The density iterative scorers aim at: ``sum(density x counted) / sum(stored)`` over ``groups``.

    ``counted`` is the dense weight count (``of: dense``) or the stored count (``of:
    factors``); the budgets are not rounded to entries here, so the schedule of SynFlow and
    FORCE does not move with the rounding (at 99.9 % sparsity their masks do). A budget
    counted ``of: dense`` above what a small factorization stores gives a density above 1,
    clamped to 1.
    """
    stored = sum(g.stored for g in groups)
    wanted = sum(g.density * (g.dense_params if g.of == "dense" else g.stored) for g in groups)
    return min(1.0, wanted / stored) if stored else 1.0


def predicted_kept(group: Group) -> int:
    """Entries ``group`` keeps on its own budget: the exact count under ``uniform``
    allocation, a prediction under ``global`` / ``erk`` (where scores move budget
    between layers). Floors and the stored count bound it as :func:`allocate` does."""
    return min(group.stored, max(layer_floor(group), group.budget))


def all_reduce_scores(scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """The mean of every rank's scores under ``torch.distributed`` (identity without it).

    Each rank scores on its own data; averaging before allocation lets every rank's
    data count and gives every rank the same masks. Keys are reduced in sorted order
    so that all ranks issue the same collectives.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return scores
    world = dist.get_world_size()
    reduced = {}
    for key in sorted(scores):
        buf = scores[key].detach().to(torch.float64).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        reduced[key] = (buf / world).to(scores[key].dtype)
    return reduced


def broadcast_masks(model: nn.Module, src: int = 0) -> None:
    """Make every rank's masks equal to rank ``src``'s (``torch.distributed`` broadcast).

    A no-op when ``torch.distributed`` is unavailable or not initialised. Masks
    travel as uint8 (gloo has no bool broadcast).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    for t in collect_targets(model):
        mask = t.mask()
        buf = mask.to(torch.uint8)
        dist.broadcast(buf, src=src)
        t.module.set_mask(t.tensor_name, buf.bool())  # type: ignore[operator]
