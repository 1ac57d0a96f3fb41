"""The format registry: one line per format, consulted by the layer kinds and the passes."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from tedepr_fx import names
from tedepr_fx.formats import base
from tedepr_fx.formats.base import check_init, get_format
from tedepr_fx.handlers import CONV2D, HF_CONV1D, LINEAR, LSTM


def test_every_registered_format_loads_under_its_name():
    assert names.FORMAT_NAMES == tuple(names.FORMATS)
    for name in names.FORMAT_NAMES:
        fmt = get_format(name)
        assert fmt.name == name and fmt.has_modes == names.FORMATS[name].modes
    with pytest.raises(ValueError, match="unknown format 'cp'"):
        get_format("cp")


def test_layer_kinds_read_their_formats_from_the_registry():
    assert set(LINEAR.formats) == set(HF_CONV1D.formats) == {"tt", "tucker", "tr"}
    assert set(CONV2D.formats) >= {"tt", "tucker"}
    assert LSTM.formats == ("tt",)
    with pytest.raises(ValueError, match="does not support lstm"):
        get_format("tucker").build("lstm", nn.LSTM(4, 4), 2)
    with pytest.raises(ValueError, match="has no modes"):
        LINEAR.build("tucker", nn.Linear(8, 8), 2, modes=([2, 4], [2, 4]))


def test_init_is_checked_in_one_place():
    assert check_init("decompose") == "decompose"
    for fmt in names.FORMAT_NAMES:
        with pytest.raises(ValueError, match="init must be 'scratch' or 'decompose'"):
            LINEAR.build(fmt, nn.Linear(8, 8), 2, init="svd")


@pytest.mark.parametrize("fmt", names.FORMAT_NAMES)
@pytest.mark.parametrize("target", [50.0, 300.0, 2000.0])
def test_auto_rank_is_the_largest_uniform_rank_that_fits(fmt, target):
    dense = nn.Linear(48, 40)
    rank = get_format(fmt).auto_rank("linear", dense, "auto", target)

    def stored(r: int) -> int | None:
        try:
            return LINEAR.build(fmt, dense, r).stored_params()
        except ValueError:  # beyond the largest useful rank
            return None

    floor = get_format(fmt).auto_rank_floor
    assert rank >= floor
    assert rank == floor or stored(rank) <= target
    bigger = stored(rank + 1)
    assert bigger is None or bigger > target


@pytest.mark.parametrize("fmt", ["tt", "tucker", "tr"])
def test_auto_rank_never_goes_below_the_floor_asked(fmt):
    dense = nn.Linear(48, 40)
    fmt_ = get_format(fmt)
    assert fmt_.auto_rank("linear", dense, "auto", 1.0) == fmt_.auto_rank_floor
    assert fmt_.auto_rank("linear", dense, "auto", 1.0, floor=3) == 3
    full = max(LINEAR.build(fmt, dense, "full").tedepr_info["ranks"])
    assert fmt_.auto_rank("linear", dense, "auto", 1.0, floor=10_000) == full  # capped at the full rank


def test_tucker_auto_rank_is_never_one_so_outputs_are_not_copies_of_one_map():
    # a Tucker-2 of rank [1, 1] makes every output channel a scaled copy of one feature map
    assert get_format("tucker").auto_rank("conv2d", nn.Conv2d(6, 16, 5), None, 10.0) == 2


def test_a_new_format_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    # a toy format (a rank-r product U V of the weight) written as a user would: one module ...
    (tmp_path / "toy_format.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn
        from tedepr_fx.formats.base import Format, check_build_rank, check_init
        from tedepr_fx.layers.masked import MaskedMixin

        class LowRankLinear(MaskedMixin, nn.Module):
            prunable = ("u", "v")

            def __init__(self, linear, rank):
                super().__init__()
                self.u = nn.Parameter(torch.randn(linear.out_features, rank))
                self.v = nn.Parameter(torch.randn(rank, linear.in_features))
                self.bias = linear.bias
                self.dense_params = linear.weight.numel()
                self.init_masks()
                self.tedepr_info = {"format": "toy", "ranks": [rank]}

            def forward(self, x):
                return x @ (self.masked("u") @ self.masked("v")).t() + self.bias

        class Toy(Format):
            name = "toy"
            has_modes = False

            def builders(self):
                return {"linear": self.linear}

            @staticmethod
            def linear(module, rank, init="scratch"):
                check_init(init)
                return LowRankLinear(module, Toy().resolve_ranks(check_build_rank(rank), module.weight.shape)[0])

            def max_ranks(self, shape):
                return [min(shape)]

            def stored_params(self, shape, ranks):
                return ranks[0] * sum(shape)

            def resolve_ranks(self, spec, shape):
                return self.max_ranks(shape) if spec == "full" else [min(int(spec), min(shape))]

        TOY = Toy()
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    # ... and one registry line
    monkeypatch.setitem(names.FORMATS, "toy", names.FormatEntry("toy_format:TOY", "Toy", "a toy", modes=False))
    monkeypatch.setattr(base, "_LOADED", {})
    try:
        assert "toy" in LINEAR.formats and "toy" not in CONV2D.formats
        layer = LINEAR.build("toy", nn.Linear(12, 8), 3)
        assert layer(torch.randn(2, 12)).shape == (2, 8) and layer.stored_params() == 3 * 20
        assert get_format("toy").auto_rank("linear", nn.Linear(12, 8), "auto", 70.0) == 3
    finally:
        sys.modules.pop("toy_format", None)
