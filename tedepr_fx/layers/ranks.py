"""Numeric resolution of a rank spec (see :mod:`tedepr_fx.ranks`) into concrete ranks.

The syntax check is shared with the rule language (:func:`tedepr_fx.ranks.check_rank_spec`);
this module turns a valid spec into the ranks a layer is built with.
"""

from __future__ import annotations

import math

from tedepr_fx.ranks import RankSpec, check_rank_spec


def tt_max_ranks(in_modes: list[int], out_modes: list[int]) -> list[int]:
    """The exact (largest useful) TT ranks of a TT-matrix with these modes: ``d + 1`` entries.

    Bond ``k`` separates the modes ``< k`` from the modes ``>= k``; its rank can be no
    larger than the smaller side's size (Oseledets, "Tensor-Train Decomposition",
    SIAM J. Sci. Comput. 33(5), 2011, Theorem 2.1).
    """
    sizes = [m * n for m, n in zip(in_modes, out_modes)]
    d = len(sizes)
    return [1] + [min(math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(1, d)] + [1]


def tt_params(in_modes: list[int], out_modes: list[int], ranks: list[int]) -> int:
    """Number of entries of the TT-matrix cores ``(r_{k-1}, m_k, n_k, r_k)``."""
    return sum(ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(zip(in_modes, out_modes)))


def resolve_tt_ranks(spec: RankSpec, in_modes: list[int], out_modes: list[int]) -> list[int]:
    """Resolve a rank spec into the ``d + 1`` TT ranks ``[1, r_1, ..., r_{d-1}, 1]``.

    Parameters
    ----------
    spec : RankSpec
        ``int``: every inner bond gets ``min(spec, exact rank of that bond)``; an int
        larger than every bond's exact rank is an error. ``list[int]``: the ``d - 1``
        inner ranks, each at most its bond's exact rank. ``float`` in (0, 1]: the
        largest uniform rank whose cores hold at most that share of the dense
        parameter count (tensorly's ``validate_tt_rank`` semantics), at least 1.
        ``"full"``: the exact ranks. ``"auto"`` must be resolved by the caller.
    in_modes, out_modes : list[int]
        The TT-matrix modes (same length ``d``).

    Raises
    ------
    ValueError
        For a syntactically bad spec, ``"auto"``, a list of the wrong length, or a rank
        beyond the exact rank (``"rank N exceeds the largest useful rank M ..."``).
    """
    spec = check_rank_spec(spec)
    if len(in_modes) != len(out_modes):
        raise ValueError(f"in_modes {list(in_modes)} and out_modes {list(out_modes)} differ in length")
    d = len(in_modes)
    bounds = tt_max_ranks(list(in_modes), list(out_modes))
    if spec == "auto":
        raise ValueError("rank 'auto' must be resolved from the budget before a layer is built")
    if spec == "full":
        return bounds
    if isinstance(spec, list):
        if len(spec) != d - 1:
            raise ValueError(
                f"rank list {spec} must have d - 1 = {d - 1} entries (one per inner bond of {d} cores)"
            )
        for k, r in enumerate(spec, start=1):
            if r > bounds[k]:
                raise ValueError(
                    f"rank {r} exceeds the largest useful rank {bounds[k]} of TT bond {k} "
                    f"(modes {list(in_modes)} -> {list(out_modes)})"
                )
        return [1, *spec, 1]
    if isinstance(spec, int):
        largest = max(bounds)
        if spec > largest:
            raise ValueError(
                f"rank {spec} exceeds the largest useful rank {largest} of a TT-matrix with modes "
                f"{list(in_modes)} -> {list(out_modes)}"
            )
        return [min(spec, b) for b in bounds]
    # float: a share of the dense parameter count
    budget = spec * math.prod(in_modes) * math.prod(out_modes)
    best = [min(1, b) for b in bounds]
    for r in range(1, max(bounds) + 1):
        ranks = [min(r, b) for b in bounds]
        if tt_params(in_modes, out_modes, ranks) > budget:
            break
        best = ranks
    return best


# the Tucker side owns its resolution; re-exported so both live under one import path.
# At the bottom: tucker may import the TT helpers above without a cycle.
from tedepr_fx.layers.tucker import resolve_tucker_ranks  # noqa: E402

__all__ = ["resolve_tt_ranks", "resolve_tucker_ranks", "tt_max_ranks", "tt_params"]
