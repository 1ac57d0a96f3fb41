"""Auto mode selection and TT rank resolution."""

from __future__ import annotations

import math

import pytest
from torch import nn

from tedepr_fx.formats.tt import resolve_tt_ranks, tt_max_ranks, tt_params
from tedepr_fx.layers.modes import auto_modes, balanced_factorization
from tedepr_fx.layers.tt import TTConv2d, TTLinear


@pytest.mark.parametrize("in_f,out_f", [(768, 3072), (4096, 4096), (97, 13), (1, 1), (3, 5), (202, 7), (57600, 1024)])
def test_auto_modes_cover_features_with_balanced_modes(in_f, out_f):
    in_modes, out_modes, in_pad, out_pad = auto_modes(in_f, out_f)
    assert len(in_modes) == len(out_modes) >= 2
    assert math.prod(in_modes) == in_f + in_pad and math.prod(out_modes) == out_f + out_pad
    assert min(in_modes + out_modes) >= 2
    for modes in (in_modes, out_modes):
        assert max(modes) / min(modes) <= 2.0
    assert in_pad <= max(in_f, 2 ** len(in_modes)) and out_pad <= max(out_f, 2 ** len(out_modes))


def test_auto_modes_pad_only_when_needed():
    assert auto_modes(4096, 4096) == ([8, 8, 8, 8], [8, 8, 8, 8], 0, 0)
    in_modes, _, in_pad, _ = auto_modes(97, 13)  # 97 is prime
    assert in_pad > 0 and math.prod(in_modes) == 97 + in_pad
    # the padded count is the smallest that has a balanced factorization
    d = len(in_modes)
    for n in range(97, 97 + in_pad):
        best = balanced_factorization(n, d)
        assert best is None or best[0] / best[-1] > 2.0


def test_auto_modes_respects_d_and_rejects_bad_d():
    in_modes, out_modes, _, _ = auto_modes(768, 3072, d=3)
    assert len(in_modes) == len(out_modes) == 3
    with pytest.raises(ValueError, match="d"):
        auto_modes(10, 10, d=1)


def test_padding_is_recorded_and_layer_is_exact():
    import torch

    torch.manual_seed(0)
    dense = nn.Linear(97, 13)
    tt = TTLinear.from_linear(dense, "full", init="decompose")
    assert tt.tedepr_info["in_padding"] == tt.in_pad > 0
    assert tt.tedepr_info["out_padding"] == tt.out_pad
    x = torch.randn(4, 97)
    assert torch.allclose(tt(x), dense(x), atol=1e-5)


def test_explicit_modes_must_multiply_to_features():
    with pytest.raises(ValueError, match=r"in_modes \[4, 4\] multiply to 16.*20 features"):
        TTLinear.from_linear(nn.Linear(20, 16), 2, modes=([4, 4], [4, 4]))


def test_resolve_full_int_list_float():
    in_modes, out_modes = [4, 3, 2], [2, 5, 3]
    full = resolve_tt_ranks("full", in_modes, out_modes)
    assert full == [1, 8, 6, 1] == tt_max_ranks(in_modes, out_modes)
    assert resolve_tt_ranks(7, in_modes, out_modes) == [1, 7, 6, 1]  # capped per bond
    assert resolve_tt_ranks([3, 2], in_modes, out_modes) == [1, 3, 2, 1]
    dense = math.prod(in_modes) * math.prod(out_modes)
    for share in (0.05, 0.2, 1.0):
        ranks = resolve_tt_ranks(share, in_modes, out_modes)
        assert tt_params(in_modes, out_modes, ranks) <= max(share * dense, tt_params(in_modes, out_modes, [1, 1, 1, 1]))
        bigger = [1] + [min(r + 1, b) for r, b in zip(ranks[1:-1], full[1:-1])] + [1]
        if bigger != ranks:
            assert tt_params(in_modes, out_modes, bigger) > share * dense


@pytest.mark.parametrize("spec,match", [
    (9, "rank 9 exceeds the largest useful rank 8"),
    ([9, 2], "rank 9 exceeds the largest useful rank 8"),
    ([2], "d - 1 = 2"),
    ("auto", "auto"),
    (0, "positive int"),
    (True, "positive int"),
    (1.5, "positive int"),
])
def test_resolve_rejects_bad_ranks(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_tt_ranks(spec, [4, 3, 2], [2, 5, 3])


def test_layer_constructors_reject_auto_and_too_large_ranks():
    with pytest.raises(ValueError, match="auto"):
        TTLinear.from_linear(nn.Linear(8, 8), "auto")
    with pytest.raises(ValueError, match="exceeds the largest useful rank"):
        TTLinear.from_linear(nn.Linear(8, 8), 100)
    with pytest.raises(ValueError, match="init"):
        TTLinear.from_linear(nn.Linear(8, 8), 2, init="svd")
    with pytest.raises(ValueError, match="exceeds the largest useful rank"):
        TTConv2d.from_conv(nn.Conv2d(4, 4, 3), 1000)
