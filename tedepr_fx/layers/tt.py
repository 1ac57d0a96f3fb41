"""Tensor-train layers: :class:`TTLinear` (TT-matrix / MPO) and :class:`TTConv2d`.

A TT-matrix (Novikov et al., "Tensorizing Neural Networks", NeurIPS 2015) stores a
weight ``W[(i_1..i_d), (j_1..j_d)]`` as cores ``core_k`` of shape
``(r_{k-1}, m_k, n_k, r_k)`` (``m``: input modes, ``n``: output modes). The forward
contracts the input with the cores in the order of fewest FLOPs for the actual batch
(:mod:`tedepr_fx.layers.contraction`). :class:`TTConv2d` adds the spatial kernel as an
extra core (Garipov et al., "Ultimate tensorization: compressing convolutional and FC
layers alike", NIPS 2016 workshop). :class:`TTMatrixLinear` is the linear layer's body,
shared with the tensor-ring layer :class:`tedepr_fx.formats.tr.TRLinear`.

Every core carries a boolean mask (:class:`~tedepr_fx.layers.masked.MaskedMixin`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar, Self, cast

import torch
import torch.nn.functional as F
from torch import nn

from tedepr_fx.decompose.tt import tt_scratch_cores, tt_svd
from tedepr_fx.formats.base import Format, check_build_rank, check_init
from tedepr_fx.formats.tt import TT, ModesShape, decompose_tt_matrix, matrix_cores
from tedepr_fx.layers.cache import EvalCache
from tedepr_fx.layers.contraction import (
    ContractionOrder,
    Groups,
    choose_eval_order,
    choose_order,
    group_cores,
    shape_hint,
    trace_ring,
    tt_chain_apply,
    tt_flops,
)
from tedepr_fx.layers.hf import WeightLayout, check_layout, linear_layout, to_layout, weight_in_out
from tedepr_fx.layers.masked import (
    DenseWeightView,
    MaskedMixin,
    PaddingMode,
    Pair,
    conv2d_output_hw,
)
from tedepr_fx.layers.modes import select_modes
from tedepr_fx.ranks import RankSpec


def _checked_modes(in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int], in_features: int,
                   out_features: int, in_pad: int, out_pad: int) -> tuple[list[int], list[int], list[int]]:
    """``in_modes``, ``out_modes`` and ``ranks`` as lists, the modes checked against the (padded) features."""
    if len(in_modes) != len(out_modes):
        raise ValueError(f"in_modes {list(in_modes)} and out_modes {list(out_modes)} differ in length")
    if math.prod(in_modes) != in_features + in_pad:
        raise ValueError(
            f"in_modes {list(in_modes)} multiply to {math.prod(in_modes)}, but in_features + in_pad "
            f"= {in_features} + {in_pad}"
        )
    if math.prod(out_modes) != out_features + out_pad:
        raise ValueError(
            f"out_modes {list(out_modes)} multiply to {math.prod(out_modes)}, but out_features + out_pad "
            f"= {out_features} + {out_pad}"
        )
    return list(in_modes), list(out_modes), list(ranks)


def _check_tt_ranks(ranks: Sequence[int], d: int) -> None:
    """``ValueError`` unless ``ranks`` are ``d + 1`` positive TT ranks with ends 1 (``d`` cores)."""
    if len(ranks) != d + 1 or ranks[0] != 1 or ranks[-1] != 1 or min(ranks) < 1:
        raise ValueError(f"ranks must be {d + 1} positive ints with ends 1; got {list(ranks)}")


class TTCores(EvalCache, DenseWeightView, MaskedMixin, nn.Module):
    """Shared machinery of TT-matrix layers (tensor-train and tensor-ring): masked cores ``core_k``,
    bias init, the build from a dense layer and the eval-mode cache of merged cores."""

    _first_channel_core = 0

    # --- the format's parts: a subclass binds its format's functions -------------------------------

    @staticmethod
    def _check_ranks(ranks: list[int], d: int) -> None:
        """``ValueError`` unless ``ranks`` are ``d + 1`` ranks of the format (``d`` cores)."""
        raise NotImplementedError

    @staticmethod
    def _scratch_cores(dims: list[int], ranks: list[int], target_var: float,
                       device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Random cores ``(r_{k-1}, q_k, r_k)`` over ``dims`` whose dense weight has entry variance
        ``target_var``."""
        raise NotImplementedError

    @staticmethod
    def _svd(tensor: torch.Tensor, ranks: list[int]) -> list[torch.Tensor]:
        """The format's decomposition of ``tensor`` ``(q_1, ..., q_d)`` into cores ``(r_{k-1}, q_k, r_k)``."""
        raise NotImplementedError

    def _init_cores(self, fmt: str, in_modes: list[int], out_modes: list[int], ranks: list[int],
                    in_pad: int, out_pad: int, cores: list[torch.Tensor], bias: bool, out_features: int,
                    fan_in: int, device: torch.device | str | None, dtype: torch.dtype | None,
                    **info: object) -> None:
        """Store modes, ranks and padding, register ``cores`` (masked), draw the bias, and
        start ``tedepr_info`` (``info`` goes after the ranks)."""
        self.in_modes, self.out_modes, self.ranks = in_modes, out_modes, ranks
        self.in_pad, self.out_pad = in_pad, out_pad
        for k, core in enumerate(cores):
            setattr(self, f"core_{k}", nn.Parameter(core))
        self.prunable = tuple(f"core_{k}" for k in range(len(cores)))
        self.init_masks()
        self._init_bias(bias, out_features, fan_in, device, dtype)
        self.tedepr_info: dict[str, object] = {
            "format": fmt,
            "in_modes": in_modes,
            "out_modes": out_modes,
            "ranks": ranks,
            **info,
            "in_padding": in_pad,
            "out_padding": out_pad,
        }

    def _init_bias(self, bias: bool, out_features: int, fan_in: int,
                   device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        """The dense layer's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); none on meta."""
        if not bias:
            self.register_parameter("bias", None)
            return
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        if self.bias.device.type != "meta":
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def _copy_from(self, weight: torch.Tensor, bias: torch.Tensor | None, init: str,
                   decompose: Callable[[], list[torch.Tensor]], what: str) -> None:
        """Copy the dense layer's ``bias`` (not on meta) and, for ``init="decompose"``, the cores
        ``decompose()`` returns; ``weight`` is the dense layer's, ``what`` names it in errors."""
        with torch.no_grad():
            if bias is not None and weight.device.type != "meta":
                self.bias.copy_(bias)
            if init == "decompose":
                if weight.device.type == "meta":
                    raise ValueError(f"init='decompose' needs real weights; {what} is on the meta device")
                for k, core in enumerate(decompose()):
                    getattr(self, f"core_{k}").copy_(core)

    def _channel_names(self) -> list[str]:
        return list(self.prunable[self._first_channel_core :])

    def _supercores(self, groups: Groups) -> list[torch.Tensor]:
        names = self._channel_names()
        return self.cached(
            "supercores", groups, names, lambda: group_cores([self.masked(n) for n in names], groups)
        )


class TTMatrixLinear(TTCores):
    """A linear layer whose weight is a chain of TT-matrix cores ``core_k`` ``(r_{k-1}, m_k, n_k, r_k)``.

    The shared body of :class:`TTLinear` (a train, ``r_0 = r_d = 1``; Novikov et al.,
    NeurIPS 2015) and :class:`tedepr_fx.formats.tr.TRLinear` (a ring, ``r_0 = r_d``,
    traced; Wang et al., CVPR 2018): constructor, forward, ``to_dense`` and
    :meth:`from_linear`. A subclass sets :attr:`fmt` and supplies the format's parts:
    :meth:`_check_ranks`, :meth:`_scratch_cores`, :meth:`_svd`, :meth:`contraction_order`,
    :meth:`apply_order` and :meth:`_weight_io`.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the dense map.
    in_modes, out_modes : list[int]
        ``d`` modes each, with ``prod(in_modes) == in_features + in_pad`` and
        ``prod(out_modes) == out_features + out_pad``.
    ranks : list[int]
        ``d + 1`` ranks (checked by :meth:`_check_ranks`).
    bias : bool
        Whether the layer has a bias (not factorized, not prunable).
    weight_layout : {"linear", "conv1d"}
        The layout of the layer it replaces: ``nn.Linear`` (weight ``(out, in)``) or
        Hugging Face ``Conv1D`` (weight ``(in, out)``, :mod:`tedepr_fx.layers.hf`); only
        ``to_dense`` differs.
    in_pad, out_pad : int
        Zero input features appended / extra outputs dropped (see :func:`auto_modes`).

    Notes
    -----
    The scratch cores (:meth:`_scratch_cores`) give the rebuilt weight the entry variance
    of ``nn.Linear``'s default init, ``1 / (3 in_features)``; the bias is drawn as
    ``nn.Linear``'s.
    """

    fmt: ClassVar[Format[ModesShape]]

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
    ) -> None:
        super().__init__()
        in_modes, out_modes, ranks = _checked_modes(in_modes, out_modes, ranks, in_features, out_features,
                                                    in_pad, out_pad)
        self._check_ranks(ranks, len(in_modes))
        self.in_features, self.out_features = in_features, out_features
        self.weight_layout = check_layout(weight_layout)
        if self.weight_layout == "conv1d":
            self.nf = out_features  # the attribute Hugging Face code reads
        dims = [m * n for m, n in zip(in_modes, out_modes)]
        flat = self._scratch_cores(dims, ranks, 1.0 / (3 * in_features), device=device, dtype=dtype)
        self._init_cores(self.fmt.name, in_modes, out_modes, ranks, in_pad, out_pad,
                         matrix_cores(flat, in_modes, out_modes, ranks), bias, out_features, in_features,
                         device, dtype)
        self.tedepr_info["weight_layout"] = self.weight_layout

    # --- the format's parts (and :meth:`TTCores._check_ranks`, ``_scratch_cores``, ``_svd``) -----

    def contraction_order(self, rows: int) -> tuple[ContractionOrder, int]:
        """The order ``(direction, groups)`` the forward uses for ``rows`` input rows, and its FLOPs."""
        raise NotImplementedError

    def apply_order(self, rows: torch.Tensor, order: ContractionOrder,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
        """``rows`` ``(B, prod in_modes)`` times the weight, contracted in ``order``, plus ``bias``."""
        raise NotImplementedError

    def _weight_io(self) -> torch.Tensor:
        """The effective weight ``(prod in_modes, prod out_modes)`` (padding included)."""
        raise NotImplementedError

    def eval_order(self, rows: int) -> ContractionOrder | None:
        """The order to use in eval mode, where the merged cores are cached (None: the training
        order). Only formats with a model of their eval cost override it."""
        return None

    # --- shared ----------------------------------------------------------------------------------

    @property
    def dense_params(self) -> int:
        return self.in_features * self.out_features

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"in_modes={self.in_modes}, out_modes={self.out_modes}, ranks={self.ranks}, "
                f"bias={self.bias is not None}")

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """FLOPs of one forward (training mode: core merging included), bias (and a ring's trace) excluded."""
        return self.contraction_order(math.prod(input_shape[:-1]))[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__} expects {self.in_features} input features; "
                             f"got input of shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        if self.in_pad:
            rows = F.pad(rows, (0, self.in_pad))
        n = shape_hint(rows.shape)[0]
        order = self.eval_order(n) if self.caching() else None
        if order is not None and len(order[1]) == 1:
            # eval mode, one group: the rebuilt weight, cached in F.linear's (out, in) layout
            weight = self.cached("weight_oi", None, self.prunable, lambda: self._weight_io().t().contiguous())
            y = F.linear(rows, weight)[:, : self.out_features] if self.out_pad else F.linear(rows, weight, self.bias)
            if self.out_pad and self.bias is not None:
                y = y + self.bias
            return y.reshape(*lead, self.out_features)
        if order is None:
            order, _ = self.contraction_order(n)
        if self.out_pad:
            y = self.apply_order(rows, order)[:, : self.out_features]
            if self.bias is not None:
                y = y + self.bias
        else:
            y = self.apply_order(rows, order, self.bias)
        return y.reshape(*lead, self.out_features)

    def to_dense(self) -> torch.Tensor:
        """Effective (masked) weight: ``(out, in)`` for the linear layout, ``(in, out)`` for conv1d."""
        with torch.no_grad():
            return to_layout(self._weight_io()[: self.in_features, : self.out_features], self.weight_layout)

    @classmethod
    def from_linear(cls, module: nn.Module, rank: RankSpec, modes: object = "auto", init: str = "scratch") -> Self:
        """A layer of this format replacing ``nn.Linear`` or Hugging Face ``Conv1D``.

        Parameters
        ----------
        module : nn.Linear or transformers Conv1D
            The layer to replace; may live on the ``meta`` device with ``init="scratch"``.
        rank : RankSpec
            Resolved by the format (:attr:`fmt`) over the modes: for TT
            :func:`tedepr_fx.formats.tt.resolve_tt_ranks`, for TR
            :func:`tedepr_fx.formats.tr.resolve_tr_ranks` over the dims ``m_k n_k``
            (not ``"auto"``).
        modes : "auto" or (in_modes, out_modes)
            ``"auto"``: :func:`tedepr_fx.layers.modes.auto_modes` (may pad).
        init : {"scratch", "decompose"}
            Variance-preserving random cores, or the format's SVD (:meth:`_svd`) of the
            module's weight permuted to ``(m_1 n_1, ..., m_d n_d)``: TT-SVD (Oseledets
            2011) or TR-SVD (Zhao et al. 2016, Algorithm 1); ``rank="full"`` with
            ``"decompose"`` is exact. The bias is copied either way.
        """
        init = check_init(init)
        rank = check_build_rank(rank)
        layout, in_f, out_f = linear_layout(module, f"{cls.__name__}.from_linear")
        in_modes, out_modes, in_pad, out_pad = select_modes(modes, in_f, out_f)
        ranks = cls.fmt.resolve_ranks(rank, (in_modes, out_modes))
        weight = weight_in_out(module)  # a view: device and dtype of the module's weight
        new = cls(in_f, out_f, in_modes, out_modes, ranks, bias=module.bias is not None,
                  weight_layout=layout, in_pad=in_pad, out_pad=out_pad,
                  device=weight.device, dtype=weight.dtype)
        # nn.Linear / Conv1D (linear_layout checked): a bias Parameter or None
        new._copy_from(weight, cast("torch.Tensor | None", module.bias), init,
                       lambda: decompose_tt_matrix(weight, in_modes, out_modes, ranks, svd=cls._svd), "the module")
        return new


class TTLinear(TTMatrixLinear):
    """A linear layer whose weight is a TT-matrix (Novikov et al., NeurIPS 2015).

    Constructor parameters as :class:`TTMatrixLinear`; ``ranks`` are ``d + 1`` TT ranks
    with ends 1 (see :func:`tedepr_fx.formats.tt.resolve_tt_ranks`).

    Notes
    -----
    The cores are initialised so that the rebuilt weight has the entry variance of
    ``nn.Linear``'s default init, ``1 / (3 in_features)`` (:func:`tt_scratch_cores`).
    ``init="decompose"`` runs TT-SVD (Oseledets 2011).

    References
    ----------
    Novikov, Podoprikhin, Osokin and Vetrov, "Tensorizing Neural Networks", NeurIPS 2015.
    Oseledets, "Tensor-Train Decomposition", SIAM J. Sci. Comput. 33(5), 2011.
    """

    fmt = TT
    _scratch_cores = staticmethod(tt_scratch_cores)
    _svd = staticmethod(tt_svd)
    _check_ranks = staticmethod(_check_tt_ranks)

    def contraction_order(self, rows: int) -> tuple[ContractionOrder, int]:
        """The order ``(direction, groups)`` the forward uses for ``rows`` input rows, and its FLOPs."""
        return choose_order(rows, self.in_modes, self.out_modes, self.ranks)

    def eval_order(self, rows: int) -> ContractionOrder:
        """The eval-mode order: merged cores are cached, so only the chain's products count, plus
        a fixed cost per product (:data:`EVAL_STEP_FLOPS`); one group is the cached weight."""
        return choose_eval_order(rows, self.in_modes, self.out_modes, self.ranks)

    def apply_order(self, rows: torch.Tensor, order: ContractionOrder,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
        """``rows`` ``(B, prod in_modes)`` times the weight, contracted in ``order``, plus ``bias``."""
        direction, groups = order
        return tt_chain_apply(rows, self._supercores(groups), direction, bias)

    def _weight_io(self) -> torch.Tensor:
        full = group_cores([self.masked(n) for n in self.prunable], (len(self.prunable),))[0]
        return full.reshape(full.shape[1], full.shape[2])


class TTMatrixConv2d(TTCores):
    """A 2-d convolution whose kernel is a chain of cores with the spatial kernel as the first.

    Garipov et al., "Ultimate tensorization: compressing convolutional and FC layers
    alike" (NIPS 2016 workshop): ``W[o, i, y, x] = sum S[a, b, y, x] T[b, i, o, a]`` where
    ``S`` is the spatial core and ``T`` the TT-matrix over the tensorized channels. The
    bond ``a`` joins the last channel core back to the spatial core: it has size
    ``R = ranks[0] = ranks[-1]``, 1 for a tensor train (:class:`TTConv2d`) and the ring's
    boundary rank for a tensor ring (:class:`tedepr_fx.formats.tr.TRConv2d`; Wang et al.,
    CVPR 2018). ``core_0`` is the spatial core stored as ``R r_0`` single-channel filters
    ``(R r_0, 1, kh, kw)`` (``a`` outer); ``core_1..core_d`` are TT-matrix cores
    ``(r_{k-1}, m_k, n_k, r_k)`` over the channels, the last one's right rank ``R``.

    The forward either (a) convolves every input channel with the ``R r_0`` spatial
    filters, then contracts ``(r_0, channels)`` with the channel cores for each ``a`` and
    sums over ``a`` (the ring's trace), or (b) rebuilds the dense kernel and runs one
    ``conv2d``, whichever needs fewer FLOPs for the actual input shape. Only ``groups=1``
    convolutions are supported.

    ``ranks`` has ``d + 2`` entries ``[R, r_0, r_1, ..., r_{d-1}, R]`` over the dims
    ``[kh kw, m_1 n_1, ..., m_d n_d]``. A subclass sets :attr:`fmt` and supplies
    :meth:`_check_ranks`, :meth:`_scratch_cores` and :meth:`_svd`.
    """

    _first_channel_core = 1
    fmt: ClassVar[Format[ModesShape]]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Pair,
        in_modes: list[int],
        out_modes: list[int],
        ranks: list[int],
        stride: int | Pair = 1,
        padding: int | Pair | str = 0,
        dilation: int | Pair = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        in_pad: int = 0,
        out_pad: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        in_modes, out_modes, ranks = _checked_modes(in_modes, out_modes, ranks, in_channels, out_channels,
                                                    in_pad, out_pad)
        self._check_ranks(ranks, len(in_modes) + 1)
        # a meta conv computes the canonical attributes (tuples, 'same' padding amounts) for us
        ref = nn.Conv2d(1, 1, kernel_size, stride=stride, padding=padding, dilation=dilation,
                        padding_mode=padding_mode, device="meta")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = ref.kernel_size, ref.stride, ref.padding
        self.dilation, self.padding_mode = ref.dilation, ref.padding_mode
        self._reversed_padding_repeated_twice = list(ref._reversed_padding_repeated_twice)
        kh, kw = self.kernel_size
        fan_in = in_channels * kh * kw
        dims = [kh * kw] + [m * n for m, n in zip(in_modes, out_modes)]
        flat = self._scratch_cores(dims, ranks, 1.0 / (3 * fan_in), device=device, dtype=dtype)
        self._init_cores(self.fmt.name, in_modes, out_modes, ranks, in_pad, out_pad,
                         _conv_cores_from_flat(flat, ranks, in_modes, out_modes, kh, kw), bias, out_channels,
                         fan_in, device, dtype, spatial_rank=ranks[1])

    # --- shared ----------------------------------------------------------------------------------

    @property
    def dense_params(self) -> int:
        return self.out_channels * self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"in_modes={self.in_modes}, out_modes={self.out_modes}, ranks={self.ranks}")

    def _chain_shape(self) -> tuple[list[int], list[int]]:
        """Out modes and ranks of the channel chain with the closing bond folded into the last
        output mode: ``(n_1, ..., n_d R)``, ``[r_0, ..., r_{d-1}, 1]``."""
        ring = self.ranks[0]
        out = list(self.out_modes)
        out[-1] *= ring
        return out, [*self.ranks[1:-1], 1]

    def contraction_order(self, input_shape: tuple[int, ...]) -> tuple[str, ContractionOrder, int]:
        """``("factors", order, flops)`` or ``("dense", order, flops)`` for an input shape."""
        batch = input_shape[0] if len(input_shape) == 4 else 1
        out_h, out_w = conv2d_output_hw(input_shape[-2:], self.kernel_size, self.stride,
                                        self.padding, self.dilation)
        khkw = self.kernel_size[0] * self.kernel_size[1]
        filters = self.ranks[0] * self.ranks[1]
        pixels = batch * out_h * out_w
        chain_out, chain_ranks = self._chain_shape()
        order, chain = choose_order(pixels * self.ranks[0], self.in_modes, chain_out, chain_ranks)
        factors = 2 * batch * self.in_channels * out_h * out_w * filters * khkw + chain
        d = len(self.in_modes)
        merge = tt_flops(0, self.in_modes, chain_out, chain_ranks, (d,))
        dense = (merge + 2 * filters * khkw * self.in_channels * self.out_channels
                 + 2 * pixels * self.out_channels * self.in_channels * khkw)
        if dense < factors:
            return "dense", ("ltr", (d,)), dense
        return "factors", order, factors

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """FLOPs of one forward (core merging included), bias and a ring's trace excluded."""
        return self.contraction_order(tuple(input_shape))[2]

    def _channel_cores(self) -> list[torch.Tensor]:
        """The masked channel cores, the last one's right rank folded into its output mode."""
        cores = [self.masked(n) for n in self._channel_names()]
        r, m, n, ring = cores[-1].shape
        cores[-1] = cores[-1].reshape(r, m, n * ring, 1)
        return cores

    def _channel_supercores(self, groups: Groups) -> list[torch.Tensor]:
        return self.cached("supercores", groups, self._channel_names(),
                           lambda: group_cores(self._channel_cores(), groups))

    def _kernel(self, channel: torch.Tensor) -> torch.Tensor:
        """The kernel ``(out, in, kh, kw)`` from the merged channel core ``(r0, Cin_pad, Cout_pad R, 1)``."""
        ring, r0 = self.ranks[0], self.ranks[1]
        channel = channel.reshape(r0, channel.shape[1], -1, ring)[:, : self.in_channels, : self.out_channels]
        spatial = self.masked("core_0")  # (R r0, 1, kh, kw), filters ordered (a, b)
        # W[(i, o), s] = sum_{a, b} T[b, i, o, a] S[(a, b), s]
        w = channel.permute(3, 0, 1, 2).reshape(ring * r0, -1).t() @ spatial.reshape(ring * r0, -1)
        return w.reshape(self.in_channels, self.out_channels, *self.kernel_size).transpose(0, 1)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, None, self.stride, 0, self.dilation, groups)
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects (N, {self.in_channels}, H, W) input; "
                             f"got {tuple(x.shape)}")
        kind, (direction, groups), _ = self.contraction_order(shape_hint(x.shape))
        if kind == "dense":
            y = self._conv(x, self._kernel(self._channel_supercores(groups)[0]))
        else:
            batch, chans, h, w = x.shape
            ring, r0 = self.ranks[0], self.ranks[1]
            # every input channel through the R r0 spatial filters: (B*C, R r0, H', W')
            z = self._conv(x.reshape(batch * chans, 1, h, w), self.masked("core_0"))
            oh, ow = z.shape[-2:]
            z = z.reshape(batch, chans, ring, r0, oh, ow).permute(0, 4, 5, 2, 3, 1)  # (B, H', W', R, r0, C)
            if self.in_pad:
                z = F.pad(z, (0, self.in_pad))
            rows = z.reshape(batch * oh * ow * ring, r0 * (chans + self.in_pad))
            out = tt_chain_apply(rows, self._channel_supercores(groups), direction)
            # the trace: the spatial core's a meets the last channel core's a
            out = trace_ring(out.reshape(batch * oh * ow, -1), ring, self.out_channels + self.out_pad)
            if self.out_pad:
                out = out[:, : self.out_channels]
            y = out.reshape(batch, oh, ow, self.out_channels).permute(0, 3, 1, 2)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return y.squeeze(0) if unbatched else y

    def to_dense(self) -> torch.Tensor:
        """Effective (masked) kernel ``(out, in, kh, kw)``."""
        with torch.no_grad():
            channel = group_cores(self._channel_cores(), (len(self.in_modes),))[0]
            return self._kernel(channel).contiguous()

    @classmethod
    def from_conv(cls, conv: nn.Module, rank: RankSpec, modes: object = "auto", init: str = "scratch") -> Self:
        """A convolution of this format replacing ``conv`` (``groups=1`` only).

        ``rank`` is resolved by the format over the modes ``[kh*kw] + in_modes`` x
        ``[1] + out_modes``, so the bond after the spatial core is at most ``kh*kw``
        (times ``R`` for a ring). ``modes`` tensorizes the channels. ``init="decompose"``
        runs the format's SVD (TT-SVD, Oseledets 2011; TR-SVD, Zhao et al. 2016) on the
        kernel permuted to ``(kh*kw, m_1 n_1, ..., m_d n_d)``; ``rank="full"`` is exact.
        """
        init = check_init(init)
        rank = check_build_rank(rank)
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"{cls.__name__}.from_conv expects nn.Conv2d; got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"{cls.__name__} supports groups=1 only; the convolution has groups={conv.groups}")
        in_modes, out_modes, in_pad, out_pad = select_modes(modes, conv.in_channels, conv.out_channels)
        kh, kw = conv.kernel_size
        ranks = cls.fmt.resolve_ranks(rank, ([kh * kw] + in_modes, [1] + out_modes))
        weight = conv.weight
        # torch types a Conv2d's geometry as tuple[int, ...]; a 2-d convolution's has two entries
        new = cls(conv.in_channels, conv.out_channels, cast(Pair, conv.kernel_size), in_modes, out_modes, ranks,
                  stride=cast(Pair, conv.stride), padding=cast("Pair | str", conv.padding),
                  dilation=cast(Pair, conv.dilation),
                  bias=conv.bias is not None, padding_mode=conv.padding_mode,
                  in_pad=in_pad, out_pad=out_pad, device=weight.device, dtype=weight.dtype)
        new._copy_from(weight, conv.bias, init,
                       lambda: _decompose_conv(weight, in_modes, out_modes, ranks, cls._svd), "the convolution")
        return new


class TTConv2d(TTMatrixConv2d):
    """A 2-d convolution whose kernel is a TT with the spatial kernel as an extra core.

    Garipov et al., "Ultimate tensorization: compressing convolutional and FC layers
    alike" (NIPS 2016 workshop); the shared body is :class:`TTMatrixConv2d` with
    ``R = 1``: ``core_0`` is the spatial core ``(r_0, 1, kh, kw)`` (a bank of ``r_0``
    single-channel filters), ``ranks`` are ``[1, r_0, r_1, ..., r_{d-1}, 1]``.
    """

    fmt = TT
    _scratch_cores = staticmethod(tt_scratch_cores)
    _svd = staticmethod(tt_svd)
    _check_ranks = staticmethod(_check_tt_ranks)


def _decompose_conv(weight: torch.Tensor, in_modes: list[int], out_modes: list[int], ranks: list[int],
                    svd: Callable[[torch.Tensor, list[int]], list[torch.Tensor]]) -> list[torch.Tensor]:
    """``svd`` (TT-SVD or TR-SVD) of a kernel ``(out, in, kh, kw)``, zero-padded to the modes and
    permuted to ``(kh*kw, m_1 n_1, ..., m_d n_d)``, as the cores of :class:`TTMatrixConv2d`."""
    d = len(in_modes)
    kh, kw = weight.shape[2], weight.shape[3]
    cin, cout = math.prod(in_modes), math.prod(out_modes)
    w = weight.reshape(weight.shape[0], weight.shape[1], kh * kw)
    if (cout, cin) != tuple(w.shape[:2]):
        w = F.pad(w, (0, 0, 0, cin - w.shape[1], 0, cout - w.shape[0]))
    # (n_1..n_d, m_1..m_d, s) -> (s, m_1, n_1, ..., m_d, n_d)
    perm = [2 * d] + [i for k in range(d) for i in (d + k, k)]
    t = w.reshape(*out_modes, *in_modes, kh * kw).permute(*perm)
    t = t.reshape([kh * kw] + [m * n for m, n in zip(in_modes, out_modes)])
    return _conv_cores_from_flat(svd(t, ranks), ranks, in_modes, out_modes, kh, kw)


def _conv_cores_from_flat(flat: Sequence[torch.Tensor], ranks: Sequence[int], in_modes: Sequence[int],
                          out_modes: Sequence[int], kh: int, kw: int) -> list[torch.Tensor]:
    """Cores over ``(kh*kw, m_1 n_1, ...)`` -> the spatial filter bank ``(R r_0, 1, kh, kw)``
    (filters ordered ``(a, b)``) plus TT-matrix cores."""
    ring, r0 = ranks[0], ranks[1]
    spatial = flat[0].reshape(ring, kh * kw, r0).permute(0, 2, 1).reshape(ring * r0, 1, kh, kw).contiguous()
    return [spatial, *matrix_cores(flat[1:], in_modes, out_modes, ranks[1:])]
