"""Choosing the tensor-train modes of a feature count.

A TT-matrix (Novikov et al., "Tensorizing Neural Networks", NeurIPS 2015) needs the
input and output feature counts written as products of the same number ``d`` of
modes. Balanced modes keep the cores small; a feature count with no balanced
factorization (a prime, ``2 * prime``...) is zero-padded up to the nearest count that
has one, and the padding is reported so that the layer can record it.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import cast

MAX_IMBALANCE = 2.0  # largest mode / smallest mode accepted without padding further


def _factorizations(n: int, d: int, smallest: int) -> list[tuple[int, ...]]:
    """All non-decreasing ``d``-tuples of factors ``>= smallest`` (and >= 2) whose product is ``n``."""
    if d == 1:
        return [(n,)] if n >= max(smallest, 2) else []
    out: list[tuple[int, ...]] = []
    f = max(smallest, 2)
    while f ** d <= n:
        if n % f == 0:
            out.extend((f, *rest) for rest in _factorizations(n // f, d - 1, f))
        f += 1
    return out


@lru_cache(maxsize=4096)
def balanced_factorization(n: int, d: int) -> tuple[int, ...] | None:
    """The most balanced way to write ``n`` as ``d`` factors ``>= 2`` (largest factor first), or None.

    Balance is the ratio of the largest to the smallest factor; ties go to the
    smaller largest factor.
    """
    if n < 2 ** d:
        return None
    cands = _factorizations(n, d, 2)
    if not cands:
        return None
    best = min(cands, key=lambda t: (t[-1] / t[0], t[-1]))
    return tuple(sorted(best, reverse=True))


def default_order(features: int) -> int:
    """The number of modes for a feature count: about 8 per mode, between 2 and 6 modes."""
    return min(6, max(2, round(math.log(max(features, 2), 8))))


def pad_to_balanced(n: int, d: int) -> tuple[tuple[int, ...], int]:
    """The smallest ``n' >= n`` whose balanced ``d``-factorization has imbalance ``<= 2``.

    Returns ``(modes, n' - n)``. It always exists below ``max(2n, 2**d)``: a power
    of two ``2**k`` with ``k >= d`` splits into factors that differ by at most 2x.
    """
    m = max(n, 2 ** d)
    while True:
        modes = balanced_factorization(m, d)
        if modes is not None and modes[0] / modes[-1] <= MAX_IMBALANCE:
            return modes, m - n
        m += 1


def auto_modes(
    in_features: int, out_features: int, d: int | None = None
) -> tuple[list[int], list[int], int, int]:
    """Balanced TT modes for a linear map ``in_features -> out_features``.

    Parameters
    ----------
    in_features, out_features : int
        Feature counts of the dense map.
    d : int, optional
        Number of modes (>= 2). Default: :func:`default_order` of the larger count.

    Returns
    -------
    in_modes, out_modes : list[int]
        ``d`` modes each, every mode ``>= 2``.
    in_pad, out_pad : int
        Zero features added to reach ``prod(in_modes)`` / ``prod(out_modes)``
        (the layer pads its input with zeros and drops the extra outputs).
    """
    for name, value in (("in_features", in_features), ("out_features", out_features)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if d is None:
        d = default_order(max(in_features, out_features))
    if not isinstance(d, int) or isinstance(d, bool) or d < 2:
        raise ValueError(f"d (number of TT modes) must be an int >= 2; got {d!r}")
    in_modes, in_pad = pad_to_balanced(in_features, d)
    out_modes, out_pad = pad_to_balanced(out_features, d)
    return list(in_modes), list(out_modes), in_pad, out_pad


def check_modes(features: int, modes: list[int] | tuple[int, ...], what: str) -> list[int]:
    """Validate explicit modes against a feature count; ``what`` names them in the error."""
    modes = list(modes)
    if not modes or any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in modes):
        raise ValueError(f"{what} must be a non-empty list of positive ints; got {modes!r}")
    if math.prod(modes) != features:
        raise ValueError(
            f"{what} {modes} multiply to {math.prod(modes)}, but the layer has {features} features"
        )
    return modes


def select_modes(
    modes: object, in_features: int, out_features: int
) -> tuple[list[int], list[int], int, int]:
    """The TT-matrix modes of a map ``in_features -> out_features``: ``(in_modes, out_modes, in_pad, out_pad)``.

    ``modes`` is ``"auto"`` (or None: :func:`auto_modes`, may pad) or explicit
    ``(in_modes, out_modes)`` that multiply to the feature counts (no padding). Shared by
    every format with modes (tensor-train, tensor-ring).
    """
    if modes is None:
        modes = "auto"
    if isinstance(modes, str):
        if modes != "auto":
            raise ValueError(f"modes must be 'auto' or (in_modes, out_modes); got {modes!r}")
        return auto_modes(in_features, out_features)
    try:
        # any object: unpacking checks the pair, check_modes the modes themselves
        given_in, given_out = cast("tuple[list[int], list[int]]", modes)
    except (TypeError, ValueError):
        raise ValueError(f"modes must be 'auto' or (in_modes, out_modes); got {modes!r}") from None
    in_modes = check_modes(in_features, given_in, "in_modes")
    out_modes = check_modes(out_features, given_out, "out_modes")
    if len(in_modes) != len(out_modes):
        raise ValueError(f"in_modes {in_modes} and out_modes {out_modes} must have the same length")
    return in_modes, out_modes, 0, 0
