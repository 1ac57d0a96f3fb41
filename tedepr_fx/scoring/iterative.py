"""Shared pieces of the iterative scorers (SynFlow, FORCE, iterative trainability).

Schedule, global top-k, and :func:`prune_in_rounds`: prune to a density in rounds,
rescoring the surviving network each round, and encode the result as keep-scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from tedepr_fx.errors import DataError


def exponential_schedule(density: float, iterations: int) -> list[float]:
    """Densities ``density ** (k / iterations)`` for ``k = 1..iterations`` (Tanaka et al. 2020)."""
    return [density ** (k / iterations) for k in range(1, iterations + 1)]


def top_by_position(values: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` largest of the 1-D ``values``, ties broken by lower position.

    The same as the first ``k`` of a stable descending sort, in linear time (one
    ``kthvalue``): every value above the k-th largest, then the first of those equal to it.
    """
    n = values.numel()
    chosen = torch.zeros(n, dtype=torch.bool)
    if k <= 0:
        return chosen
    if k >= n:
        return ~chosen
    kth = torch.kthvalue(values, n - k + 1).values
    chosen = values > kth
    need = k - int(chosen.sum())
    chosen[(values == kth).nonzero().flatten()[:need]] = True
    return chosen


def global_topk(scores: dict[str, Tensor], keep: int) -> dict[str, Tensor]:
    """Boolean masks keeping the ``keep`` highest scores over all tensors.

    Ties are broken by position (tensor order, then flat index), so the same scores
    always give the same masks; linear time (:func:`top_by_position`).
    """
    keys = list(scores)
    flat = torch.cat([scores[k].detach().reshape(-1).double().cpu() for k in keys])
    chosen = top_by_position(flat, keep)
    out, start = {}, 0
    for k in keys:
        n = scores[k].numel()
        out[k] = chosen[start : start + n].reshape(scores[k].shape).to(scores[k].device)
        start += n
    return out


def require_density(density: float | None, name: str, where: str) -> float:
    if density is None:
        raise DataError(
            f"{where}scorer {name!r} prunes iteratively and needs the final density: "
            "pass density=... as an option or to score()"
        )
    return density


def prune_in_rounds(tensors: dict[str, Tensor], density: float, iterations: int,
                    score_round: Callable[[int, dict[str, Tensor]], dict[str, Tensor]],
                    on_round: Callable[[], object] = lambda: None) -> dict[str, Tensor]:
    """Prune ``tensors`` to ``density`` in ``iterations`` rounds of the exponential schedule.

    Round ``k`` (from 1) calls ``score_round(k, alive)`` with the boolean masks of the
    entries still alive, keeps the global top ``density ** (k / iterations)`` of the
    *alive* entries by their scores (pruned entries stay pruned) and calls ``on_round()``.

    Returns keep-scores whose global top-k at the final density is the final mask:
    ``round at which the entry was pruned + 0.5 * (its last score / the largest last
    score)``, survivors getting ``iterations + 1`` plus their last score. Scores must
    be non-negative.
    """
    total = sum(t.numel() for t in tensors.values())
    alive = {k: torch.ones_like(t, dtype=torch.bool) for k, t in tensors.items()}
    pruned_at = {k: torch.full(t.shape, math.inf, dtype=torch.float64, device=t.device)
                 for k, t in tensors.items()}
    last: dict[str, Tensor] = {}
    for rnd, d in enumerate(exponential_schedule(density, iterations), start=1):
        scores = score_round(rnd, alive)
        for k in tensors:
            last[k] = torch.where(alive[k], scores[k], last.get(k, scores[k]))
        ranked = {k: torch.where(alive[k], s, torch.full_like(s, -1.0)) for k, s in scores.items()}
        kept = global_topk(ranked, max(1, round(d * total)))
        for k in tensors:
            pruned_at[k][alive[k] & ~kept[k]] = rnd
            alive[k] = alive[k] & kept[k]
        on_round()
    peak = max(float(s.max()) for s in last.values()) or 1.0
    return {k: torch.where(torch.isinf(pruned_at[k]), float(iterations + 1), pruned_at[k])
            + 0.5 * last[k].double() / peak for k in last}
