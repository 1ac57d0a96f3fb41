"""Tensor-ring layers: exactness at full rank, ranks, masks, accounting and the FLOP-based order."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import tedepr_fx
from tedepr_fx.decompose.tr import tr_exact_ranks, tr_svd
from tedepr_fx.formats.tr import TRConv2d, TRLinear, resolve_tr_ranks, tr_params
from tedepr_fx.layers.contraction import candidate_orders


def _ring(cores: list[torch.Tensor]) -> torch.Tensor:
    """The full tensor of TR cores ``(r_{k-1}, q_k, r_k)``, written out from the trace definition."""
    letters = "abcdefghij"
    d = len(cores)
    bonds = [letters[k] for k in range(d)] + [letters[0]]
    modes = "pqrstuvw"[:d]
    expr = ",".join(bonds[k] + modes[k] + bonds[k + 1] for k in range(d)) + "->" + modes
    return torch.einsum(expr, *cores)


@pytest.mark.parametrize("dims", [(6, 12), (4, 6, 5), (8, 3, 9, 4)])
def test_tr_svd_is_exact_at_the_exact_ranks_and_is_a_real_ring(dims):
    torch.manual_seed(0)
    t = torch.randn(*dims, dtype=torch.float64)
    ranks = tr_exact_ranks(dims)
    cores = tr_svd(t, ranks)
    assert [tuple(c.shape) for c in cores] == [(ranks[k], q, ranks[k + 1]) for k, q in enumerate(dims)]
    torch.testing.assert_close(_ring(cores), t, rtol=1e-10, atol=1e-10)
    assert ranks[0] == ranks[-1]
    if dims == (6, 12):
        assert ranks[0] > 1  # the boundary bond is used, not a TT in disguise


def test_tr_svd_rejects_an_open_ring():
    with pytest.raises(ValueError, match=r"ranks\[0\] == ranks\[d\]"):
        tr_svd(torch.randn(2, 3, 4), [2, 2, 2, 1])


def _hf_conv1d(in_f: int, out_f: int) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(out_f, in_f)
    nn.init.normal_(layer.weight, std=0.1)
    nn.init.normal_(layer.bias, std=0.1)
    return layer


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("shape", [(12, 6), (97, 13), (64, 96)])
@pytest.mark.parametrize("rows", [1, 300])
def test_full_rank_decompose_is_exact(dtype, tol, shape, rows):
    torch.manual_seed(0)
    dense = nn.Linear(*shape).to(dtype)
    layer = TRLinear.from_linear(dense, "full", init="decompose")
    x1 = torch.randn(rows, shape[0], dtype=dtype, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y_dense, y_layer = dense(x1), layer(x2)
    torch.testing.assert_close(y_layer, y_dense, rtol=tol, atol=tol)
    g = torch.randn_like(y_dense)
    (y_dense * g).sum().backward()
    (y_layer * g).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(layer.to_dense(), dense.weight.detach(), rtol=tol, atol=tol)


def test_hf_conv1d_is_exact_and_keeps_its_layout():
    torch.manual_seed(0)
    dense = _hf_conv1d(12, 20).double()
    layer = TRLinear.from_linear(dense, "full", init="decompose")
    assert layer.weight_layout == layer.tedepr_info["weight_layout"] == "conv1d" and layer.nf == 20
    torch.testing.assert_close(layer.to_dense(), dense.weight.detach(), rtol=1e-10, atol=1e-10)
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-10, atol=1e-10)


def test_rank_specs():
    dims = [6, 12, 8]  # modes [2, 3, 4] x [3, 4, 2]
    assert resolve_tr_ranks(3, dims) == [3, 3, 3, 3]
    assert resolve_tr_ranks([2, 5, 4], dims) == [2, 5, 4, 2]
    full = resolve_tr_ranks("full", dims)
    assert full == tr_exact_ranks(dims) and full[0] == full[-1]
    for share in (0.05, 0.3, 1.0):
        ranks = resolve_tr_ranks(share, dims)
        assert tr_params(dims, ranks) <= share * math.prod(dims) or ranks == [1, 1, 1, 1]
        bigger = resolve_tr_ranks(max(ranks) + 1, dims)
        assert bigger == ranks or tr_params(dims, bigger) > share * math.prod(dims)


@pytest.mark.parametrize("spec,match", [
    (10**6, "exceeds the largest useful rank"),
    ([7, 2, 2], "rank 7 exceeds the largest useful rank 6 of TR bond 0"),
    ([2, 2], "d = 3 entries"),
    ("auto", "'auto' must be resolved"),
    (0, "positive int"),
    (True, "positive int"),
])
def test_bad_ranks_are_clear_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_tr_ranks(spec, [6, 12, 8])


def prune_half_and_check_pruned_entries_are_ignored(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mask about half of every core, change every pruned entry: the output must not move."""
    gen = torch.Generator().manual_seed(1)
    for name in layer.prunable:
        layer.set_mask(name, torch.rand(getattr(layer, name).shape, generator=gen) < 0.5)
    before = layer(x)
    with torch.no_grad():
        for name in layer.prunable:
            getattr(layer, name)[~layer.get_mask(name)] = 123.0
    torch.testing.assert_close(layer(x), before)
    assert layer.kept_params() == sum(int(layer.get_mask(n).sum()) for n in layer.prunable)
    return before


def test_pruned_entries_have_no_effect_and_masks_are_buffers():
    torch.manual_seed(0)
    layer = TRLinear.from_linear(nn.Linear(24, 20), 3)
    x = torch.randn(8, 24)
    assert {f"core_{k}_mask" for k in range(len(layer.prunable))} <= set(layer.state_dict())
    before = prune_half_and_check_pruned_entries_are_ignored(layer, x)
    fresh = TRLinear.from_linear(nn.Linear(24, 20), 3)
    fresh.load_state_dict(copy.deepcopy(layer).state_dict())
    torch.testing.assert_close(fresh(x), before)


def test_accounting_matches_brute_force():
    layer = TRLinear.from_linear(nn.Linear(48, 30), [2, 3, 4], modes=([4, 3, 4], [2, 5, 3]))
    assert layer.ranks == [2, 3, 4, 2]
    stored = sum(math.prod(getattr(layer, n).shape) for n in layer.prunable)
    assert layer.stored_params() == stored == 2 * 4 * 2 * 3 + 3 * 3 * 5 * 4 + 4 * 4 * 3 * 2
    assert layer.dense_params == 48 * 30 and layer.to_dense().shape == (30, 48)
    assert layer.kept_params() == stored


@pytest.mark.parametrize("rows,in_modes,out_modes,ranks", [
    (1, [4, 3, 4], [2, 5, 3], [2, 3, 4, 2]),
    (64, [4, 3, 4], [2, 5, 3], [2, 3, 4, 2]),
    (5, [8, 8], [4, 4], [3, 6, 3]),
    (200, [4, 4, 4, 4], [4, 4, 4, 4], [2, 4, 4, 4, 2]),
])
def test_every_order_is_exact_and_the_choice_is_the_brute_force_flop_argmin(rows, in_modes, out_modes, ranks):
    torch.manual_seed(0)
    in_f, out_f = math.prod(in_modes), math.prod(out_modes)
    layer = TRLinear(in_f, out_f, in_modes, out_modes, ranks, bias=False, dtype=torch.float64)
    x = torch.randn(rows, in_f, dtype=torch.float64)
    reference = x @ layer.to_dense().t()
    measured = {}
    for order in candidate_orders(len(in_modes)):
        counter = FlopCounterMode(display=False)
        with counter:
            y = layer.apply_order(x, order)
        measured[order] = counter.get_total_flops()
        torch.testing.assert_close(y, reference, rtol=1e-10, atol=1e-10)
    chosen, cost = layer.contraction_order(rows)
    assert cost == measured[chosen] == min(measured.values())
    counter = FlopCounterMode(display=False)
    with counter:
        layer(x)
    assert layer.flops(tuple(x.shape)) == counter.get_total_flops()


def test_scratch_init_has_the_dense_default_variance():
    torch.manual_seed(0)
    draws = torch.stack([TRLinear.from_linear(nn.Linear(64, 96), 4).to_dense().reshape(-1) for _ in range(40)])
    assert abs(float(draws.pow(2).mean()) * 3 * 64 - 1) < 0.15


def test_meta_construction_allocates_nothing():
    layer = TRLinear.from_linear(nn.Linear(4096, 4096, device="meta"), 8)
    assert all(t.is_meta for t in list(layer.parameters()) + list(layer.buffers()))
    assert 0 < layer.stored_params() < layer.dense_params and layer.flops((16, 4096)) > 0
    with pytest.raises(ValueError, match="meta"):
        TRLinear.from_linear(nn.Linear(8, 8, device="meta"), 2, init="decompose")


def test_format_tr_from_rules_reproduces_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    x = torch.randn(4, 64)
    rules = {"version": 1, "defaults": {"init": "decompose"},
             "rules": [{"name": "all", "match": {"type": "Linear"}, "action": "factorize",
                        "factorize": {"format": "tr", "rank": "full"}}]}
    out = tedepr_fx.transform(model, rules, example_inputs=(x,))
    torch.testing.assert_close(out(x), model(x), rtol=1e-4, atol=1e-5)
    assert [r.new_type for r in tedepr_fx.report(out).rows] == ["TRLinear", "TRLinear"]


# --- TRConv2d ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cin,cout,k,kw", [
    (6, 10, 3, {}),
    (6, 10, 3, {"stride": 2, "padding": 1}),
    (4, 6, 3, {"padding": 1, "padding_mode": "reflect"}),
    (4, 6, (3, 2), {"padding": (1, 0), "bias": False}),
    (7, 11, 1, {}),
])
def test_tr_conv_full_rank_decompose_is_exact(cin, cout, k, kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, **kw).double()
    layer = TRConv2d.from_conv(conv, "full", init="decompose")
    x = torch.randn(2, cin, 9, 8, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, conv(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.to_dense(), conv.weight.detach(), rtol=1e-10, atol=1e-10)
    if math.prod(conv.kernel_size) > 1:
        assert layer.ranks[0] == layer.ranks[-1] > 1  # a real ring over the kernel, not a TT
    grad, = torch.autograd.grad(y.sum(), x)
    grad_ref, = torch.autograd.grad(conv(x).sum(), x)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)


def test_tr_conv_both_paths_are_exact_and_the_choice_is_the_flop_argmin():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    for hw, rank, expected in ((20, 2, "factors"), (4, "full", "dense")):
        layer = TRConv2d.from_conv(conv, rank).double()
        assert layer.ranks[0] == layer.ranks[-1] > 1
        x = torch.randn(2, 16, hw, hw, dtype=torch.float64)
        kind, _, cost = layer.contraction_order(tuple(x.shape))
        assert kind == expected
        reference = nn.functional.conv2d(x, layer.to_dense(), None, 1, 1)
        torch.testing.assert_close(layer(x), reference, rtol=1e-10, atol=1e-10)
        counter = FlopCounterMode(display=False)
        with counter:
            layer(x)
        # the trace over the ring's boundary bond is additions only and not counted
        assert cost == layer.flops(tuple(x.shape)) == counter.get_total_flops()


def test_tr_conv_pruned_entries_have_no_effect_and_accounting():
    torch.manual_seed(0)
    layer = TRConv2d.from_conv(nn.Conv2d(4, 6, 3, padding=1), 2)
    x = torch.randn(2, 4, 5, 5)
    stored = sum(math.prod(getattr(layer, n).shape) for n in layer.prunable)
    assert layer.stored_params() == stored and layer.dense_params == 6 * 4 * 3 * 3
    prune_half_and_check_pruned_entries_are_ignored(layer, x)


def test_format_tr_on_a_cnn_from_rules():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    x = torch.randn(2, 3, 6, 6)
    rules = {"version": 1, "defaults": {"init": "decompose"},
             "rules": [{"name": "all", "match": {"type": ["Conv2d", "Linear"]}, "action": "factorize",
                        "factorize": {"format": "tr", "rank": "full"}}]}
    out = tedepr_fx.transform(model, rules, example_inputs=(x,))
    torch.testing.assert_close(out(x), model(x), rtol=1e-4, atol=1e-5)
    assert [r.new_type for r in tedepr_fx.report(out).rows] == ["TRConv2d", "TRLinear"]
