"""Tensorized and masked layers: what the factorize pass swaps in."""

from tedepr_fx.layers.masked import (
    Accounting,
    MaskedConv2d,
    MaskedLinear,
    MaskedMixin,
    iter_masked,
)

__all__ = ["Accounting", "MaskedConv2d", "MaskedLinear", "MaskedMixin", "iter_masked"]
