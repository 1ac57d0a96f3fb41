"""Tensorized and masked layers: what the factorize pass swaps in."""

from tedepr_fx.layers.attention import SplitMultiheadAttention
from tedepr_fx.layers.masked import (
    Accounting,
    MaskedConv2d,
    MaskedLinear,
    MaskedMixin,
    MaskedTransposedLinear,
    iter_masked,
)
from tedepr_fx.layers.masked_lstm import MaskedLSTM
from tedepr_fx.layers.modes import auto_modes
from tedepr_fx.layers.ranks import resolve_tt_ranks, resolve_tucker_ranks
from tedepr_fx.layers.tt import TTConv2d, TTLinear
from tedepr_fx.layers.tt_lstm import TTLSTM
from tedepr_fx.layers.tucker import Tucker2Conv2d, TuckerLinear

__all__ = [
    "Accounting", "MaskedConv2d", "MaskedLSTM", "MaskedLinear", "MaskedMixin",
    "MaskedTransposedLinear", "SplitMultiheadAttention", "TTConv2d", "TTLSTM", "TTLinear",
    "Tucker2Conv2d", "TuckerLinear", "auto_modes", "iter_masked", "resolve_tt_ranks",
    "resolve_tucker_ranks",
]
