"""The tensor-ring format (``format: tr``): ranks, factor counts and the TR linear layer.

A TR-matrix stores a weight ``W[(i_1..i_d), (j_1..j_d)]`` as cores ``G_k`` of shape
``(r_{k-1}, m_k, n_k, r_k)`` with ``r_d = r_0``, and
``W = trace(G_1[:, i_1, j_1, :] ... G_d[:, i_d, j_d, :])``: a TT-matrix whose first and
last bonds are one bond, traced (Zhao et al., "Tensor Ring Decomposition", 2016; as a
network layer, Wang et al., "Wide Compression: Tensor Ring Nets", CVPR 2018). With
``r_0 = 1`` it is a TT-matrix.

The forward folds the boundary bond into the first and last output modes, which turns the
ring into a TT-matrix with out modes ``(r_0 n_1, n_2, ..., n_d r_0)``; any contraction
order of :mod:`tedepr_fx.layers.contraction` then applies, and the trace over the two
copies of the boundary index (additions only) closes the ring. The order with the fewest
FLOPs for the actual batch is taken; rebuilding the weight traces it before the product.

>>> from torch import nn
>>> layer = TRLinear.from_linear(nn.Linear(12, 6), 2, modes=([3, 4], [2, 3]))
>>> layer.ranks, layer.stored_params() == 2 * 3 * 2 * 2 + 2 * 4 * 3 * 2
([2, 2, 2], True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch

from tedepr_fx.decompose.tr import tr_exact_ranks, tr_scratch_cores, tr_svd
from tedepr_fx.formats.base import (
    Builder,
    Format,
    check_build_rank,
    check_rank_list,
    check_uniform_rank,
    largest_fitting,
)
from tedepr_fx.formats.tt import ModesShape
from tedepr_fx.layers.contraction import (
    ContractionOrder,
    candidate_orders,
    group_cores,
    trace_ring,
    tt_chain_apply,
    tt_flops,
)
from tedepr_fx.layers.embedding import TTMatrixEmbedding
from tedepr_fx.layers.tt import TTMatrixConv2d, TTMatrixLinear
from tedepr_fx.ranks import RankSpec

# --- ranks ---------------------------------------------------------------------------------------


def tr_params(dims: Sequence[int], ranks: Sequence[int]) -> int:
    """Entries of the TR cores ``(r_{k-1}, q_k, r_k)`` of a tensor with dims ``q``."""
    return sum(ranks[k] * q * ranks[k + 1] for k, q in enumerate(dims))


def _uniform(dims: Sequence[int], r: int) -> list[int]:
    """Every bond ``r``, capped by its largest useful rank given the boundary rank.

    The boundary ``r_0`` is at most the rank of the mode-1 unfolding, ``min(q_1, q_2..q_d)``;
    bond ``k`` cuts the ring into modes ``<= k`` and ``> k`` together with the boundary
    bond, so ``r_k <= r_0 min(q_1..q_k, q_{k+1}..q_d)`` (both sides' unfoldings have rank
    at most ``r_0 r_k``).
    """
    d = len(dims)
    r0 = min(r, dims[0], math.prod(dims[1:]))
    inner = [min(r, r0 * math.prod(dims[:k]), r0 * math.prod(dims[k:])) for k in range(1, d)]
    return [r0, *inner, r0]


def resolve_tr_ranks(spec: RankSpec, dims: Sequence[int]) -> list[int]:
    """Resolve a rank spec into ``d + 1`` TR ranks ``[r_0, r_1, ..., r_{d-1}, r_0]``.

    Parameters
    ----------
    spec : RankSpec
        ``int``: every bond, the boundary included, gets ``min(spec, its largest useful
        rank)``; an int above every bond's largest useful rank is an error. ``list[int]``:
        the ``d`` ranks ``[r_0, ..., r_{d-1}]``. ``float`` in (0, 1]: the largest uniform
        rank whose cores hold at most that share of ``prod(dims)`` (at least 1). ``"full"``:
        ranks at which TR-SVD is exact (:func:`tedepr_fx.decompose.tr.tr_exact_ranks`).
    dims : Sequence[int]
        The ring's dims ``q_k`` (``m_k n_k`` for a TR-matrix), ``d >= 2``.

    References
    ----------
    Zhao, Zhou, Xie, Zhang and Cichocki, "Tensor Ring Decomposition", arXiv:1606.05535, 2016.
    """
    spec = check_build_rank(spec)
    dims = [int(q) for q in dims]
    d = len(dims)
    if d < 2 or min(dims) < 1:
        raise ValueError(f"a tensor ring needs at least 2 positive dims; got {dims}")
    if spec == "full":
        return tr_exact_ranks(dims)
    largest = max(_uniform(dims, math.prod(dims)))
    if isinstance(spec, list):
        if len(spec) != d:
            raise ValueError(f"a TR rank list must be [r_0, ..., r_{{d-1}}] (d = {d} entries); got {spec}")
        r0 = spec[0]
        bounds = [min(dims[0], math.prod(dims[1:]))]
        bounds += [r0 * min(math.prod(dims[:k]), math.prod(dims[k:])) for k in range(1, d)]
        check_rank_list(spec, bounds, lambda k: f"TR bond {k} (dims {dims})")
        return [*spec, spec[0]]
    if isinstance(spec, int):
        check_uniform_rank(spec, largest, f"a tensor ring with dims {dims}")
        return _uniform(dims, spec)
    assert isinstance(spec, float)
    return largest_fitting(lambda r: _uniform(dims, r), largest, lambda ranks: tr_params(dims, ranks),
                           spec * math.prod(dims))


# --- contraction ---------------------------------------------------------------------------------


def _as_tt(out_modes: Sequence[int], ranks: Sequence[int]) -> tuple[list[int], list[int]]:
    """Out modes and ranks of the TT-matrix the ring becomes when its boundary bond is folded
    into the first and last output modes: ``(r_0 n_1, n_2, ..., n_d r_0)``, ``[1, r_1, ..., 1]``."""
    r0 = ranks[0]
    out = list(out_modes)
    out[0] *= r0
    out[-1] *= r0
    return out, [1, *ranks[1:-1], 1]


@lru_cache(maxsize=1024)
def _choose(rows: int, in_modes: tuple[int, ...], out_modes: tuple[int, ...],
            ranks: tuple[int, ...]) -> tuple[ContractionOrder, int]:
    tt_out, tt_ranks = _as_tt(out_modes, ranks)
    dense = 2 * rows * math.prod(in_modes) * math.prod(out_modes)
    best: tuple[tuple[int, int, bool], ContractionOrder] | None = None
    for direction, groups in candidate_orders(len(in_modes)):
        if len(groups) == 1:  # rebuild, trace, one dense product
            cost = tt_flops(0, in_modes, tt_out, tt_ranks, groups) + dense
        else:
            cost = tt_flops(rows, in_modes, tt_out, tt_ranks, groups, direction)
        key = (cost, len(groups), direction != "ltr")  # ties as in the TT choice
        if best is None or key < best[0]:
            best = (key, (direction, groups))
    assert best is not None
    return best[1], best[0][0]


def tr_choose_order(rows: int, in_modes: Sequence[int], out_modes: Sequence[int],
                    ranks: Sequence[int]) -> tuple[ContractionOrder, int]:
    """The cheapest contraction order of a TR-matrix product for ``rows`` rows, and its FLOPs."""
    return _choose(int(rows), tuple(in_modes), tuple(out_modes), tuple(ranks))


# --- the format ----------------------------------------------------------------------------------


class TensorRing(Format[ModesShape]):
    """The tensor-ring format (``format: tr``): modes as TT, ranks over a ring.

    References
    ----------
    Zhao, Zhou, Xie, Zhang and Cichocki, "Tensor Ring Decomposition", arXiv:1606.05535, 2016.
    """

    name = "tr"
    has_modes = True

    def builders(self) -> dict[str, Builder]:
        return {"linear": TRLinear.from_linear, "hf_conv1d": TRLinear.from_linear,
                "conv2d": TRConv2d.from_conv, "embedding": TREmbedding.from_embedding}

    def max_ranks(self, shape: ModesShape) -> list[int]:
        return tr_exact_ranks([m * n for m, n in zip(*shape)])

    def stored_params(self, shape: ModesShape, ranks: Sequence[int]) -> int:
        return tr_params([m * n for m, n in zip(*shape)], ranks)

    def resolve_ranks(self, spec: RankSpec, shape: ModesShape) -> list[int]:
        return resolve_tr_ranks(spec, [m * n for m, n in zip(*shape)])


TR = TensorRing()


# --- the layers ----------------------------------------------------------------------------------


def _check_tr_ranks(ranks: list[int], d: int) -> None:
    """``ValueError`` unless ``ranks`` are ``d + 1`` positive ring ranks (``ranks[0] == ranks[d]``)."""
    if d < 2:
        raise ValueError(f"a tensor ring needs d >= 2 cores; got d = {d}")
    if len(ranks) != d + 1 or ranks[0] != ranks[-1] or min(ranks) < 1:
        raise ValueError(f"ranks must be {d + 1} positive ints with ranks[0] == ranks[-1]; got {ranks}")


class TRLinear(TTMatrixLinear):
    """A linear layer whose weight is a TR-matrix (Zhao et al. 2016; Wang et al., CVPR 2018).

    Constructor parameters as :class:`~tedepr_fx.layers.tt.TTMatrixLinear`, with
    ``d >= 2`` modes each and ``d + 1`` TR ranks with ``ranks[0] == ranks[d]``
    (:func:`resolve_tr_ranks`).

    Notes
    -----
    Cores ``core_k`` ``(r_{k-1}, m_k, n_k, r_k)``, each with a boolean mask. The constructor
    draws cores whose ring has the entry variance of ``nn.Linear``'s default init,
    ``1 / (3 in_features)`` (:func:`tedepr_fx.decompose.tr.tr_scratch_cores`).
    ``init="decompose"`` runs TR-SVD (Zhao et al. 2016, Algorithm 1).

    References
    ----------
    Zhao, Zhou, Xie, Zhang and Cichocki, "Tensor Ring Decomposition", arXiv:1606.05535, 2016.
    Wang, Sun, Eriksson, Wang and Aggarwal, "Wide Compression: Tensor Ring Nets", CVPR 2018.
    """

    fmt = TR
    _scratch_cores = staticmethod(tr_scratch_cores)
    _svd = staticmethod(tr_svd)
    _check_ranks = staticmethod(_check_tr_ranks)

    def contraction_order(self, rows: int) -> tuple[ContractionOrder, int]:
        """The order ``(direction, groups)`` the forward uses for ``rows`` input rows, and its FLOPs."""
        return tr_choose_order(rows, self.in_modes, self.out_modes, self.ranks)

    def _tt_cores(self) -> list[torch.Tensor]:
        """The masked cores with the boundary bond folded into the first and last output modes."""
        cores = [self.masked(n) for n in self.prunable]
        r0, m1, n1, r1 = cores[0].shape
        cores[0] = cores[0].permute(1, 0, 2, 3).reshape(1, m1, r0 * n1, r1)
        r, m, n, _ = cores[-1].shape
        cores[-1] = cores[-1].reshape(r, m, n * r0, 1)
        return cores

    def _weight_io(self) -> torch.Tensor:
        """The effective weight ``(prod in_modes, prod out_modes)`` (padding included)."""
        whole = group_cores(self._tt_cores(), (len(self.in_modes),))[0]
        big_m = math.prod(self.in_modes)
        return trace_ring(whole.reshape(big_m, -1), self.ranks[0], math.prod(self.out_modes))

    def apply_order(self, rows: torch.Tensor, order: ContractionOrder,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
        """``rows`` ``(B, prod in_modes)`` times the weight, contracted in ``order``, plus ``bias``."""
        direction, groups = order
        if len(groups) == 1:
            weight: torch.Tensor = self.cached("weight", None, self.prunable, self._weight_io)
            out = rows @ weight
        else:
            cores = self.cached("supercores", groups, self.prunable,
                                lambda: group_cores(self._tt_cores(), groups))
            out = trace_ring(tt_chain_apply(rows, cores, direction), self.ranks[0], math.prod(self.out_modes))
        return out if bias is None else out + bias


class TRConv2d(TTMatrixConv2d):
    """A 2-d convolution whose kernel is a tensor ring over ``[kh kw, m_1 n_1, ..., m_d n_d]``.

    The ring of Wang et al., "Wide Compression: Tensor Ring Nets" (CVPR 2018), over the
    spatial kernel and the tensorized channels, computed as
    :class:`~tedepr_fx.layers.tt.TTMatrixConv2d` computes the TT convolution, with the
    boundary bond ``R = ranks[0] = ranks[-1]`` traced: ``core_0`` holds ``R r_0`` spatial
    filters ``(R r_0, 1, kh, kw)``, the channel cores are TR-matrix cores. ``init="decompose"``
    runs TR-SVD (Zhao et al. 2016, Algorithm 1); at ``rank="full"`` it is exact.

    References
    ----------
    Wang, Sun, Eriksson, Wang and Aggarwal, "Wide Compression: Tensor Ring Nets", CVPR 2018.
    Zhao, Zhou, Xie, Zhang and Cichocki, "Tensor Ring Decomposition", arXiv:1606.05535, 2016.
    """

    fmt = TR
    _scratch_cores = staticmethod(tr_scratch_cores)
    _svd = staticmethod(tr_svd)
    _check_ranks = staticmethod(_check_tr_ranks)


class TREmbedding(TTMatrixEmbedding):
    """An embedding whose table is a TR-matrix: the TT-embedding of Hrinchuk et al. (Findings of
    EMNLP 2020) with a ring's ranks (Zhao et al. 2016), ``ranks[0] == ranks[d]``.

    The lookup of :class:`~tedepr_fx.layers.embedding.TTMatrixEmbedding` keeps the boundary
    bond open and closes the ring in its last product. ``init="decompose"`` runs TR-SVD (Zhao et al. 2016,
    Algorithm 1); at ``rank="full"`` it is exact.
    """

    fmt = TR
    _scratch_cores = staticmethod(tr_scratch_cores)
    _svd = staticmethod(tr_svd)
    _check_ranks = staticmethod(_check_tr_ranks)
