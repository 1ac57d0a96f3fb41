"""The tensor-train (TT-matrix) format: ranks, factor counts, decomposition of a weight.

A TT-matrix (Novikov et al., "Tensorizing Neural Networks", NeurIPS 2015) stores a
weight ``W[(i_1..i_d), (j_1..j_d)]`` as cores ``(r_{k-1}, m_k, n_k, r_k)`` with
``r_0 = r_d = 1``. Its layers are :class:`tedepr_fx.layers.tt.TTLinear` (linear and
Hugging Face ``Conv1D``), :class:`tedepr_fx.layers.tt.TTConv2d` and
:class:`tedepr_fx.layers.tt_lstm.TTLSTM`; their forward is the contraction chain of
:mod:`tedepr_fx.layers.contraction`.

>>> TT.resolve_ranks("full", ([4, 3, 2], [2, 5, 3]))
[1, 8, 6, 1]
>>> TT.stored_params(([4, 3, 2], [2, 5, 3]), [1, 2, 2, 1])
88
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from tedepr_fx.decompose.tt import tt_svd
from tedepr_fx.formats.base import (
    Builder,
    Format,
    check_build_rank,
    check_rank_list,
    check_uniform_rank,
    largest_fitting,
)
from tedepr_fx.ranks import RankSpec

ModesShape = tuple[Sequence[int], Sequence[int]]  # (in_modes, out_modes) of a TT-matrix


def tt_max_ranks(in_modes: Sequence[int], out_modes: Sequence[int]) -> list[int]:
    """The exact (largest useful) TT ranks of a TT-matrix with these modes: ``d + 1`` entries.

    Bond ``k`` separates the modes ``< k`` from the modes ``>= k``; its rank can be no
    larger than the smaller side's size (Oseledets, "Tensor-Train Decomposition",
    SIAM J. Sci. Comput. 33(5), 2011, Theorem 2.1).
    """
    sizes = [m * n for m, n in zip(in_modes, out_modes)]
    d = len(sizes)
    return [1] + [min(math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(1, d)] + [1]


def tt_params(in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int]) -> int:
    """Number of entries of the TT-matrix cores ``(r_{k-1}, m_k, n_k, r_k)``."""
    return sum(ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(zip(in_modes, out_modes)))


def resolve_tt_ranks(spec: RankSpec, in_modes: Sequence[int], out_modes: Sequence[int]) -> list[int]:
    """Resolve a rank spec into the ``d + 1`` TT ranks ``[1, r_1, ..., r_{d-1}, 1]``.

    Parameters
    ----------
    spec : RankSpec
        ``int``: every inner bond gets ``min(spec, exact rank of that bond)``; an int
        larger than every bond's exact rank is an error. ``list[int]``: the ``d - 1``
        inner ranks, each at most its bond's exact rank. ``float`` in (0, 1]: the
        largest uniform rank whose cores hold at most that share of the dense
        parameter count (tensorly's ``validate_tt_rank`` semantics), at least 1.
        ``"full"``: the exact ranks. ``"auto"`` is resolved by :meth:`Format.auto_rank`.
    in_modes, out_modes : Sequence[int]
        The TT-matrix modes (same length ``d``).

    Raises
    ------
    ValueError
        For a syntactically bad spec, ``"auto"``, a list of the wrong length, or a rank
        beyond the exact rank (``"rank N exceeds the largest useful rank M ..."``).

    References
    ----------
    Oseledets, "Tensor-Train Decomposition", SIAM J. Sci. Comput. 33(5), 2011.
    """
    spec = check_build_rank(spec)
    in_modes, out_modes = list(in_modes), list(out_modes)
    if len(in_modes) != len(out_modes):
        raise ValueError(f"in_modes {in_modes} and out_modes {out_modes} differ in length")
    d = len(in_modes)
    bounds = tt_max_ranks(in_modes, out_modes)
    if spec == "full":
        return bounds
    if isinstance(spec, list):
        if len(spec) != d - 1:
            raise ValueError(
                f"rank list {spec} must have d - 1 = {d - 1} entries (one per inner bond of {d} cores)"
            )
        check_rank_list(spec, bounds[1:-1],
                        lambda i: f"TT bond {i + 1} (modes {in_modes} -> {out_modes})")
        return [1, *spec, 1]
    if isinstance(spec, int):
        check_uniform_rank(spec, max(bounds), f"a TT-matrix with modes {in_modes} -> {out_modes}")
        return [min(spec, b) for b in bounds]
    assert isinstance(spec, float)
    return largest_fitting(lambda r: [min(r, b) for b in bounds], max(bounds),
                           lambda ranks: tt_params(in_modes, out_modes, ranks),
                           spec * math.prod(in_modes) * math.prod(out_modes))


def tt_matrix_tensor(w_io: torch.Tensor, in_modes: Sequence[int], out_modes: Sequence[int]) -> torch.Tensor:
    """A weight stored as ``(in, out)``, zero-padded to the modes, as the ``d``-way tensor
    ``(m_1 n_1, ..., m_d n_d)`` that TT-SVD / TR-SVD factor (one permuted copy)."""
    d = len(in_modes)
    big_m, big_n = math.prod(in_modes), math.prod(out_modes)
    if tuple(w_io.shape) != (big_m, big_n):
        w_io = F.pad(w_io, (0, big_n - w_io.shape[1], 0, big_m - w_io.shape[0]))
    perm = [i for k in range(d) for i in (k, d + k)]
    return w_io.reshape(*in_modes, *out_modes).permute(*perm).reshape([m * n for m, n in zip(in_modes, out_modes)])


def matrix_cores(flat: Sequence[torch.Tensor], in_modes: Sequence[int], out_modes: Sequence[int],
                 ranks: Sequence[int]) -> list[torch.Tensor]:
    """Cores ``(r_{k-1}, m_k n_k, r_k)`` of the tensor :func:`tt_matrix_tensor` makes, as
    TT-matrix cores ``(r_{k-1}, m_k, n_k, r_k)`` (views; Novikov et al., NeurIPS 2015)."""
    return [c.reshape(ranks[k], m, n, ranks[k + 1]) for k, (c, m, n) in enumerate(zip(flat, in_modes, out_modes))]


def decompose_tt_matrix(
    w_io: torch.Tensor, in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int],
    svd: Callable[[torch.Tensor, list[int]], list[torch.Tensor]] = tt_svd,
) -> list[torch.Tensor]:
    """TT-matrix cores ``(r_{k-1}, m_k, n_k, r_k)`` of a weight stored as ``(in, out)`` (zero-padded to the modes).

    The weight is permuted once to ``(m_1 n_1, ..., m_d n_d)`` and given to ``svd``:
    :func:`tedepr_fx.decompose.tt.tt_svd` (ranks with ends 1), or
    :func:`tedepr_fx.decompose.tr.tr_svd` for a tensor ring (``r_0 = r_d``, the
    cores of :class:`tedepr_fx.formats.tr.TRLinear`). With TT-SVD every intermediate is
    at most the (padded) weight's size.

    References
    ----------
    Oseledets, "Tensor-Train Decomposition", SIAM J. Sci. Comput. 33(5), 2011, Algorithm 1.
    Zhao, Zhou, Xie, Zhang and Cichocki, "Tensor Ring Decomposition", arXiv:1606.05535, 2016,
    Algorithm 1 (TR-SVD).
    """
    ranks = list(ranks)
    return matrix_cores(svd(tt_matrix_tensor(w_io, in_modes, out_modes), ranks), in_modes, out_modes, ranks)


class TensorTrain(Format[ModesShape]):
    """The tensor-train format (``format: tt``).

    References
    ----------
    Novikov, Podoprikhin, Osokin and Vetrov, "Tensorizing Neural Networks", NeurIPS 2015.
    Garipov et al., "Ultimate tensorization: compressing convolutional and FC layers alike",
    NIPS 2016 workshop (the convolution). Yang, Krompass and Tresp, "Tensor-Train Recurrent
    Neural Networks for Video Classification", ICML 2017 (the LSTM).
    """

    name = "tt"
    has_modes = True

    def builders(self) -> dict[str, Builder]:
        from tedepr_fx.layers.embedding import TTEmbedding
        from tedepr_fx.layers.tt import TTConv2d, TTLinear
        from tedepr_fx.layers.tt_lstm import TTLSTM

        return {"linear": TTLinear.from_linear, "hf_conv1d": TTLinear.from_linear,
                "conv2d": TTConv2d.from_conv, "lstm": TTLSTM.from_lstm,
                "embedding": TTEmbedding.from_embedding}

    def max_ranks(self, shape: ModesShape) -> list[int]:
        return tt_max_ranks(*shape)

    def stored_params(self, shape: ModesShape, ranks: Sequence[int]) -> int:
        return tt_params(shape[0], shape[1], ranks)

    def resolve_ranks(self, spec: RankSpec, shape: ModesShape) -> list[int]:
        return resolve_tt_ranks(spec, *shape)


TT = TensorTrain()
