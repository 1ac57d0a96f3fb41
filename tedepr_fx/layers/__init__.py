"""Tensorized and masked layers: what the factorize pass swaps in.

The formats they hold (ranks, factor counts, decomposition) live in :mod:`tedepr_fx.formats`.
"""

from tedepr_fx.layers.attention import SplitMultiheadAttention
from tedepr_fx.layers.embedding import MaskedEmbedding, TTEmbedding
from tedepr_fx.layers.hf import WeightLayout, is_hf_conv1d
from tedepr_fx.layers.masked import (
    Accounting,
    MaskedConv2d,
    MaskedLinear,
    MaskedMixin,
    MaskedTransposedLinear,
    iter_masked,
)
from tedepr_fx.layers.masked_lstm import MaskedLSTM
from tedepr_fx.layers.modes import auto_modes, select_modes
from tedepr_fx.layers.tt import TTConv2d, TTLinear
from tedepr_fx.layers.tt_lstm import TTLSTM
from tedepr_fx.layers.tucker import Tucker2Conv2d, TuckerLinear

__all__ = [
    "Accounting", "MaskedConv2d", "MaskedEmbedding", "MaskedLSTM", "MaskedLinear", "MaskedMixin",
    "MaskedTransposedLinear", "SplitMultiheadAttention", "TTConv2d", "TTEmbedding", "TTLSTM", "TTLinear",
    "Tucker2Conv2d", "TuckerLinear", "WeightLayout", "auto_modes", "is_hf_conv1d", "iter_masked",
    "select_modes",
]
