"""Full-rank exactness of the TT layers against the dense layers they replace."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tedepr_fx.layers.tt import TTConv2d, TTLinear
from tedepr_fx.layers.tt_lstm import TTLSTM


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def tol(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-4


def grads_of(module: nn.Module, x: torch.Tensor, fn=lambda out: out):
    x = x.clone().requires_grad_(True)
    out = fn(module(x))
    seed = torch.randn_like(out)
    (out * seed).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("in_f,out_f,modes", [
    (12, 20, "auto"),
    (97, 13, "auto"),  # primes: padded
    (64, 48, ([4, 4, 4], [4, 4, 3])),
    (30, 7, ([2, 3, 5], [7, 1, 1])),
])
def test_tt_linear_full_rank_matches_linear(in_f, out_f, modes, dtype):
    torch.manual_seed(0)
    dense = nn.Linear(in_f, out_f).to(dtype)
    tt = TTLinear.from_linear(dense, "full", modes=modes, init="decompose")
    x = torch.randn(5, 3, in_f, dtype=dtype)
    torch.manual_seed(1)
    y_ref, gx_ref = grads_of(dense, x)
    torch.manual_seed(1)
    y, gx = grads_of(tt, x)
    assert rel_err(y, y_ref) <= tol(dtype)
    assert rel_err(gx, gx_ref) <= tol(dtype)
    assert rel_err(tt.to_dense(), dense.weight.detach()) <= tol(dtype)
    assert tt.core_0.dtype == dtype and tt.bias.dtype == dtype


def test_tt_linear_weight_gradient_matches_chain_rule():
    """dL/dcore through the layer equals dL/dW (dense) pulled back through the rebuilt weight."""
    torch.manual_seed(0)
    dense = nn.Linear(24, 18).double()
    tt = TTLinear.from_linear(dense, "full", init="decompose")
    x = torch.randn(7, 24, dtype=torch.double)
    seed = torch.randn(7, 18, dtype=torch.double)
    (dense(x) * seed).sum().backward()
    (tt(x) * seed).sum().backward()
    grads = torch.autograd.grad(_rebuild(tt), [tt.core_0, tt.core_1], grad_outputs=dense.weight.grad)
    assert rel_err(grads[0], tt.core_0.grad) <= 1e-10
    assert rel_err(grads[1], tt.core_1.grad) <= 1e-10
    assert rel_err(tt.bias.grad, dense.bias.grad) <= 1e-12


def _rebuild(tt: TTLinear) -> torch.Tensor:
    # an independent dense rebuild with einsum, in nn.Linear's (out, in) layout
    w = torch.einsum("aijb,bklc->ikjl", tt.core_0, tt.core_1)
    return w.reshape(tt.in_features, tt.out_features).t()


def test_tt_linear_hf_conv1d_full_rank():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv1d = Conv1D(20, 12)  # nf=20 outputs, nx=12 inputs; weight (12, 20)
    tt = TTLinear.from_linear(conv1d, "full", init="decompose")
    x = torch.randn(2, 5, 12)
    torch.manual_seed(5)
    y_ref, gx_ref = grads_of(conv1d, x)
    torch.manual_seed(5)
    y, gx = grads_of(tt, x)
    assert tt.weight_layout == "conv1d" and tt.nf == 20
    assert tt.to_dense().shape == (12, 20)
    assert rel_err(tt.to_dense(), conv1d.weight.detach()) <= 1e-4
    assert rel_err(y, y_ref) <= 1e-4 and rel_err(gx, gx_ref) <= 1e-4


def test_tt_linear_bfloat16_forward():
    torch.manual_seed(0)
    dense = nn.Linear(32, 24)
    tt = TTLinear.from_linear(dense, "full", init="decompose").to(torch.bfloat16)
    x = torch.randn(4, 32)
    y = tt(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert rel_err(y.float(), dense(x).detach()) <= 3e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cin,cout,k,kw", [
    (6, 10, 3, {}),
    (6, 10, 3, {"stride": 2, "padding": 1}),
    (6, 10, 3, {"dilation": 2, "padding": 2}),
    (7, 11, 1, {}),  # primes, 1x1
    (4, 6, 3, {"padding": 1, "padding_mode": "reflect"}),
    (4, 6, (3, 2), {"padding": "same", "bias": False}),
])
def test_tt_conv_full_rank_matches_conv(cin, cout, k, kw, dtype):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, **kw).to(dtype)
    tt = TTConv2d.from_conv(conv, "full", init="decompose")
    x = torch.randn(2, cin, 9, 8, dtype=dtype)
    torch.manual_seed(3)
    y_ref, gx_ref = grads_of(conv, x)
    torch.manual_seed(3)
    y, gx = grads_of(tt, x)
    assert y.shape == y_ref.shape
    assert rel_err(y, y_ref) <= tol(dtype)
    assert rel_err(gx, gx_ref) <= tol(dtype)
    assert rel_err(tt.to_dense(), conv.weight.detach()) <= tol(dtype)


@pytest.mark.parametrize("kw", [{}, {"stride": 2, "padding": 1}, {"dilation": 2, "padding": 2}])
def test_tt_conv_factor_path_matches_its_dense_kernel(kw):
    """At low rank on a large input the factor chain is chosen; it must equal conv2d with to_dense()."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, **kw).double()
    tt = TTConv2d.from_conv(conv, 2, init="scratch")
    x = torch.randn(2, 16, 20, 20, dtype=torch.double)
    kind, _, _ = tt.contraction_order(tuple(x.shape))
    assert kind == "factors"
    ref = torch.nn.functional.conv2d(x, tt.to_dense(), tt.bias, conv.stride, conv.padding, conv.dilation)
    assert rel_err(tt(x), ref) <= 1e-10


def test_tt_conv_rejects_groups():
    conv = nn.Conv2d(4, 8, 3, groups=2)
    with pytest.raises(ValueError, match="groups=2"):
        TTConv2d.from_conv(conv, 2)


def test_tt_conv_unbatched_input():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    tt = TTConv2d.from_conv(conv, "full", init="decompose")
    x = torch.randn(4, 7, 7)
    assert rel_err(tt(x), conv(x).detach()) <= 1e-4


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("hidden_to_hidden", [False, True])
def test_tt_lstm_full_rank_matches_lstm(batch_first, with_hx, hidden_to_hidden):
    torch.manual_seed(0)
    lstm = nn.LSTM(30, 12, num_layers=2, batch_first=batch_first).double()
    tt = TTLSTM.from_lstm(lstm, "full", init="decompose", hidden_to_hidden=hidden_to_hidden)
    x = torch.randn(4, 5, 30, dtype=torch.double)
    batch = 4 if batch_first else 5
    hx = None
    if with_hx:
        hx = (torch.randn(2, batch, 12, dtype=torch.double), torch.randn(2, batch, 12, dtype=torch.double))
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ref, (h_ref, c_ref) = lstm(x1, hx)
    out, (h, c) = tt(x2, hx)
    for a, b in ((out, out_ref), (h, h_ref), (c, c_ref)):
        assert a.shape == b.shape and rel_err(a, b) <= 1e-10
    seed = torch.randn_like(out)
    (out_ref * seed).sum().backward()
    (out * seed).sum().backward()
    assert rel_err(x2.grad, x1.grad) <= 1e-10


def test_tt_lstm_float32_and_unbatched():
    torch.manual_seed(0)
    lstm = nn.LSTM(20, 8)
    tt = TTLSTM.from_lstm(lstm, "full", init="decompose")
    x = torch.randn(6, 20)
    out_ref, (h_ref, _) = lstm(x)
    out, (h, _) = tt(x)
    assert out.shape == out_ref.shape and h.shape == h_ref.shape
    assert rel_err(out, out_ref) <= 1e-4


def test_tt_lstm_rejects_bidirectional_and_projection():
    with pytest.raises(NotImplementedError, match="bidirectional"):
        TTLSTM.from_lstm(nn.LSTM(8, 4, bidirectional=True), 2)
    with pytest.raises(NotImplementedError, match="proj_size"):
        TTLSTM.from_lstm(nn.LSTM(8, 4, proj_size=2), 2)


def test_tt_lstm_accounting_counts_all_dense_weights():
    lstm = nn.LSTM(30, 12, num_layers=2)
    tt = TTLSTM.from_lstm(lstm, 2)
    dense = sum(p.numel() for n, p in lstm.named_parameters() if n.startswith("weight_"))
    assert tt.dense_params == dense
    assert tt.to_dense().numel() == dense
    stored = sum(getattr(tt, n).numel() for n in tt.prunable)
    assert tt.stored_params() == stored
    assert "weight_hh_l0" in tt.prunable and "weight_hh_l1" in tt.prunable


def test_tt_lstm_merges_each_map_once_per_forward_and_caches_in_eval(monkeypatch):
    import tedepr_fx.layers.tt_lstm as tt_lstm_module

    torch.manual_seed(0)
    lstm = nn.LSTM(12, 6, num_layers=2)
    tt = TTLSTM.from_lstm(lstm, "full", init="decompose", hidden_to_hidden=True)
    calls = []
    real = tt_lstm_module.group_cores
    monkeypatch.setattr(tt_lstm_module, "group_cores", lambda cores, groups: calls.append(1) or real(cores, groups))
    x = torch.randn(5, 3, 12)
    tt(x)[0].sum().backward()
    assert len(calls) == 4  # ih and hh of two layers, not once per time step

    tt.eval()
    calls.clear()
    with torch.no_grad():
        first = tt(x)[0]
        assert len(calls) == 4
        torch.testing.assert_close(tt(x)[0], first)
        assert len(calls) == 4  # reused
        torch.testing.assert_close(first, lstm(x)[0], rtol=1e-4, atol=1e-5)
        tt.hh_l1_core_0.mul_(0.5)
        changed = tt(x)[0]
        assert len(calls) == 5 and not torch.allclose(changed, first)  # only hh_l1 is merged again
        mask = torch.ones_like(tt.ih_l0_core_0, dtype=torch.bool)
        mask.view(-1)[0] = False
        tt.set_mask("ih_l0_core_0", mask)
        tt(x)
        assert len(calls) == 6  # only ih_l0
    with torch.enable_grad():  # eval mode with autograd on: never cached, so gradients flow
        tt(x)[0].sum().backward()
    assert tt.ih_l0_core_0.grad is not None


def test_tt_lstm_explicit_modes_apply_to_every_map_they_fit():
    maps = TTLSTM.resolve_maps(16, 16, 2, 4, modes=([4, 4], [8, 8]), hidden_to_hidden=True)
    assert [(m["in_modes"], m["out_modes"]) for m in maps] == [([4, 4], [8, 8])] * 4
    maps = TTLSTM.resolve_maps(12, 16, 2, 4, modes=([3, 4], [8, 8]), hidden_to_hidden=True)
    assert (maps[0]["in_modes"], maps[0]["out_modes"]) == ([3, 4], [8, 8])
    assert all(math.prod(m["in_modes"]) - m["in_pad"] == 16 for m in maps[1:])  # hidden-sized: auto
    with pytest.raises(ValueError, match="in_modes"):
        TTLSTM.resolve_maps(12, 16, 1, 4, modes=([4, 4], [8, 8]))
