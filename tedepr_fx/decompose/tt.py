"""Tensor-train factors of a dense weight: TT-SVD, and variance-preserving scratch init.

:func:`tt_svd` and :func:`tt_scratch_cores` return TT cores ``(r_{k-1}, q_k, r_k)`` of a
tensor with dims ``(q_1, ..., q_d)``; the layers reshape them into TT-matrix cores
``(r_{k-1}, m_k, n_k, r_k)`` (Novikov et al., "Tensorizing Neural Networks", NeurIPS 2015).
Their steps :func:`truncated_svd` and :func:`gaussian_cores` also serve the tensor ring
(:mod:`tedepr_fx.decompose.tr`), a train whose end bonds are one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the SVDs run in: float32 at least; float64 stays float64 for the tighter exactness checks."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def truncated_svd(unfolding: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U_r, S_r V_r^T)`` of an economy SVD (``full_matrices=False``), zero-padded to ``rank``.

    One step of TT-SVD (Oseledets, SIAM J. Sci. Comput. 33(5), 2011, Algorithm 1) and of
    TR-SVD (:func:`tedepr_fx.decompose.tr.tr_svd`): the left factor ``(rows, rank)`` is a
    core, the right one ``(rank, cols)`` the rest to unfold next. A ``rank`` above the
    matrix's ``min(rows, cols)`` keeps its shape: the extra bond entries are zero.
    """
    u, s, vh = torch.linalg.svd(unfolding, full_matrices=False)
    r = min(rank, s.numel())
    left, right = u[:, :r], s[:r, None] * vh[:r]
    if r < rank:
        left = torch.cat([left, left.new_zeros(left.shape[0], rank - r)], dim=1)
        right = torch.cat([right, right.new_zeros(rank - r, right.shape[1])], dim=0)
    return left, right


@torch.no_grad()
def tt_svd(tensor: torch.Tensor, ranks: list[int]) -> list[torch.Tensor]:
    """TT-SVD of a ``d``-way tensor (Oseledets, SIAM J. Sci. Comput. 33(5), 2011, Algorithm 1).

    Parameters
    ----------
    tensor : torch.Tensor
        Shape ``(q_1, ..., q_d)``.
    ranks : list[int]
        ``d + 1`` ranks with ends 1; each at most the exact rank of its unfolding
        (then the decomposition is exact up to rounding).

    Returns
    -------
    list[torch.Tensor]
        Cores ``(r_{k-1}, q_k, r_k)`` in ``tensor``'s dtype and device.

    Notes
    -----
    Each step is one economy SVD (``full_matrices=False``) of an unfolding whose
    size is at most the tensor's, so no intermediate exceeds the weight itself
    (plus one float32 copy when the weight is in half precision). A rank above an
    unfolding's exact rank keeps its shape, padded with zeros.

    Hand-written rather than tensorly's ``tensor_train`` (the same algorithm), because
    that was measured worse (``benchmarks/bench_decompose.py``,
    ``docs/benchmarks/decompose.md``, tensorly 0.10 under ``backend_context("pytorch")``):
    equal error, time and memory at rank 16, but at full rank its sign fix-up costs one
    more weight-sized copy (peak torch memory 4.0 vs 3.0 weights for 768 x 3072) and
    about 1.1x the time, and importing tensorly adds about 1 s and 40 MiB (it loads
    scipy). It also lowers a rank above the exact one instead of keeping the shape.
    """
    dims = list(tensor.shape)
    d = len(dims)
    if len(ranks) != d + 1 or ranks[0] != 1 or ranks[-1] != 1:
        raise ValueError(f"ranks must have d + 1 = {d + 1} entries with ends 1; got {ranks}")
    out_dtype = tensor.dtype
    rest = tensor.to(working_dtype(out_dtype))
    cores = []
    for k in range(d - 1):
        core, rest = truncated_svd(rest.reshape(ranks[k] * dims[k], -1), ranks[k + 1])
        cores.append(core.reshape(ranks[k], dims[k], ranks[k + 1]).to(out_dtype))
    cores.append(rest.reshape(ranks[d - 1], dims[d - 1], 1).to(out_dtype))
    return cores


def tt_core_std(ranks: list[int], target_var: float) -> float:
    """Std of i.i.d. zero-mean Gaussian TT cores whose product has entry variance ``target_var``.

    An entry of the product of ``d`` cores is a sum over ``prod(r_1 .. r_{d-1})`` paths
    of products of ``d`` independent zero-mean entries, so
    ``Var(W_ij) = prod_k r_k * prod_k sigma_k**2`` (derived here; the same count is the
    basis of the TT initialisation in Novikov et al., NeurIPS 2015). With equal
    ``sigma`` for every core, ``sigma = (target_var / prod_k r_k) ** (1 / (2 d))``.
    """
    d = len(ranks) - 1
    inner = math.prod(ranks[1:-1])
    return float((target_var / inner) ** (1.0 / (2 * d)))


def tt_scratch_cores(
    dims: list[int],
    ranks: list[int],
    target_var: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """Random TT cores ``(r_{k-1}, q_k, r_k)`` whose product has entry variance ``target_var``.

    ``target_var`` is the dense layer's default init variance, e.g. ``1 / (3 fan_in)``
    for ``nn.Linear`` / ``nn.Conv2d`` (kaiming-uniform with ``a = sqrt(5)``: bound
    ``1/sqrt(fan_in)``, He et al., ICCV 2015) and ``1 / (3 hidden_size)`` for ``nn.LSTM``.
    On the ``meta`` device nothing is allocated. Uses torch's global RNG.
    """
    return gaussian_cores(dims, ranks, tt_core_std(ranks, target_var), device=device, dtype=dtype)


def gaussian_cores(
    dims: Sequence[int],
    ranks: Sequence[int],
    std: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """Cores ``(r_{k-1}, q_k, r_k)`` of i.i.d. ``N(0, std**2)`` entries, drawn in core order.

    The scratch init of a train (:func:`tt_scratch_cores`) and of a ring
    (:func:`tedepr_fx.decompose.tr.tr_scratch_cores`). On the ``meta`` device nothing is
    allocated. Uses torch's global RNG.
    """
    cores = []
    for k, q in enumerate(dims):
        core = torch.empty(ranks[k], q, ranks[k + 1], device=device, dtype=dtype)
        if core.device.type != "meta":
            core.normal_(0.0, std)
        cores.append(core)
    return cores
