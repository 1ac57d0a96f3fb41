"""Tensor-ring factors of a dense tensor: TR-SVD, and variance-preserving scratch init.

A tensor ring (Zhao et al., "Tensor Ring Decomposition", arXiv:1606.05535, 2016) writes
``T[i_1, ..., i_d] = trace(G_1[:, i_1, :] G_2[:, i_2, :] ... G_d[:, i_d, :])`` with cores
``G_k`` of shape ``(r_{k-1}, q_k, r_k)`` and ``r_d = r_0``: a tensor train whose first and
last bonds are one bond, traced. With ``r_0 = 1`` it is a tensor train.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tedepr_fx.decompose.tt import gaussian_cores, truncated_svd, working_dtype


@torch.no_grad()
def tr_svd(tensor: torch.Tensor, ranks: Sequence[int]) -> list[torch.Tensor]:
    """TR-SVD of a ``d``-way tensor (Zhao et al. 2016, Algorithm 1).

    Parameters
    ----------
    tensor : torch.Tensor
        Shape ``(q_1, ..., q_d)``, ``d >= 2``.
    ranks : Sequence[int]
        ``d + 1`` ranks with ``ranks[0] == ranks[d]``. The decomposition is exact (up to
        rounding) when ``r_0 r_1`` is at least the rank of the mode-1 unfolding and every
        later ``r_k`` at least the rank of its unfolding (:func:`tr_exact_ranks`).

    Returns
    -------
    list[torch.Tensor]
        The ring's ``d`` cores ``(r_{k-1}, q_k, r_k)``, the last one closing on ``r_0``,
        in ``tensor``'s dtype and device.

    Notes
    -----
    Step 1 takes a truncated SVD of the mode-1 unfolding ``(q_1, q_2 ... q_d)`` with rank
    ``r_0 r_1`` and splits its left factor into the first core ``(r_0, q_1, r_1)``; the
    rest ``(r_0 r_1, q_2 ... q_d)`` is permuted to ``(r_1, q_2, ..., q_d, r_0)``, so that
    the boundary bond rides along with the last mode, and the remaining cores come from
    sequential truncated SVDs as in TT-SVD (Oseledets, SIAM J. Sci. Comput. 33(5), 2011).
    No intermediate exceeds the tensor's size times ``r_0`` (the permuted rest).

    References
    ----------
    Zhao, Zhou, Xie, Zhang and Cichocki, "Tensor Ring Decomposition", arXiv:1606.05535, 2016.
    """
    dims = list(tensor.shape)
    d = len(dims)
    ranks = list(ranks)
    if d < 2 or len(ranks) != d + 1 or ranks[0] != ranks[-1] or min(ranks) < 1:
        raise ValueError(f"ranks must be d + 1 = {d + 1} positive ints with ranks[0] == ranks[d]; got {ranks}")
    out_dtype = tensor.dtype
    r0, r1 = ranks[0], ranks[1]
    work = tensor.to(working_dtype(out_dtype))
    left, rest = truncated_svd(work.reshape(dims[0], -1), r0 * r1)
    cores = [left.reshape(dims[0], r0, r1).permute(1, 0, 2).contiguous().to(out_dtype)]
    # (r0, r1, q_2 .. q_d) -> (r1, q_2 .. q_d, r0): the boundary bond travels with the last mode
    rest = rest.reshape(r0, r1, -1).permute(1, 2, 0)
    for k in range(1, d - 1):
        left, rest = truncated_svd(rest.reshape(ranks[k] * dims[k], -1), ranks[k + 1])
        cores.append(left.reshape(ranks[k], dims[k], ranks[k + 1]).to(out_dtype))
    cores.append(rest.reshape(ranks[d - 1], dims[d - 1], r0).to(out_dtype))
    return cores


def balanced_split(n: int) -> tuple[int, int]:
    """``(a, b)`` with ``a * b == n``, ``a <= b`` and ``a`` the largest such divisor (``a = 1`` for a prime)."""
    a = math.isqrt(n)
    while n % a:
        a -= 1
    return a, n // a


def tr_exact_ranks(dims: Sequence[int]) -> list[int]:
    """Ranks at which :func:`tr_svd` is exact for any tensor of shape ``dims``.

    ``r_0 r_1`` is the largest possible rank of the mode-1 unfolding,
    ``min(q_1, q_2 ... q_d)``, split as evenly as its divisors allow (so ``r_0 = 1``, a
    tensor train, when it is prime); then ``r_k = min(r_{k-1} q_k, r_0 q_{k+1} ... q_d)``,
    the largest rank of the unfolding TR-SVD takes at step ``k``.
    """
    dims = list(dims)
    d = len(dims)
    r0, r1 = balanced_split(min(dims[0], math.prod(dims[1:])))
    ranks = [r0, r1]
    for k in range(1, d - 1):
        ranks.append(min(ranks[k] * dims[k], r0 * math.prod(dims[k + 1:])))
    ranks.append(r0)
    return ranks


def tr_core_std(ranks: Sequence[int], target_var: float) -> float:
    """Std of i.i.d. zero-mean Gaussian TR cores whose product has entry variance ``target_var``.

    An entry of the ring is a sum over ``prod(r_0 .. r_{d-1})`` closed paths of products of
    ``d`` independent zero-mean entries, so ``Var = prod_k r_k * sigma**(2 d)`` (derived
    here, as the TT rule in :func:`tedepr_fx.decompose.tt.tt_core_std`).
    """
    d = len(ranks) - 1
    return float((target_var / math.prod(ranks[:-1])) ** (1.0 / (2 * d)))


def tr_scratch_cores(
    dims: Sequence[int],
    ranks: Sequence[int],
    target_var: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """Random TR cores ``(r_{k-1}, q_k, r_k)`` whose ring has entry variance ``target_var``.

    On the ``meta`` device nothing is allocated. Uses torch's global RNG.
    """
    return gaussian_cores(dims, ranks, tr_core_std(ranks, target_var), device=device, dtype=dtype)
