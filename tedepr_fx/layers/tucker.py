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

import torch
import torch.nn.functional as F
from torch import nn

from tedepr_fx.decompose.tucker import partial_tucker2, tucker2_scratch
from tedepr_fx.layers.cache import EvalCache
from tedepr_fx.layers.masked import DenseWeightView, MaskedMixin, conv2d_output_hw
from tedepr_fx.ranks import RankSpec, check_rank_spec

FACTORS = ("factor_out", "core", "factor_in")


def tucker_max_ranks(dims: tuple[int, ...]) -> list[int]:
    """Exact (largest useful) Tucker-2 ranks of a weight of shape ``dims = (out, in, *kernel)``.

    The rank of mode ``k`` is at most the rank of its unfolding, ``min(dims[k], prod(dims) / dims[k])``
    (De Lathauwer et al., SIAM J. Matrix Anal. Appl. 21(4), 2000).
    """
    total = math.prod(dims)
    return [min(dims[k], total // dims[k]) for k in (0, 1)]


def tucker_params(dims: tuple[int, ...], ranks: list[int]) -> int:
    """Entries of ``U_out``, ``core`` and ``U_in`` for a weight of shape ``dims``."""
    kernel = math.prod(dims[2:])
    return dims[0] * ranks[0] + ranks[0] * ranks[1] * kernel + dims[1] * ranks[1]


def resolve_tucker_ranks(spec: RankSpec, dims: tuple[int, ...]) -> list[int]:
    """Resolve a rank spec into Tucker-2 ranks ``[r_out, r_in]`` for a weight of shape ``dims``.

    Parameters
    ----------
    spec : RankSpec
        ``int``: both modes get ``min(spec, exact rank of the mode)``; an int above both
        exact ranks is an error. ``[r_out, r_in]``: each at most its exact rank. ``float``
        in (0, 1]: the largest ranks, proportional to the exact ranks, whose factors hold at
        most that share of ``prod(dims)`` (at least ``[1, 1]``), as tensorly's
        ``validate_tucker_rank`` does. ``"full"``: the exact ranks (the factorization then
        reproduces the weight). ``"auto"`` must be resolved by the caller.
    dims : tuple[int, ...]
        The dense weight's shape ``(out, in, *kernel)``; modes 0 and 1 are factorized, the
        kernel modes stay in the core.

    Raises
    ------
    ValueError
        For a bad spec, ``"auto"``, a list that is not two entries long, or a rank above the
        exact rank (``"rank N exceeds the largest useful rank M ..."``).
    """
    spec = check_rank_spec(spec)
    dims = tuple(int(d) for d in dims)
    if len(dims) < 2 or min(dims) < 1:
        raise ValueError(f"dims must be (out, in, *kernel) with positive sizes; got {dims}")
    bounds = tucker_max_ranks(dims)
    if spec == "auto":
        raise ValueError("rank 'auto' must be resolved from the budget before a layer is built")
    if spec == "full":
        return bounds
    if isinstance(spec, list):
        if len(spec) != 2:
            raise ValueError(f"a Tucker-2 rank list must be [r_out, r_in] (2 entries); got {spec}")
        for mode, (r, bound) in enumerate(zip(spec, bounds)):
            if r > bound:
                raise ValueError(
                    f"rank {r} exceeds the largest useful rank {bound} of Tucker mode {mode} "
                    f"of a weight of shape {dims}"
                )
        return list(spec)
    if isinstance(spec, int):
        if spec > max(bounds):
            raise ValueError(
                f"rank {spec} exceeds the largest useful rank {max(bounds)} of a Tucker-2 "
                f"factorization of a weight of shape {dims}"
            )
        return [min(spec, b) for b in bounds]
    budget = spec * math.prod(dims)
    best = [1, 1]
    top = max(bounds)
    for r in range(1, top + 1):  # stored count grows with r: the last fit is the largest
        ranks = [max(1, min(b, round(r * b / top))) for b in bounds]
        if tucker_params(dims, ranks) > budget:
            break
        best = ranks
    return best


def _plan_costs(
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
    plan = min(costs, key=lambda name: (costs[name], name != "chain"))  # ties: the plain chain
    return plan, costs[plan]


class _Tucker2Base(EvalCache, DenseWeightView, MaskedMixin, nn.Module):
    """Shared state of the Tucker-2 layers: factors, masks, plan choice and eval-mode cache."""

    prunable = FACTORS

    def _init_factors(
        self, dims: tuple[int, ...], ranks: list[int], factors, bias: torch.Tensor | None
    ) -> None:
        self.dims = tuple(dims)
        self.ranks = list(ranks)
        factor_out, core, factor_in = factors
        self.factor_out = nn.Parameter(factor_out)
        self.core = nn.Parameter(core)
        self.factor_in = nn.Parameter(factor_in)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.init_masks()
        self.tedepr_info = {"format": "tucker", "ranks": list(ranks), "dims": list(dims)}

    @property
    def dense_params(self) -> int:
        return math.prod(self.dims)

    def _merged(self, plan: str) -> torch.Tensor:
        """The merged operand a plan needs: ``(r_out, in, *k)``, ``(out, r_in, *k)`` or ``(out, in, *k)``."""
        u_out, core, u_in = (self.masked(n) for n in FACTORS)
        if plan == "merge_in":
            return torch.tensordot(core, u_in, dims=([1], [1])).movedim(-1, 1)
        if plan == "merge_out":
            return torch.tensordot(u_out, core, dims=1)
        if plan == "dense_via_in":
            merged = torch.tensordot(core, u_in, dims=([1], [1])).movedim(-1, 1)
            return torch.tensordot(u_out, merged, dims=1)
        merged = torch.tensordot(u_out, core, dims=1)
        return torch.tensordot(merged, u_in, dims=([1], [1])).movedim(-1, 1)

    def _cached_merged(self, plan: str) -> torch.Tensor:
        """``_merged(plan)``, reused in eval mode without autograd until a factor or mask changes."""
        return self.cached("merged", plan, FACTORS, lambda: self._merged(plan))

    def to_dense(self) -> torch.Tensor:
        with torch.no_grad():
            return self._merged("dense_via_in").contiguous()

    def extra_repr(self) -> str:
        return f"dims={self.dims}, ranks={self.ranks}, bias={self.bias is not None}"


def _check_init(init: str, rank: RankSpec) -> RankSpec:
    if init not in ("scratch", "decompose"):
        raise ValueError(f"init must be 'scratch' or 'decompose'; got {init!r}")
    rank = check_rank_spec(rank)
    if rank == "auto":
        raise ValueError("rank 'auto' must be resolved from the budget before a layer is built")
    return rank


def _is_transposed_linear(module: nn.Module) -> bool:
    # Hugging Face Conv1D: a linear layer storing its weight as (in, out); duck-typed so that
    # transformers is never imported here
    return (
        not isinstance(module, nn.Linear)
        and type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and getattr(module, "weight", None) is not None
        and module.weight.dim() == 2
    )


def _factors_for(
    weight: torch.Tensor, dims: tuple[int, ...], ranks: list[int], init: str, fan_in: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if init == "decompose":
        if weight.device.type == "meta":
            raise ValueError("init='decompose' needs a real weight; the source layer is on the meta device")
        return partial_tucker2(weight, ranks)
    # PyTorch's default kaiming_uniform_(a=sqrt(5)) has Var = 1 / (3 fan_in)
    return tucker2_scratch(dims, ranks, 1.0 / (3 * fan_in), device=weight.device, dtype=weight.dtype)


def _copy_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach().clone()


class TuckerLinear(_Tucker2Base):
    """A linear layer with weight ``U_out @ core @ U_in.T`` (the matrix case of Tucker-2).

    Parameters ``factor_out`` ``(out, r_out)``, ``core`` ``(r_out, r_in)``, ``factor_in``
    ``(in, r_in)`` and ``bias`` ``(out,)``; each factor has a boolean mask. ``transposed``
    records that the original stored its weight as ``(in, out)`` (Hugging Face ``Conv1D``),
    which is the layout :meth:`to_dense` returns then.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        ranks: list[int],
        factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        bias: torch.Tensor | None = None,
        transposed: bool = False,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.transposed = transposed
        self._init_factors((out_features, in_features), ranks, factors, bias)
        self.tedepr_info["transposed"] = transposed

    @classmethod
    def from_linear(
        cls, module: nn.Module, rank: RankSpec, modes: object = "auto", init: str = "scratch"
    ) -> TuckerLinear:
        """Build from an ``nn.Linear`` or a Hugging Face ``Conv1D`` (weight ``(in, out)``).

        ``modes`` is accepted for a uniform builder signature and ignored (Tucker has none).
        ``init="scratch"`` draws variance-preserving factors (:func:`tucker2_scratch`);
        ``init="decompose"`` takes the partial HOSVD of the weight (:func:`partial_tucker2`).
        The bias is copied either way.
        """
        rank = _check_init(init, rank)
        transposed = _is_transposed_linear(module)
        if not transposed and not isinstance(module, nn.Linear):
            raise TypeError(
                f"TuckerLinear.from_linear needs an nn.Linear or a Hugging Face Conv1D; got {type(module).__name__}"
            )
        weight = module.weight.t() if transposed else module.weight
        out_f, in_f = weight.shape
        ranks = resolve_tucker_ranks(rank, (out_f, in_f))
        factors = _factors_for(weight.detach(), (out_f, in_f), ranks, init, fan_in=in_f)
        return cls(in_f, out_f, ranks, factors, _copy_bias(module.bias), transposed=transposed)

    def plan_costs(self, input_shape: tuple[int, ...]) -> dict[str, int]:
        """FLOPs of every contraction order for an input of this shape (see :func:`_plan_costs`)."""
        if input_shape[-1] != self.in_features:
            raise ValueError(f"input has {input_shape[-1]} features, the layer expects {self.in_features}")
        rows = math.prod(input_shape[:-1])
        return _plan_costs(self.dims, self.ranks, rows, rows)

    def choose_plan(self, input_shape: tuple[int, ...]) -> str:
        return _choose(self.plan_costs(input_shape))[0]

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """FLOPs of one forward in the order the forward picks (rebuilds included; no bias)."""
        return _choose(self.plan_costs(input_shape))[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.choose_plan(tuple(x.shape))
        if plan == "chain":
            h = F.linear(x, self.masked("factor_in").t())
            h = F.linear(h, self.masked("core"))
            return F.linear(h, self.masked("factor_out"), self.bias)
        merged = self._cached_merged(plan)
        if plan == "merge_in":
            return F.linear(F.linear(x, merged), self.masked("factor_out"), self.bias)
        if plan == "merge_out":
            return F.linear(F.linear(x, self.masked("factor_in").t()), merged, self.bias)
        return F.linear(x, merged, self.bias)

    def to_dense(self) -> torch.Tensor:
        weight = super().to_dense()
        return weight.t().contiguous() if self.transposed else weight


class Tucker2Conv2d(_Tucker2Base):
    """A 2-d convolution computed as 1x1 (in -> r_in), kxk (r_in -> r_out), 1x1 (r_out -> out).

    Parameters ``factor_out`` ``(out, r_out)``, ``core`` ``(r_out, r_in, kh, kw)``,
    ``factor_in`` ``(in, r_in)`` and ``bias``; stride, padding, dilation and ``padding_mode``
    of the original convolution act on the core convolution (the 1x1 maps commute with any
    padding mode, since they mix channels only and have no bias before the last one).
    ``groups > 1`` is not supported (see :meth:`from_conv`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        ranks: list[int],
        factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        bias: torch.Tensor | None = None,
        *,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] | str = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        padding_mode: str = "zeros",
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = tuple(kernel_size)
        self.stride, self.padding, self.dilation = tuple(stride), padding, tuple(dilation)
        if not isinstance(padding, str):
            self.padding = tuple(padding)
        self.padding_mode = padding_mode
        # the same padding arithmetic as nn.Conv2d, so 'same' and non-zero modes match it
        self._reversed_padding = nn.Conv2d(
            1, 1, self.kernel_size, stride=self.stride, padding=self.padding,
            dilation=self.dilation, device="meta",
        )._reversed_padding_repeated_twice
        self._init_factors((out_channels, in_channels, *self.kernel_size), ranks, factors, bias)
        self.tedepr_info["kernel_size"] = list(self.kernel_size)

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, rank: RankSpec, modes: object = "auto", init: str = "scratch"
    ) -> Tucker2Conv2d:
        """Build from an ``nn.Conv2d`` (same stride, padding, dilation, padding_mode, bias).

        ``modes`` is ignored (uniform builder signature). ``init`` as in
        :meth:`TuckerLinear.from_linear`.

        Raises
        ------
        ValueError
            For ``groups > 1``: a grouped (e.g. depthwise) weight is block-diagonal over
            channels, which a Tucker-2 chain with dense 1x1 factors cannot keep without
            losing the grouping; such layers hold few weights and are better pruned.
        """
        rank = _check_init(init, rank)
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"Tucker2Conv2d.from_conv needs an nn.Conv2d; got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(
                f"Tucker2Conv2d cannot represent a grouped convolution: groups={conv.groups} "
                f"(rank {rank!r} requested); use action: prune (or format: tt) for this layer"
            )
        dims = tuple(conv.weight.shape)
        ranks = resolve_tucker_ranks(rank, dims)
        fan_in = conv.in_channels * math.prod(conv.kernel_size)
        factors = _factors_for(conv.weight.detach(), dims, ranks, init, fan_in=fan_in)
        return cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, ranks, factors,
            _copy_bias(conv.bias), stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, padding_mode=conv.padding_mode,
        )

    def plan_costs(self, input_shape: tuple[int, ...]) -> dict[str, int]:
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
        return _plan_costs(self.dims, self.ranks, rows_in, batch * out_h * out_w)

    def choose_plan(self, input_shape: tuple[int, ...]) -> str:
        return _choose(self.plan_costs(input_shape))[0]

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """FLOPs of one forward in the order the forward picks (rebuilds included; no bias)."""
        return _choose(self.plan_costs(input_shape))[1]

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
        plan = self.choose_plan(tuple(x.shape))
        if plan in ("chain", "merge_out"):
            x = _pointwise(x, self.masked("factor_in").t(), None)
        if plan == "chain":
            h = self._spatial(x, self.masked("core"), None)
            return _pointwise(h, self.masked("factor_out"), self.bias)
        merged = self._cached_merged(plan)
        if plan == "merge_in":
            return _pointwise(self._spatial(x, merged, None), self.masked("factor_out"), self.bias)
        return self._spatial(x, merged, self.bias)


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 convolution with ``weight`` ``(out, in)``."""
    return F.conv2d(x, weight.reshape(*weight.shape, 1, 1), bias)
