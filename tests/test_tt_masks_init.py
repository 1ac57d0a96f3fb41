"""Masks, scratch init, meta construction, copies and the eval cache of the TT layers."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from tedepr_fx.decompose.tt import tt_svd
from tedepr_fx.formats.tt import decompose_tt_matrix, resolve_tt_ranks
from tedepr_fx.layers.tt import TTConv2d, TTLinear
from tedepr_fx.layers.tt_lstm import TTLSTM


def make_layers():
    torch.manual_seed(0)
    return {
        "linear": (TTLinear.from_linear(nn.Linear(24, 20), 3), torch.randn(8, 24)),
        "conv": (TTConv2d.from_conv(nn.Conv2d(4, 6, 3, padding=1), 2), torch.randn(2, 4, 5, 5)),
        "lstm": (TTLSTM.from_lstm(nn.LSTM(12, 6), 2), torch.randn(3, 2, 12)),
    }


def output(module, x):
    out = module(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("kind", ["linear", "conv", "lstm"])
@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_masked_entries_stay_exactly_zero_after_training(kind, opt):
    layer, x = make_layers()[kind]
    gen = torch.Generator().manual_seed(1)
    for name in layer.prunable:
        layer.set_mask(name, torch.rand(getattr(layer, name).shape, generator=gen) < 0.5)
    before = {n: getattr(layer, n).detach().clone() for n in layer.prunable}
    if opt == "sgd":
        optim = torch.optim.SGD(layer.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    else:
        optim = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=1e-2)
    target = torch.randn_like(output(layer, x))
    for _ in range(100):
        optim.zero_grad()
        ((output(layer, x) - target) ** 2).mean().backward()
        optim.step()
    for name in layer.prunable:
        mask = layer.get_mask(name)
        effective = layer.masked(name)
        assert torch.equal(effective[~mask], torch.zeros_like(effective[~mask]))
        assert not torch.equal(effective[mask], before[name][mask])  # training did change the kept ones
    # the forward only sees masked values: zeroing the stored pruned entries changes nothing
    clone = copy.deepcopy(layer)
    with torch.no_grad():
        for name in clone.prunable:
            getattr(clone, name).mul_(clone.get_mask(name))
    assert torch.equal(output(clone, x), output(layer, x))
    assert layer.kept_params() == sum(int(layer.get_mask(n).sum()) for n in layer.prunable)


def empirical_var(make, reps: int = 40) -> float:
    vals = torch.stack([make().reshape(-1) for _ in range(reps)])
    return float(vals.pow(2).mean())


@pytest.mark.parametrize("kind", ["linear", "conv", "lstm"])
def test_scratch_init_preserves_dense_init_variance(kind):
    torch.manual_seed(0)
    if kind == "linear":
        dense = lambda: nn.Linear(64, 96).weight.detach()  # noqa: E731
        tt = lambda: TTLinear.from_linear(nn.Linear(64, 96), 4).to_dense()  # noqa: E731
    elif kind == "conv":
        dense = lambda: nn.Conv2d(16, 16, 3).weight.detach()  # noqa: E731
        tt = lambda: TTConv2d.from_conv(nn.Conv2d(16, 16, 3), 3).to_dense()  # noqa: E731
    else:
        dense = lambda: nn.LSTM(32, 16).weight_ih_l0.detach()  # noqa: E731
        tt = lambda: TTLSTM.from_lstm(nn.LSTM(32, 16), 3).dense_map("ih_l0").detach()  # noqa: E731
    ref, got = empirical_var(dense), empirical_var(tt)
    assert abs(got / ref - 1) < 0.15, (got, ref)


def test_meta_construction_allocates_nothing_and_accounts():
    lin = TTLinear.from_linear(nn.Linear(4096, 4096, device="meta"), 16)
    conv = TTConv2d.from_conv(nn.Conv2d(256, 256, 3, device="meta"), 8)
    lstm = TTLSTM.from_lstm(nn.LSTM(57600, 256, device="meta"), 4)
    for layer, shape in ((lin, (256, 4096)), (conv, (8, 256, 32, 32)), (lstm, (6, 16, 57600))):
        assert all(p.device.type == "meta" for p in layer.parameters())
        assert all(b.device.type == "meta" for b in layer.buffers())
        assert 0 < layer.stored_params() < layer.dense_params
        assert layer.flops(shape) > 0
        json.dumps(layer.tedepr_info)
    assert lin.stored_params() == 2 * 8 * 8 * 16 + 2 * 16 * 8 * 8 * 16
    assert lstm.stored_params() < lstm.dense_params
    with pytest.raises(ValueError, match="meta"):
        TTLinear.from_linear(nn.Linear(8, 8, device="meta"), 2, init="decompose")


def test_factors_follow_source_dtype():
    layer = TTLinear.from_linear(nn.Linear(12, 8, dtype=torch.float64), 2)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    assert layer.core_0_mask.dtype == torch.bool


def test_state_dict_and_deepcopy_round_trip():
    layer, x = make_layers()["linear"]
    layer.set_mask("core_1", torch.rand(layer.core_1.shape) < 0.3)
    fresh = TTLinear.from_linear(nn.Linear(24, 20), 3)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh(x), layer(x))
    assert torch.equal(fresh.core_1_mask, layer.core_1_mask)
    clone = copy.deepcopy(layer)
    assert torch.equal(clone(x), layer(x))
    clone.core_1_mask.fill_(True)
    assert not torch.equal(clone.core_1_mask, layer.core_1_mask)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_eval_cache_is_invalidated_by_factor_and_mask_changes(kind):
    layer, x = make_layers()[kind]
    layer.eval()

    def fresh_output():
        ref = copy.deepcopy(layer)  # a copy starts with an empty cache
        with torch.no_grad():
            return ref(x)

    with torch.no_grad():
        first = layer(x)
        assert torch.equal(layer(x), first)
        getattr(layer, layer.prunable[-1]).mul_(2.0)
        assert torch.allclose(layer(x), fresh_output())
        assert not torch.allclose(layer(x), first)
        mask = torch.rand(getattr(layer, layer.prunable[-1]).shape) < 0.5
        layer.set_mask(layer.prunable[-1], mask)
        assert torch.allclose(layer(x), fresh_output())
    layer.train()
    assert layer(x).requires_grad


class _Largest(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("rank", ["full", 5])
def test_decomposition_never_builds_an_intermediate_larger_than_the_weight(rank):
    torch.manual_seed(0)
    w_io = torch.randn(64, 96)
    in_modes, out_modes = [4, 4, 4], [4, 6, 4]
    ranks = resolve_tt_ranks(rank, in_modes, out_modes)
    with _Largest() as probe:
        cores = decompose_tt_matrix(w_io, in_modes, out_modes, ranks)
    assert probe.largest <= w_io.numel()
    assert len(cores) == 3


def test_tt_svd_rejects_bad_ranks():
    with pytest.raises(ValueError, match="ends 1"):
        tt_svd(torch.randn(2, 3, 4), [2, 2, 2, 1])
