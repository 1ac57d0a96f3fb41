"""The Tucker-2 format: ranks and factor counts of ``W = core x_0 U_out x_1 U_in``.

A weight of shape ``(out, in, *kernel)`` becomes ``U_out`` ``(out, r_out)``, ``core``
``(r_out, r_in, *kernel)`` and ``U_in`` ``(in, r_in)`` (Kim et al., "Compression of Deep
Convolutional Neural Networks for Fast and Low Power Mobile Applications", ICLR 2016). Its
layers are :class:`tedepr_fx.layers.tucker.TuckerLinear` (linear and Hugging Face
``Conv1D``) and :class:`tedepr_fx.layers.tucker.Tucker2Conv2d`; the decomposition is
:func:`tedepr_fx.decompose.tucker.partial_tucker2`.

>>> TUCKER.resolve_ranks("full", (64, 3, 3, 3))
[27, 3]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tedepr_fx.formats.base import (
    Builder,
    Format,
    check_build_rank,
    check_rank_list,
    check_uniform_rank,
    largest_fitting,
)
from tedepr_fx.ranks import RankSpec

DenseShape = tuple[int, ...]  # the dense weight's shape (out, in, *kernel)


def tucker_max_ranks(dims: Sequence[int]) -> list[int]:
    """Exact (largest useful) Tucker-2 ranks of a weight of shape ``dims = (out, in, *kernel)``.

    The rank of mode ``k`` is at most the rank of its unfolding, ``min(dims[k], prod(dims) / dims[k])``
    (De Lathauwer et al., SIAM J. Matrix Anal. Appl. 21(4), 2000).
    """
    total = math.prod(dims)
    return [min(dims[k], total // dims[k]) for k in (0, 1)]


def tucker_params(dims: Sequence[int], ranks: Sequence[int]) -> int:
    """Entries of ``U_out``, ``core`` and ``U_in`` for a weight of shape ``dims``."""
    kernel = math.prod(dims[2:])
    return dims[0] * ranks[0] + ranks[0] * ranks[1] * kernel + dims[1] * ranks[1]


def resolve_tucker_ranks(spec: RankSpec, dims: Sequence[int]) -> list[int]:
    """Resolve a rank spec into Tucker-2 ranks ``[r_out, r_in]`` for a weight of shape ``dims``.

    Parameters
    ----------
    spec : RankSpec
        ``int``: both modes get ``min(spec, exact rank of the mode)``; an int above both
        exact ranks is an error. ``[r_out, r_in]``: each at most its exact rank. ``float``
        in (0, 1]: the largest ranks, proportional to the exact ranks, whose factors hold at
        most that share of ``prod(dims)`` (at least ``[1, 1]``), as tensorly's
        ``validate_tucker_rank`` does. ``"full"``: the exact ranks (the factorization then
        reproduces the weight). ``"auto"`` is resolved by :meth:`Format.auto_rank`.
    dims : Sequence[int]
        The dense weight's shape ``(out, in, *kernel)``; modes 0 and 1 are factorized, the
        kernel modes stay in the core.

    Raises
    ------
    ValueError
        For a bad spec, ``"auto"``, a list that is not two entries long, or a rank above the
        exact rank (``"rank N exceeds the largest useful rank M ..."``).

    References
    ----------
    De Lathauwer, De Moor and Vandewalle, "A Multilinear Singular Value Decomposition",
    SIAM J. Matrix Anal. Appl. 21(4), 2000.
    """
    spec = check_build_rank(spec)
    dims = tuple(int(d) for d in dims)
    if len(dims) < 2 or min(dims) < 1:
        raise ValueError(f"dims must be (out, in, *kernel) with positive sizes; got {dims}")
    bounds = tucker_max_ranks(dims)
    if spec == "full":
        return bounds
    if isinstance(spec, list):
        if len(spec) != 2:
            raise ValueError(f"a Tucker-2 rank list must be [r_out, r_in] (2 entries); got {spec}")
        check_rank_list(spec, bounds, lambda mode: f"Tucker mode {mode} of a weight of shape {dims}")
        return list(spec)
    if isinstance(spec, int):
        check_uniform_rank(spec, max(bounds), f"a Tucker-2 factorization of a weight of shape {dims}")
        return [min(spec, b) for b in bounds]
    assert isinstance(spec, float)
    top = max(bounds)
    return largest_fitting(lambda r: [max(1, min(b, round(r * b / top))) for b in bounds], top,
                           lambda ranks: tucker_params(dims, ranks), spec * math.prod(dims))


class Tucker2(Format[DenseShape]):
    """The Tucker-2 format (``format: tucker``); it has no modes.

    References
    ----------
    Kim, Park, Yoo, Choi, Yang and Shin, "Compression of Deep Convolutional Neural Networks
    for Fast and Low Power Mobile Applications", ICLR 2016.
    """

    name = "tucker"
    has_modes = False
    auto_rank_floor = 2

    def builders(self) -> dict[str, Builder]:
        from tedepr_fx.layers.tucker import Tucker2Conv2d, TuckerLinear

        return {"linear": TuckerLinear.from_linear, "hf_conv1d": TuckerLinear.from_linear,
                "conv2d": Tucker2Conv2d.from_conv}

    def max_ranks(self, shape: DenseShape) -> list[int]:
        return tucker_max_ranks(shape)

    def stored_params(self, shape: DenseShape, ranks: Sequence[int]) -> int:
        return tucker_params(shape, ranks)

    def resolve_ranks(self, spec: RankSpec, shape: DenseShape) -> list[int]:
        return resolve_tucker_ranks(spec, shape)


TUCKER = Tucker2()
