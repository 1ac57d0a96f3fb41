"""The one meaning of a rank, shared by the rule language and the layers.

A rank spec is one of:

* ``int`` (>= 1): the same rank for every internal bond of the factorization;
* ``list[int]``: one rank per internal bond (TT: the ``d - 1`` inner ranks;
  Tucker: one rank per factorized mode);
* ``float`` in (0, 1]: the share of the dense parameter count the factors may hold;
  ``1.0`` means "as many parameters as the dense weight", never "rank 1";
* ``"full"``: exact representation of the dense weight;
* ``"auto"``: chosen from the sparsity budget (resolved by the factorize pass).

``bool`` is never a rank, and an int is never read as a float or vice versa.
The numeric resolution of a spec into concrete ranks belongs to each format
(:meth:`tedepr_fx.formats.base.Format.resolve_ranks`; ``"auto"``:
:meth:`~tedepr_fx.formats.base.Format.auto_rank`), which calls :func:`check_rank_spec` first.
"""

from __future__ import annotations

from typing import Literal

RankSpec = int | list[int] | float | Literal["full", "auto"]

RANK_HELP = "must be a positive int, a list of positive ints, a float in (0, 1], 'full' or 'auto'"


def check_rank_spec(value: object) -> RankSpec:
    """Validate the syntax of a rank spec and return it unchanged.

    Raises
    ------
    ValueError
        With the message ``"must be a positive int, ...; got <value>"``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{RANK_HELP}; got {value!r}")
    if isinstance(value, int):
        if value >= 1:
            return value
    elif isinstance(value, float):
        if 0.0 < value <= 1.0:
            return value
    elif isinstance(value, str):
        if value in ("full", "auto"):
            return value  # type: ignore[return-value]
    elif isinstance(value, (list, tuple)):
        if value and all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in value):
            return list(value)
    raise ValueError(f"{RANK_HELP}; got {value!r}")
