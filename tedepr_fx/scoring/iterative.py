"""Shared pieces of the iterative scorers (SynFlow, FORCE): schedule and global top-k."""

from __future__ import annotations

import torch
from torch import Tensor

from tedepr_fx.errors import DataError


def exponential_schedule(density: float, iterations: int) -> list[float]:
    """Densities ``density ** (k / iterations)`` for ``k = 1..iterations`` (Tanaka et al. 2020)."""
    return [density ** (k / iterations) for k in range(1, iterations + 1)]


def global_topk(scores: dict[str, Tensor], keep: int) -> dict[str, Tensor]:
    """Boolean masks keeping the ``keep`` highest scores over all tensors.

    Ties are broken by position (tensor order, then flat index) with a stable sort,
    so the same scores always give the same masks.
    """
    keys = list(scores)
    flat = torch.cat([scores[k].detach().reshape(-1).double() for k in keys])
    order = torch.sort(flat, descending=True, stable=True).indices[:keep]
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[order] = True
    out, start = {}, 0
    for k in keys:
        n = scores[k].numel()
        out[k] = chosen[start : start + n].reshape(scores[k].shape)
        start += n
    return out


def require_density(density: float | None, name: str, where: str) -> float:
    if density is None:
        raise DataError(
            f"{where}scorer {name!r} prunes iteratively and needs the final density: "
            "pass density=... as an option or to score()"
        )
    return density
