"""Tucker-2 factors of a dense weight: partial HOSVD, and variance-preserving scratch init.

A weight ``W`` of shape ``(out, in, *kernel)`` (``kernel`` empty for a linear layer) is
written as ``W = core x_0 U_out x_1 U_in`` with ``U_out`` ``(out, r_out)``, ``U_in``
``(in, r_in)`` and ``core`` ``(r_out, r_in, *kernel)``: the Tucker-2 model of Kim et al.,
"Compression of Deep Convolutional Neural Networks for Fast and Low Power Mobile
Applications", ICLR 2016; for a matrix it is ``W = U_out @ core @ U_in.T``.
"""

from __future__ import annotations

import math

import torch

from tedepr_fx.decompose.tt import working_dtype


def _leading_left_vectors(unfolding_gram: torch.Tensor, rank: int) -> torch.Tensor:
    """The ``rank`` leading eigenvectors of a symmetric PSD matrix, largest eigenvalue first."""
    _, vectors = torch.linalg.eigh(unfolding_gram)
    leading: torch.Tensor = vectors[:, -rank:].flip(1)
    return leading


def _mode_factor(weight: torch.Tensor, mode: int, rank: int) -> torch.Tensor:
    """Leading left singular vectors of the mode-``mode`` unfolding of ``weight`` (mode 0 or 1).

    A wide unfolding (``dim <= rest``) goes through its ``dim x dim`` Gram matrix, which is
    no larger than the weight; a tall one through a reduced QR (``Q`` is weight-sized) and the
    SVD of the small ``R``. Neither ever forms a ``rest x rest`` matrix.
    """
    dim = weight.shape[mode]
    rest = weight.numel() // dim
    others = [d for d in range(weight.dim()) if d != mode]
    if dim <= rest:
        gram = torch.tensordot(weight, weight, dims=(others, others))
        return _leading_left_vectors(gram, rank)
    unfolding = weight.movedim(mode, 0).reshape(dim, rest)
    q, r = torch.linalg.qr(unfolding, mode="reduced")
    u_r, _, _ = torch.linalg.svd(r, full_matrices=False)
    factor: torch.Tensor = q @ u_r[:, :rank]
    return factor


@torch.no_grad()
def partial_tucker2(
    weight: torch.Tensor, ranks: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated HOSVD of the first two modes of ``weight`` (partial Tucker, Tucker-2).

    Parameters
    ----------
    weight : torch.Tensor
        Shape ``(out, in, *kernel)``.
    ranks : list[int]
        ``[r_out, r_in]``; with ``r_out = min(out, in * prod(kernel))`` and
        ``r_in = min(in, out * prod(kernel))`` the decomposition is exact up to rounding.

    Returns
    -------
    (factor_out, core, factor_in) : tuple of torch.Tensor
        ``(out, r_out)``, ``(r_out, r_in, *kernel)``, ``(in, r_in)``, orthonormal columns in
        both factors, in ``weight``'s dtype and device.

    Notes
    -----
    Factor matrices are the leading left singular vectors of the mode unfoldings and the
    core is the projection of the weight onto them (De Lathauwer, De Moor and Vandewalle,
    "A Multilinear Singular Value Decomposition", SIAM J. Matrix Anal. Appl. 21(4), 2000).
    The largest intermediate is the size of the weight (a permuted copy, a QR factor or
    the first projection), plus one float32 copy of a half-precision weight.

    Hand-written rather than tensorly's ``partial_tucker`` with ``n_iter_max=0`` (the same
    truncated HOSVD, through full SVDs of the unfoldings), because that was measured worse
    (``benchmarks/bench_decompose.py``, ``docs/benchmarks/decompose.md``, tensorly 0.10
    under ``backend_context("pytorch")``): equal error, but 1.3 to 12.5x the time on the
    benchmark shapes and, for a 256 x 256 x 3 x 3 conv at ranks (64, 64), a torch peak of
    2.7 weights against 0.4 here. It needed less memory only for a 768 x 3072 linear at
    ranks (192, 192), where the QR of the tall mode-1 unfolding costs two weights here
    (1.9 vs 2.1 weights), at 7x the time.
    """
    if weight.dim() < 2:
        raise ValueError(f"weight must have at least 2 dims (out, in, ...); got shape {tuple(weight.shape)}")
    if len(ranks) != 2:
        raise ValueError(f"ranks must be [r_out, r_in]; got {ranks}")
    out_dtype = weight.dtype
    work = weight.to(working_dtype(out_dtype))
    factor_out = _mode_factor(work, 0, ranks[0])
    factor_in = _mode_factor(work, 1, ranks[1])
    # project mode 0 first: (r_out, in, *kernel) is no larger than the weight
    core = torch.tensordot(factor_out.t(), work, dims=1)
    core = torch.tensordot(core, factor_in, dims=([1], [0])).movedim(-1, 1)
    return factor_out.to(out_dtype), core.contiguous().to(out_dtype), factor_in.to(out_dtype)


def tucker2_core_std(dims: tuple[int, int], ranks: list[int], target_var: float) -> float:
    """Standard deviation of a Gaussian core that gives rebuilt weight entries ``target_var``.

    With ``U_out``, ``U_in`` Haar-random with orthonormal columns (``E[U[i, a]^2] = 1/dim``)
    and an independent zero-mean core of variance ``s^2``,
    ``Var(W[o, i, k]) = sum_{a, b} E[U_out[o, a]^2] s^2 E[U_in[i, b]^2]
    = (r_out / out) (r_in / in) s^2``, so ``s^2 = target_var * out * in / (r_out * r_in)``
    (derived here; the same argument as the TT variance rule of Novikov et al.,
    "Tensorizing Neural Networks", NeurIPS 2015).
    """
    out_f, in_f = dims
    return math.sqrt(target_var * out_f * in_f / (ranks[0] * ranks[1]))


def _orthonormal_columns(rows: int, cols: int, device: torch.device | str | None,
                         dtype: torch.dtype) -> torch.Tensor:
    """A Haar-random ``rows x cols`` matrix with orthonormal columns (QR of a Gaussian, sign-fixed)."""
    gauss = torch.randn(rows, cols, device=device, dtype=working_dtype(dtype))
    q, r = torch.linalg.qr(gauss, mode="reduced")
    # multiplying by sign(diag(R)) makes Q Haar distributed (Mezzadri, Notices AMS 54(5), 2007)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    columns: torch.Tensor = (q * signs).to(dtype)
    return columns


@torch.no_grad()
def tucker2_scratch(
    shape: tuple[int, ...],
    ranks: list[int],
    target_var: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random Tucker-2 factors whose rebuilt weight has entry variance ``target_var``.

    Parameters
    ----------
    shape : tuple[int, ...]
        The dense weight's shape ``(out, in, *kernel)``.
    ranks : list[int]
        ``[r_out, r_in]``.
    target_var : float
        The dense init's entry variance, e.g. ``1 / (3 fan_in)`` for PyTorch's default
        ``kaiming_uniform_(a=sqrt(5))`` of ``nn.Linear`` / ``nn.Conv2d``.

    Returns
    -------
    (factor_out, core, factor_in) : tuple of torch.Tensor
        Factors with orthonormal columns and a Gaussian core scaled by
        :func:`tucker2_core_std`. Orthonormal factors keep the chain's intermediate
        activations at the scale of the input, and put all of the scale in the core.
        On the ``meta`` device nothing is allocated. Uses torch's global RNG.
    """
    out_f, in_f, *kernel = shape
    r_out, r_in = ranks
    if torch.device(device if device is not None else "cpu").type == "meta":
        return (
            torch.empty(out_f, r_out, device="meta", dtype=dtype),
            torch.empty(r_out, r_in, *kernel, device="meta", dtype=dtype),
            torch.empty(in_f, r_in, device="meta", dtype=dtype),
        )
    factor_out = _orthonormal_columns(out_f, r_out, device, dtype)
    factor_in = _orthonormal_columns(in_f, r_in, device, dtype)
    std = tucker2_core_std((out_f, in_f), ranks, target_var)
    core = torch.randn(r_out, r_in, *kernel, device=device, dtype=dtype) * std
    return factor_out, core, factor_in
