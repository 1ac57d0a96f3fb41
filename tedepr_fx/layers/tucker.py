"""Tucker-2 layers: a linear layer and a 2-d convolution whose weight lives as three factors.

``W = core x_0 U_out x_1 U_in`` (Kim et al., "Compression of Deep Convolutional Neural
Networks for Fast and Low Power Mobile Applications", ICLR 2016). The forward is a chain of
three small maps (``in -> r_in -> r_out -> out``), or any of the other orders in which the
four operands (input, ``U_in``, ``core``, ``U_out``) can be contracted pairwise, up to
rebuilding ``W`` and running one dense product; the layer picks the order with the fewest
FLOPs for the actual input shape. Every factor carries a mask (:mod:`tedepr_fx.layers.masked`).

>>> import torch
>>> from torch import nn
>>> dense = nn.Linear(6, 4)
>>> layer = TuckerLinear.from_linear(dense, "full", init="decompose")
>>> layer.tedepr_info["ranks"]
[4, 4]
>>> x = torch.randn(3, 6)
>>> bool(torch.allclose(layer(x), dense(x), atol=1e-5))
True
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from tedepr_fx.decompose.tucker import partial_tucker2, tucker2_scratch
from tedepr_fx.formats.base import check_build_rank, check_init
from tedepr_fx.formats.tucker import resolve_tucker_ranks
from tedepr_fx.layers.cache import EvalCache
from tedepr_fx.layers.contraction import shape_hint
from tedepr_fx.layers.hf import WeightLayout, check_layout, linear_layout, to_layout, weight_in_out
from tedepr_fx.layers.masked import (
    DenseWeightView,
    MaskedMixin,
    PaddingMode,
    Pair,
    conv2d_output_hw,
)
from tedepr_fx.ranks import RankSpec

FACTORS = ("factor_out", "core", "factor_in")
ORDERS = ("chain", "merge_out", "merge_in", "dense_via_in", "dense_via_out")


def _order_costs(
    dims: tuple[int, ...], ranks: list[int], rows_in: int, rows_out: int
) -> dict[str, int]:
    """FLOPs (2 x multiply-adds) of every pairwise contraction order of (x, U_in, core, U_out).

    ``rows_in`` is the number of input positions the ``in -> r_in`` map runs over, ``rows_out``
    the number of output positions (they differ for a strided conv); each kernel offset is a
    separate multiply-add for the maps that carry the kernel. The five orders are the five
    binary trees over the chain: ``chain`` ((x U_in) core) U_out, ``merge_out`` (x U_in)(core
    U_out), ``merge_in`` (x (U_in core)) U_out, and the two rebuilds ``dense_via_in`` /
    ``dense_via_out`` x ((U_in core) U_out) / x (U_in (core U_out)).
    """
    out_f, in_f = dims[0], dims[1]
    k = math.prod(dims[2:])
    r_out, r_in = ranks
    merged_in = r_out * r_in * k * in_f  # core x U_in -> (r_out, in, k)
    merged_out = out_f * r_out * r_in * k  # U_out x core -> (out, r_in, k)
    return {
        "chain": 2 * (rows_in * in_f * r_in + rows_out * r_in * r_out * k + rows_out * r_out * out_f),
        "merge_out": 2 * (merged_out + rows_in * in_f * r_in + rows_out * r_in * k * out_f),
        "merge_in": 2 * (merged_in + rows_out * in_f * k * r_out + rows_out * r_out * out_f),
        "dense_via_in": 2 * (merged_in + out_f * r_out * in_f * k + rows_out * in_f * k * out_f),
        "dense_via_out": 2 * (merged_out + out_f * r_in * k * in_f + rows_out * in_f * k * out_f),
    }


def _choose(costs: dict[str, int]) -> tuple[str, int]:
    # the first cheapest, ties to the plain chain; a loop, not min(key=lambda), which
    # torch.compile cannot trace (a graph break, then one compiled frame per layer shape)
    order = "chain"
    for name, cost in costs.items():
        if cost < costs[order]:
            order = name
    return order, costs[order]


class _Tucker2Base(EvalCache, DenseWeightView, MaskedMixin, nn.Module):
    """Shared state of the Tucker-2 layers: factors, masks, contraction order and eval-mode cache."""

    prunable = FACTORS

    def _init_factors(self, dims: tuple[int, ...], ranks: list[int], bias: bool,
                      device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        """Scratch factors whose rebuilt weight has the dense default init's variance, and the bias.

        PyTorch's default ``kaiming_uniform_(a=sqrt(5))`` of ``nn.Linear`` / ``nn.Conv2d`` has
        ``Var = 1 / (3 fan_in)`` (:func:`tucker2_scratch`); the bias is U(-1/sqrt(fan_in),
        1/sqrt(fan_in)) as theirs. Nothing is allocated on the meta device.
        """
        self.dims = tuple(dims)
        self.ranks = list(ranks)
        fan_in = math.prod(self.dims[1:])
        factor_out, core, factor_in = tucker2_scratch(
            self.dims, self.ranks, 1.0 / (3 * fan_in), device=device,
            dtype=dtype if dtype is not None else torch.get_default_dtype())
        self.factor_out = nn.Parameter(factor_out)
        self.core = nn.Parameter(core)
        self.factor_in = nn.Parameter(factor_in)
        if bias:
            self.bias = nn.Parameter(torch.empty(self.dims[0], device=device, dtype=factor_out.dtype))
            if self.bias.device.type != "meta":
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(self.bias, -bound, bound)
        else:
            self.register_parameter("bias", None)
        self.init_masks()
        self.tedepr_info = {"format": "tucker", "ranks": list(ranks), "dims": list(dims)}

    @torch.no_grad()
    def _copy_from(self, weight: torch.Tensor, bias: torch.Tensor | None, init: str) -> None:
        """Copy the source layer's bias, and with ``init="decompose"`` its partial HOSVD.

        ``weight`` is the dense weight as ``(out, in, *kernel)``.
        """
        if init == "decompose":
            if weight.device.type == "meta":
                raise ValueError("init='decompose' needs a real weight; the source layer is on the meta device")
            for name, factor in zip(FACTORS, partial_tucker2(weight.detach(), self.ranks)):
                getattr(self, name).copy_(factor)
        if bias is not None and self.bias is not None and bias.device.type != "meta":
            self.bias.copy_(bias)

    @property
    def dense_params(self) -> int:
        return math.prod(self.dims)

    def _merged(self, order: str) -> torch.Tensor:
        """The merged operand an order needs: ``(r_out, in, *k)``, ``(out, r_in, *k)`` or ``(out, in, *k)``."""
        u_out, core, u_in = (self.masked(n) for n in FACTORS)
        # torch.tensordot is unannotated: the results are named to give them their type
        out: torch.Tensor
        if order == "merge_in":
            out = _in_last_to_second(torch.tensordot(core, u_in, dims=([1], [1])))
            return out
        if order == "merge_out":
            out = torch.tensordot(u_out, core, dims=1)
            return out
        merged: torch.Tensor
        if order == "dense_via_in":
            merged = _in_last_to_second(torch.tensordot(core, u_in, dims=([1], [1])))
            out = torch.tensordot(u_out, merged, dims=1)
            return out
        merged = torch.tensordot(u_out, core, dims=1)
        out = _in_last_to_second(torch.tensordot(merged, u_in, dims=([1], [1])))
        return out

    def _cached_merged(self, order: str) -> torch.Tensor:
        """``_merged(order)``, reused in eval mode without autograd until a factor or mask changes."""
        return self.cached("merged", order, FACTORS, lambda: self._merged(order))

    def to_dense(self) -> torch.Tensor:
        with torch.no_grad():
            return self._merged("dense_via_in").contiguous()

    def extra_repr(self) -> str:
        return f"dims={self.dims}, ranks={self.ranks}, bias={self.bias is not None}"


class TuckerLinear(_Tucker2Base):
    """A linear layer with weight ``U_out @ core @ U_in.T`` (the matrix case of Tucker-2).

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the dense map.
    ranks : list[int]
        ``[r_out, r_in]`` (see :func:`tedepr_fx.formats.tucker.resolve_tucker_ranks`).
    bias : bool
        Whether the layer has a bias (not factorized, not prunable).
    weight_layout : {"linear", "conv1d"}
        The layout of the layer it replaces (:mod:`tedepr_fx.layers.hf`); only
        :meth:`to_dense` differs.

    Tensors ``factor_out`` ``(out, r_out)``, ``core`` ``(r_out, r_in)``, ``factor_in``
    ``(in, r_in)`` and ``bias`` ``(out,)``; each factor has a boolean mask. The constructor
    draws scratch factors; :meth:`from_linear` builds from a dense layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        ranks: list[int],
        bias: bool = True,
        weight_layout: WeightLayout = "linear",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_layout = check_layout(weight_layout)
        if self.weight_layout == "conv1d":
            self.nf = out_features  # the attribute Hugging Face code reads
        self._init_factors((out_features, in_features), list(ranks), bias, device, dtype)
        self.tedepr_info["weight_layout"] = self.weight_layout

    @classmethod
    def from_linear(
        cls, module: nn.Module, rank: RankSpec, modes: object = "auto", init: str = "scratch"
    ) -> TuckerLinear:
        """Build from an ``nn.Linear`` or a Hugging Face ``Conv1D`` (weight ``(in, out)``).

        ``modes`` must be ``"auto"`` (Tucker has none). ``init="scratch"`` draws
        variance-preserving factors (:func:`tucker2_scratch`); ``init="decompose"`` takes
        the partial HOSVD of the weight (:func:`partial_tucker2`). The bias is copied
        either way.
        """
        init = check_init(init)
        rank = check_build_rank(rank)
        if modes not in (None, "auto"):
            raise ValueError(f"format 'tucker' has no modes; got modes={modes!r}")
        layout, in_f, out_f = linear_layout(module, "TuckerLinear.from_linear")
        ranks = resolve_tucker_ranks(rank, (out_f, in_f))
        weight = weight_in_out(module)  # checked a tensor by linear_layout; a detached view
        bias = cast("torch.Tensor | None", module.bias)  # nn.Linear / Conv1D: a Parameter or None
        new = cls(in_f, out_f, ranks, bias=bias is not None, weight_layout=layout,
                  device=weight.device, dtype=weight.dtype)
        new._copy_from(weight.t(), bias, init)
        return new

    def order_costs(self, input_shape: tuple[int, ...]) -> dict[str, int]:
        """FLOPs of every contraction order for an input of this shape (see :func:`_order_costs`)."""
        if input_shape[-1] != self.in_features:
            raise ValueError(f"input has {input_shape[-1]} features, the layer expects {self.in_features}")
        rows = math.prod(input_shape[:-1])
        return _order_costs(self.dims, self.ranks, rows, rows)

    def choose_order(self, input_shape: tuple[int, ...]) -> str:
        """The contraction order (one of :data:`ORDERS`) with the fewest FLOPs for this input."""
        return _choose(self.order_costs(input_shape))[0]

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """FLOPs of one forward in the order the forward picks (rebuilds included; no bias)."""
        return _choose(self.order_costs(input_shape))[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        order = self.choose_order(shape_hint(x.shape))
        if order == "chain":
            h = F.linear(x, self.masked("factor_in").t())
            h = F.linear(h, self.masked("core"))
            return F.linear(h, self.masked("factor_out"), self.bias)
        merged = self._cached_merged(order)
        if order == "merge_in":
            return F.linear(F.linear(x, merged), self.masked("factor_out"), self.bias)
        if order == "merge_out":
            return F.linear(F.linear(x, self.masked("factor_in").t()), merged, self.bias)
        return F.linear(x, merged, self.bias)

    def to_dense(self) -> torch.Tensor:
        """Effective (masked) weight: ``(out, in)`` for the linear layout, ``(in, out)`` for conv1d."""
        return to_layout(super().to_dense().t(), self.weight_layout)


class Tucker2Conv2d(_Tucker2Base):
    """A 2-d convolution computed as 1x1 (in -> r_in), kxk (r_in -> r_out), 1x1 (r_out -> out).

    Tensors ``factor_out`` ``(out, r_out)``, ``core`` ``(r_out, r_in, kh, kw)``,
    ``factor_in`` ``(in, r_in)`` and ``bias``; stride, padding, dilation and ``padding_mode``
    of the original convolution act on the core convolution (the 1x1 maps commute with any
    padding mode, since they mix channels only and have no bias before the last one).
    ``groups > 1`` is not supported (see :meth:`from_conv`). The constructor draws scratch
    factors (``ranks`` is ``[r_out, r_in]``); :meth:`from_conv` builds from a convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        ranks: list[int],
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        # a meta conv computes the canonical attributes (tuples, 'same' padding amounts) for us
        ref = nn.Conv2d(1, 1, kernel_size, stride=stride, padding=padding, dilation=dilation,
                        padding_mode=padding_mode, device="meta")
        self.kernel_size, self.stride, self.padding = ref.kernel_size, ref.stride, ref.padding
        self.dilation, self.padding_mode = ref.dilation, ref.padding_mode
        self._reversed_padding = list(ref._reversed_padding_repeated_twice)
        self._init_factors((out_channels, in_channels, *self.kernel_size), list(ranks), bias, device, dtype)
        self.tedepr_info["kernel_size"] = list(self.kernel_size)

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, rank: RankSpec, modes: object = "auto", init: str = "scratch"
    ) -> Tucker2Conv2d:
        """Build from an ``nn.Conv2d`` (same stride, padding, dilation, padding_mode, bias).

        ``modes`` must be ``"auto"`` (Tucker has none). ``init`` as in
        :meth:`TuckerLinear.from_linear`.

        Raises
        ------
        ValueError
            For ``groups > 1``: a grouped (e.g. depthwise) weight is block-diagonal over
            channels, which a Tucker-2 chain with dense 1x1 factors cannot keep without
            losing the grouping; such layers hold few weights and are better pruned.
        """
        init = check_init(init)
        rank = check_build_rank(rank)
        if modes not in (None, "auto"):
            raise ValueError(f"format 'tucker' has no modes; got modes={modes!r}")
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"Tucker2Conv2d.from_conv needs an nn.Conv2d; got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(
                f"Tucker2Conv2d cannot represent a grouped convolution: groups={conv.groups} "
                f"(rank {rank!r} requested); use action: prune (or format: tt) for this layer"
            )
        ranks = resolve_tucker_ranks(rank, tuple(conv.weight.shape))
        # torch types a Conv2d's geometry as tuple[int, ...]; a 2-d convolution's has two entries
        new = cls(
            conv.in_channels, conv.out_channels, cast(Pair, conv.kernel_size), ranks,
            stride=cast(Pair, conv.stride), padding=cast("Pair | str", conv.padding),
            dilation=cast(Pair, conv.dilation), bias=conv.bias is not None,
            padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype,
        )
        new._copy_from(conv.weight, conv.bias, init)
        return new

    def order_costs(self, input_shape: tuple[int, ...]) -> dict[str, int]:
        """FLOPs of every contraction order for an input ``(N, C, H, W)`` or ``(C, H, W)``."""
        if len(input_shape) not in (3, 4) or input_shape[-3] != self.in_channels:
            raise ValueError(
                f"input shape {tuple(input_shape)} is not (N, {self.in_channels}, H, W) or ({self.in_channels}, H, W)"
            )
        batch = input_shape[0] if len(input_shape) == 4 else 1
        out_h, out_w = conv2d_output_hw(
            input_shape[-2:], self.kernel_size, self.stride, self.padding, self.dilation
        )
        rows_in = batch * input_shape[-2] * input_shape[-1]
        return _order_costs(self.dims, self.ranks, rows_in, batch * out_h * out_w)

    def choose_order(self, input_shape: tuple[int, ...]) -> str:
        """The contraction order (one of :data:`ORDERS`) with the fewest FLOPs for this input."""
        return _choose(self.order_costs(input_shape))[0]

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """FLOPs of one forward in the order the forward picks (rebuilds included; no bias)."""
        return _choose(self.order_costs(input_shape))[1]

    def _spatial(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.device.type == "cpu" and x.is_contiguous() and x.shape[1] > 1:
            # on CPU the 1x1 maps are plain GEMMs in channels_last (about 10% faster end to end
            # in benchmarks/bench_tucker.py); the output comes back in the input's layout
            return self._contract(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return self._contract(x)

    def _contract(self, x: torch.Tensor) -> torch.Tensor:
        order = self.choose_order(shape_hint(x.shape))
        if order in ("chain", "merge_out"):
            x = _pointwise(x, self.masked("factor_in").t(), None)
        if order == "chain":
            h = self._spatial(x, self.masked("core"), None)
            return _pointwise(h, self.masked("factor_out"), self.bias)
        merged = self._cached_merged(order)
        if order == "merge_in":
            return _pointwise(self._spatial(x, merged, None), self.masked("factor_out"), self.bias)
        return self._spatial(x, merged, self.bias)


def _in_last_to_second(t: torch.Tensor) -> torch.Tensor:
    """``(a, *k, in)`` -> ``(a, in, *k)``; a positive dim: the TorchScript ONNX exporter writes
    ``movedim(-1, 1)`` as a Transpose with a negative permutation, which onnxruntime rejects."""
    return t.movedim(t.dim() - 1, 1)


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 convolution with ``weight`` ``(out, in)``."""
    return F.conv2d(x, weight.reshape(*weight.shape, 1, 1), bias)
