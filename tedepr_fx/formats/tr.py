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
import torch.nn.functional as F
from torch import nn

from tedepr_fx.decompose.tr import tr_exact_ranks, tr_scratch_cores, tr_svd
from tedepr_fx.formats.base import Builder, Format, check_build_rank, check_init, largest_fitting
from tedepr_fx.formats.tt import ModesShape, tt_matrix_tensor
from tedepr_fx.layers.contraction import (
    ContractionOrder,
    candidate_orders,
    group_cores,
    tt_chain_apply,
    tt_flops,
)
from tedepr_fx.layers.hf import WeightLayout, check_layout, linear_layout, to_layout, weight_in_out
from tedepr_fx.layers.modes import select_modes
from tedepr_fx.layers.tt import TTCores
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
        for k, (r, bound) in enumerate(zip(spec, bounds)):
            if r > bound:
                raise ValueError(f"rank {r} exceeds the largest useful rank {bound} of TR bond {k} (dims {dims})")
        return [*spec, spec[0]]
    if isinstance(spec, int):
        if spec > largest:
            raise ValueError(f"rank {spec} exceeds the largest useful rank {largest} of a tensor ring "
                             f"with dims {dims}")
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


def _trace(t: torch.Tensor, r0: int, n: int) -> torch.Tensor:
    """``(..., r0 * n * r0)`` ordered ``(a, j, b)`` -> ``(..., n)``: the sum over ``a == b``."""
    if r0 == 1:
        return t
    return torch.diagonal(t.reshape(*t.shape[:-1], r0, n, r0), dim1=-3, dim2=-1).sum(-1)


# --- the layer -----------------------------------------------------------------------------------


class TRLinear(TTCores):
    """A linear layer whose weight is a TR-matrix (Zhao et al. 2016; Wang et al., CVPR 2018).

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the dense map.
    in_modes, out_modes : list[int]
        ``d >= 2`` modes each, with ``prod(in_modes) == in_features + in_pad`` and
        ``prod(out_modes) == out_features + out_pad``.
    ranks : list[int]
        ``d + 1`` TR ranks with ``ranks[0] == ranks[d]`` (:func:`resolve_tr_ranks`).
    bias : bool
        Whether the layer has a bias (not factorized, not prunable).
    weight_layout : {"linear", "conv1d"}
        The layout of the layer it replaces (:mod:`tedepr_fx.layers.hf`).
    in_pad, out_pad : int
        Zero input features appended / extra outputs dropped.

    Notes
    -----
    Cores ``core_k`` ``(r_{k-1}, m_k, n_k, r_k)``, each with a boolean mask. The constructor
    draws cores whose ring has the entry variance of ``nn.Linear``'s default init,
    ``1 / (3 in_features)`` (:func:`tedepr_fx.decompose.tr.tr_scratch_cores`).

    References
    ----------
    Zhao, Zhou, Xie, Zhang and Cichocki, "Tensor Ring Decomposition", arXiv:1606.05535, 2016.
    Wang, Sun, Eriksson, Wang and Aggarwal, "Wide Compression: Tensor Ring Nets", CVPR 2018.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        in_modes: list[int],
        out_modes: list[int],
        ranks: list[int],
        bias: bool = True,
        weight_layout: WeightLayout = "linear",
        in_pad: int = 0,
        out_pad: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        in_modes, out_modes, ranks = list(in_modes), list(out_modes), list(ranks)
        d = len(in_modes)
        if d < 2 or len(out_modes) != d:
            raise ValueError(f"in_modes {in_modes} and out_modes {out_modes} need the same length >= 2")
        if math.prod(in_modes) != in_features + in_pad or math.prod(out_modes) != out_features + out_pad:
            raise ValueError(f"modes {in_modes} -> {out_modes} do not multiply to {in_features} + {in_pad} -> "
                             f"{out_features} + {out_pad} features")
        if len(ranks) != d + 1 or ranks[0] != ranks[-1] or min(ranks) < 1:
            raise ValueError(f"ranks must be {d + 1} positive ints with ranks[0] == ranks[-1]; got {ranks}")
        self.in_features, self.out_features = in_features, out_features
        self.in_modes, self.out_modes, self.ranks = in_modes, out_modes, ranks
        self.in_pad, self.out_pad = in_pad, out_pad
        self.weight_layout = check_layout(weight_layout)
        if self.weight_layout == "conv1d":
            self.nf = out_features  # the attribute Hugging Face code reads
        dims = [m * n for m, n in zip(in_modes, out_modes)]
        flat = tr_scratch_cores(dims, ranks, 1.0 / (3 * in_features), device=device, dtype=dtype)
        self._register_cores([c.reshape(ranks[k], m, n, ranks[k + 1])
                              for k, (c, m, n) in enumerate(zip(flat, in_modes, out_modes))])
        self._init_bias(bias, out_features, in_features, device, dtype)
        self.tedepr_info = {
            "format": "tr",
            "in_modes": in_modes,
            "out_modes": out_modes,
            "ranks": ranks,
            "in_padding": in_pad,
            "out_padding": out_pad,
            "weight_layout": self.weight_layout,
        }

    @property
    def dense_params(self) -> int:
        return self.in_features * self.out_features

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"in_modes={self.in_modes}, out_modes={self.out_modes}, ranks={self.ranks}, "
                f"bias={self.bias is not None}")

    def contraction_order(self, rows: int) -> tuple[ContractionOrder, int]:
        """The order ``(direction, groups)`` the forward uses for ``rows`` input rows, and its FLOPs."""
        return tr_choose_order(rows, self.in_modes, self.out_modes, self.ranks)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """FLOPs of one forward (training mode: core merging included), bias and trace excluded."""
        return self.contraction_order(math.prod(input_shape[:-1]))[1]

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
        return _trace(whole.reshape(big_m, -1), self.ranks[0], math.prod(self.out_modes))

    def apply_order(self, rows: torch.Tensor, order: ContractionOrder) -> torch.Tensor:
        """``rows`` ``(B, prod in_modes)`` times the weight, contracted in ``order`` (no bias)."""
        direction, groups = order
        if len(groups) == 1:
            weight: torch.Tensor = self.cached("weight", None, self.prunable, self._weight_io)
            return rows @ weight
        cores = self.cached("supercores", groups, self.prunable,
                            lambda: group_cores(self._tt_cores(), groups))
        out = tt_chain_apply(rows, cores, direction)
        return _trace(out, self.ranks[0], math.prod(self.out_modes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"TRLinear expects {self.in_features} input features; got input of shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        if self.in_pad:
            rows = F.pad(rows, (0, self.in_pad))
        y = self.apply_order(rows, self.contraction_order(rows.shape[0])[0])
        if self.out_pad:
            y = y[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def to_dense(self) -> torch.Tensor:
        """Effective (masked) weight: ``(out, in)`` for the linear layout, ``(in, out)`` for conv1d."""
        with torch.no_grad():
            w_io = self._weight_io()[: self.in_features, : self.out_features]
            return to_layout(w_io, self.weight_layout)

    @classmethod
    def from_linear(
        cls, module: nn.Module, rank: RankSpec, modes: object = "auto", init: str = "scratch"
    ) -> TRLinear:
        """A TR layer replacing ``nn.Linear`` or Hugging Face ``Conv1D``.

        ``rank`` is resolved by :func:`resolve_tr_ranks` over the dims ``m_k n_k``;
        ``modes`` as for TT (:func:`tedepr_fx.layers.modes.select_modes`).
        ``init="decompose"`` runs TR-SVD (Zhao et al. 2016, Algorithm 1) on the weight
        permuted to ``(m_1 n_1, ..., m_d n_d)``; ``rank="full"`` is exact.
        """
        init = check_init(init)
        rank = check_build_rank(rank)
        layout, in_f, out_f = linear_layout(module, "TRLinear.from_linear")
        in_modes, out_modes, in_pad, out_pad = select_modes(modes, in_f, out_f)
        ranks = resolve_tr_ranks(rank, [m * n for m, n in zip(in_modes, out_modes)])
        weight = weight_in_out(module)  # a view: device and dtype of the module's weight
        new = cls(in_f, out_f, in_modes, out_modes, ranks, bias=module.bias is not None,
                  weight_layout=layout, in_pad=in_pad, out_pad=out_pad,
                  device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            bias = module.bias
            if isinstance(bias, torch.Tensor) and weight.device.type != "meta":
                new.bias.copy_(bias)
            if init == "decompose":
                if weight.device.type == "meta":
                    raise ValueError("init='decompose' needs real weights; the module is on the meta device")
                flat = tr_svd(tt_matrix_tensor(weight, in_modes, out_modes), ranks)
                for k, (core, m, n) in enumerate(zip(flat, in_modes, out_modes)):
                    getattr(new, f"core_{k}").copy_(core.reshape(ranks[k], m, n, ranks[k + 1]))
        return new


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
        return {"linear": TRLinear.from_linear, "hf_conv1d": TRLinear.from_linear}

    def max_ranks(self, shape: ModesShape) -> list[int]:
        return tr_exact_ranks([m * n for m, n in zip(*shape)])

    def stored_params(self, shape: ModesShape, ranks: Sequence[int]) -> int:
        return tr_params([m * n for m, n in zip(*shape)], ranks)

    def resolve_ranks(self, spec: RankSpec, shape: ModesShape) -> list[int]:
        return resolve_tr_ranks(spec, [m * n for m, n in zip(*shape)])


TR = TensorRing()
