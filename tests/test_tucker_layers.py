"""Tucker-2 layers: exactness at full rank, ranks, plan choice, scratch init, copies."""

from __future__ import annotations

import copy
import io
import itertools

import opt_einsum
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tedepr_fx.formats.tucker import resolve_tucker_ranks
from tedepr_fx.layers.tucker import Tucker2Conv2d, TuckerLinear


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm() / b.norm().clamp_min(1e-30)).detach())


def _hf_conv1d(in_f: int, out_f: int) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(out_f, in_f)
    nn.init.normal_(layer.weight, std=0.1)
    nn.init.normal_(layer.bias, std=0.1)
    return layer


def _check_exact(dense: nn.Module, layer: nn.Module, x: torch.Tensor, tol: float) -> None:
    """Outputs, input gradients and the rebuilt weight's gradient equal the dense layer's."""
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    y_dense, y_layer = dense(x1), layer(x2)
    assert _rel(y_layer, y_dense) <= tol
    g = torch.randn_like(y_dense)
    (y_dense * g).sum().backward()
    (y_layer * g).sum().backward()
    assert _rel(x2.grad, x1.grad) <= tol
    # dL/dW of the dense layer, pulled back through W = U_out core U_in^T, is dL/d(factors)
    factors = (layer.factor_out, layer.core, layer.factor_in)
    weight = layer._merged("dense_via_in")
    if getattr(layer, "weight_layout", "linear") == "conv1d":
        weight = weight.t()
    w_grad = dense.weight.grad
    expected = torch.autograd.grad(weight, factors, w_grad)
    for got, want in zip((f.grad for f in factors), expected):
        assert _rel(got, want) <= tol
    torch.testing.assert_close(layer.bias.grad, dense.bias.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("shape", [(7, 13), (13, 7), (16, 16)])
@pytest.mark.parametrize("rows", [1, 300])
def test_tucker_linear_full_rank_is_exact(dtype, tol, shape, rows):
    torch.manual_seed(0)
    dense = nn.Linear(*shape).to(dtype)
    layer = TuckerLinear.from_linear(dense, "full", init="decompose")
    assert layer.factor_out.dtype == dtype
    _check_exact(dense, layer, torch.randn(rows, 3, shape[0], dtype=dtype), tol)
    torch.testing.assert_close(layer.to_dense(), dense.weight.detach(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_tucker_linear_from_hf_conv1d_is_exact_and_keeps_its_layout(dtype, tol):
    torch.manual_seed(0)
    dense = _hf_conv1d(11, 5).to(dtype)
    layer = TuckerLinear.from_linear(dense, "full", init="decompose")
    assert layer.tedepr_info["weight_layout"] == layer.weight_layout == "conv1d" and layer.nf == 5
    assert layer.to_dense().shape == (11, 5)
    torch.testing.assert_close(layer.to_dense(), dense.weight.detach(), rtol=tol, atol=tol)
    _check_exact(dense, layer, torch.randn(4, 11, dtype=dtype), tol)


CONVS = {
    "stride2": dict(in_channels=5, out_channels=7, kernel_size=3, stride=2, padding=1),
    "dilation2": dict(in_channels=6, out_channels=4, kernel_size=3, dilation=2, padding=2),
    "1x1": dict(in_channels=13, out_channels=11, kernel_size=1),
    "nonsquare": dict(in_channels=3, out_channels=5, kernel_size=(3, 2), padding=(1, 0)),
    "primes_same": dict(in_channels=7, out_channels=11, kernel_size=3, padding="same"),
    "reflect": dict(in_channels=5, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"),
    "circular": dict(in_channels=4, out_channels=7, kernel_size=(3, 3), stride=(2, 1), padding=2,
                     padding_mode="circular"),
    "nobias": dict(in_channels=4, out_channels=4, kernel_size=3, bias=False),
}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("name", list(CONVS))
@pytest.mark.parametrize("batch", [1, 6])
def test_tucker2_conv_full_rank_is_exact(dtype, tol, name, batch):
    torch.manual_seed(0)
    dense = nn.Conv2d(**CONVS[name]).to(dtype)
    layer = Tucker2Conv2d.from_conv(dense, "full", init="decompose")
    torch.testing.assert_close(layer.to_dense(), dense.weight.detach(), rtol=tol, atol=tol)
    x = torch.randn(batch, dense.in_channels, 9, 10, dtype=dtype)
    if dense.bias is None:
        y = layer(x)
        assert _rel(y, dense(x)) <= tol
        return
    _check_exact(dense, layer, x, tol)


@pytest.mark.parametrize("plan", ["chain", "merge_in", "merge_out", "dense_via_in", "dense_via_out"])
def test_every_contraction_order_computes_the_same_conv(plan, monkeypatch):
    torch.manual_seed(0)
    dense = nn.Conv2d(6, 5, 3, stride=2, padding=1, padding_mode="reflect").double()
    layer = Tucker2Conv2d.from_conv(dense, [3, 4], init="decompose")
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    reference = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), layer.to_dense(), dense.bias, 2)
    monkeypatch.setattr(Tucker2Conv2d, "choose_order", lambda self, shape: plan)
    assert _rel(layer(x), reference) <= 1e-12


def test_bfloat16_forward_matches_float32():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    lin = nn.Linear(16, 24)
    for dense, x in ((conv, torch.randn(2, 8, 6, 6)), (lin, torch.randn(5, 16))):
        make = Tucker2Conv2d.from_conv if dense is conv else TuckerLinear.from_linear
        layer = make(dense, "full", init="decompose")
        y16 = layer.to(torch.bfloat16)(x.bfloat16())
        assert y16.dtype == torch.bfloat16
        assert _rel(y16.float(), dense(x)) <= 3e-2


def test_groups_are_a_clear_error():
    with pytest.raises(ValueError, match=r"groups=4 \(rank 2 requested\)"):
        Tucker2Conv2d.from_conv(nn.Conv2d(8, 8, 3, groups=4), 2)


@pytest.mark.parametrize(
    "spec,dims,expected",
    [
        ("full", (3072, 768), [768, 768]),
        ("full", (64, 3, 3, 3), [27, 3]),
        (5, (64, 3, 3, 3), [5, 3]),
        ([10, 2], (64, 3, 3, 3), [10, 2]),
    ],
)
def test_resolve_tucker_ranks(spec, dims, expected):
    assert resolve_tucker_ranks(spec, dims) == expected


@pytest.mark.parametrize("share", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("dims", [(64, 32), (256, 128, 3, 3), (10, 3, 5, 5)])
def test_float_rank_is_the_largest_balanced_ranks_within_the_share(share, dims):
    ranks = resolve_tucker_ranks(share, dims)
    k = 1
    for d in dims[2:]:
        k *= d
    stored = dims[0] * ranks[0] + ranks[0] * ranks[1] * k + dims[1] * ranks[1]
    dense = k * dims[0] * dims[1]
    assert stored <= share * dense or ranks == [1, 1]
    bigger = [r + 1 for r in ranks]
    assert (dims[0] * bigger[0] + bigger[0] * bigger[1] * k + dims[1] * bigger[1] > share * dense
            or bigger[0] > min(dims[0], dense // dims[0]))


@pytest.mark.parametrize(
    "spec,match",
    [
        (17, "rank 17 exceeds the largest useful rank 16"),
        ([17, 2], "rank 17 exceeds the largest useful rank 16 of Tucker mode 0"),
        ([1, 2, 3], r"\[r_out, r_in\]"),
        ("auto", "'auto' must be resolved"),
        (0, "must be a positive int"),
        (True, "must be a positive int"),
        (1.5, "must be a positive int"),
    ],
)
def test_bad_ranks_are_clear_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        TuckerLinear.from_linear(nn.Linear(16, 32), spec)


def test_bad_init_and_bad_module_are_clear_errors():
    with pytest.raises(ValueError, match="init must be 'scratch' or 'decompose'"):
        TuckerLinear.from_linear(nn.Linear(4, 4), 2, init="svd")
    with pytest.raises(TypeError, match="needs an nn.Conv2d"):
        Tucker2Conv2d.from_conv(nn.Linear(4, 4), 2)


def test_meta_source_with_scratch_init_allocates_nothing():
    conv = nn.Conv2d(64, 128, 3, device="meta")
    layer = Tucker2Conv2d.from_conv(conv, 0.25)
    assert all(getattr(layer, n).is_meta for n in ("factor_out", "core", "factor_in"))
    r_out, r_in = layer.ranks
    assert layer.stored_params() == 128 * r_out + r_out * r_in * 9 + 64 * r_in <= 0.25 * 128 * 64 * 9
    assert layer.flops((2, 64, 8, 8)) > 0 and layer.tedepr_info["ranks"] == [r_out, r_in]
    lin = TuckerLinear.from_linear(nn.Linear(32, 16, device="meta"), 4)
    assert lin.core.is_meta and lin.stored_params() == 16 * 4 + 16 + 32 * 4
    with pytest.raises(ValueError, match="meta device"):
        TuckerLinear.from_linear(nn.Linear(32, 16, device="meta"), 4, init="decompose")


def _chain_optimal_cost(rows: int, in_f: int, r_in: int, r_out: int, out_f: int) -> int:
    """opt_einsum's exhaustive ('optimal') search over the contraction orders of x U_in G U_out."""
    shapes = [(rows, in_f), (in_f, r_in), (r_out, r_in), (out_f, r_out)]
    _, info = opt_einsum.contract_path("ni,ia,ba,ob->no", *shapes, shapes=True, optimize="optimal")
    return int(info.opt_cost)


@pytest.mark.parametrize(
    "rows,in_f,out_f,ranks",
    [(1, 768, 3072, [64, 64]), (4096, 768, 3072, [700, 700]), (64, 100, 50, [40, 5]),
     (3, 50, 100, [5, 40]), (1000, 32, 32, [32, 32])],
)
def test_linear_plan_is_the_brute_force_flop_argmin(rows, in_f, out_f, ranks):
    layer = TuckerLinear.from_linear(nn.Linear(in_f, out_f, device="meta"), ranks)
    assert layer.flops((rows, in_f)) == _chain_optimal_cost(rows, in_f, ranks[1], ranks[0], out_f)


@pytest.mark.parametrize("batch,hw,ranks", [(8, 16, [4, 4]), (8, 16, [64, 64]), (1, 2, [60, 60])])
def test_pointwise_conv_plan_is_the_brute_force_flop_argmin(batch, hw, ranks):
    # a 1x1 stride-1 conv is a matmul over pixels, so opt_einsum's exhaustive search applies
    layer = Tucker2Conv2d.from_conv(nn.Conv2d(64, 96, 1, device="meta"), ranks)
    rows = batch * hw * hw
    assert layer.flops((batch, 64, hw, hw)) == _chain_optimal_cost(rows, 64, ranks[1], ranks[0], 96)


def test_kxk_conv_plan_is_the_argmin_over_all_five_orders():
    # independent count: each order's FLOPs written out from the conv arithmetic directly
    layer = Tucker2Conv2d.from_conv(nn.Conv2d(32, 48, 3, stride=2, padding=1, device="meta"), [8, 12])
    for batch, hw in itertools.product([1, 16], [2, 32]):
        p_in, p_out = batch * hw * hw, batch * ((hw + 2 - 3) // 2 + 1) ** 2
        o, i, k, ro, ri = 48, 32, 9, 8, 12
        costs = {
            "chain": 2 * (p_in * i * ri + p_out * ri * k * ro + p_out * ro * o),
            "merge_in": 2 * (ro * ri * k * i + p_out * i * k * ro + p_out * ro * o),
            "merge_out": 2 * (o * ro * ri * k + p_in * i * ri + p_out * ri * k * o),
            "dense_via_in": 2 * (ro * ri * k * i + o * ro * i * k + p_out * o * i * k),
            "dense_via_out": 2 * (o * ro * ri * k + o * ri * k * i + p_out * o * i * k),
        }
        assert layer.flops((batch, 32, hw, hw)) == min(costs.values())
        assert costs[layer.choose_order((batch, 32, hw, hw))] == min(costs.values())


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_scratch_init_has_the_dense_default_variance(kind):
    torch.manual_seed(0)
    if kind == "linear":
        dense = nn.Linear(400, 300)
        layer = TuckerLinear.from_linear(dense, [50, 40])
        fan_in = 400
    else:
        dense = nn.Conv2d(64, 96, 3)
        layer = Tucker2Conv2d.from_conv(dense, [24, 16])
        fan_in = 64 * 9
    target = 1.0 / (3 * fan_in)
    assert abs(float(dense.weight.detach().var()) / target - 1) < 0.05  # the reference itself
    assert abs(float(layer.to_dense().var()) / target - 1) < 0.1
    assert torch.equal(layer.bias, dense.bias)


def test_eval_cache_is_reused_and_invalidated_by_factor_and_mask_changes():
    torch.manual_seed(0)
    dense = nn.Linear(64, 64)
    layer = TuckerLinear.from_linear(dense, "full", init="decompose").eval()
    x = torch.randn(512, 64)
    assert layer.choose_order(x.shape) != "chain"
    with torch.no_grad():
        torch.testing.assert_close(layer(x), dense(x), rtol=1e-4, atol=1e-4)
        cached = layer._eval_cache["merged"][1]
        layer(x)
        assert layer._eval_cache["merged"][1] is cached
        layer.core.mul_(2)
        torch.testing.assert_close(layer(x), F.linear(x, layer.to_dense(), layer.bias))
        mask = torch.rand(layer.core.shape) > 0.5
        layer.set_mask("core", mask)
        expected = F.linear(x, layer.factor_out @ (layer.core * mask) @ layer.factor_in.t(), layer.bias)
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)


def test_deepcopy_and_state_dict_round_trip():
    torch.manual_seed(0)
    layer = Tucker2Conv2d.from_conv(nn.Conv2d(6, 8, 3, padding=1), [4, 3])
    layer.set_mask("core", torch.rand(layer.core.shape) > 0.5)
    x = torch.randn(2, 6, 5, 5)
    copied = copy.deepcopy(layer)
    torch.testing.assert_close(copied(x), layer(x))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = Tucker2Conv2d.from_conv(nn.Conv2d(6, 8, 3, padding=1), [4, 3])
    fresh.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(fresh(x), layer(x))
    assert torch.equal(fresh.core_mask, layer.core_mask)
    assert fresh.kept_params() == layer.kept_params() < layer.stored_params()


def test_accounting():
    layer = Tucker2Conv2d.from_conv(nn.Conv2d(16, 32, 3, stride=2), [8, 4])
    assert layer.dense_params == 32 * 16 * 9
    assert layer.stored_params() == 32 * 8 + 8 * 4 * 9 + 16 * 4
    assert layer.to_dense().shape == (32, 16, 3, 3)
    with pytest.raises(ValueError, match="expects"):
        TuckerLinear.from_linear(nn.Linear(8, 4), 2).flops((3, 9))
