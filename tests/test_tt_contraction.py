"""The contraction choice: every plan is exact, the FLOP model matches a FLOP counter, the choice is the argmin."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tedepr_fx.layers.contraction import (
    candidate_orders,
    choose_order,
    group_cores,
    tt_chain_apply,
    tt_flops,
)
from tedepr_fx.layers.tt import TTConv2d, TTLinear

SHAPES = [
    # (rows, in_modes, out_modes, ranks)
    (64, [8, 12, 8], [12, 16, 16], [1, 16, 16, 1]),
    (256, [4, 4, 4, 4], [4, 4, 4, 4], [1, 8, 8, 8, 1]),
    (3, [4, 4, 4, 4], [4, 4, 4, 4], [1, 8, 8, 8, 1]),
    (96, [10, 10, 9, 8], [4, 4, 4, 4], [1, 4, 4, 4, 1]),
    (50, [3, 5, 2], [2, 2, 7], [3, 4, 2, 1]),  # leading rank > 1, as in TTConv2d
]


def measured_flops(rows, in_modes, out_modes, ranks, plan) -> tuple[int, torch.Tensor]:
    """Run one plan under torch's FLOP counter (independent of our FLOP model)."""
    torch.manual_seed(0)
    cores = [torch.randn(ranks[k], m, n, ranks[k + 1], dtype=torch.float64)
             for k, (m, n) in enumerate(zip(in_modes, out_modes))]
    x = torch.randn(rows, ranks[0] * int(torch.tensor(in_modes).prod()), dtype=torch.float64)
    counter = FlopCounterMode(display=False)
    with counter:
        y = tt_chain_apply(x, group_cores(cores, plan[1]), plan[0])
    return counter.get_total_flops(), y


@pytest.mark.parametrize("rows,in_modes,out_modes,ranks", SHAPES)
def test_choice_is_argmin_of_brute_force_flop_count(rows, in_modes, out_modes, ranks):
    measured = {}
    outputs = []
    for plan in candidate_orders(len(in_modes)):
        flops, y = measured_flops(rows, in_modes, out_modes, ranks, plan)
        measured[plan] = flops
        outputs.append(y)
        assert tt_flops(rows, in_modes, out_modes, ranks, plan[1], plan[0]) == flops, plan
    # every order computes the same product
    for y in outputs[1:]:
        assert torch.allclose(y, outputs[0], rtol=1e-10, atol=1e-8)
    plan, cost = choose_order(rows, in_modes, out_modes, ranks)
    assert cost == measured[plan] == min(measured.values())


def test_choice_depends_on_batch():
    in_modes, out_modes, ranks = [8, 12, 8], [12, 16, 16], [1, 16, 16, 1]
    small, _ = choose_order(1, in_modes, out_modes, ranks)
    large, _ = choose_order(256, in_modes, out_modes, ranks)
    assert len(small[1]) > 1  # a few rows: contract the factors
    assert large == ("ltr", (3,))  # many rows: rebuild the weight once


def test_layer_flops_match_flop_counter():
    torch.manual_seed(0)
    tt = TTLinear(256, 256, [4, 8, 8], [8, 8, 4], [1, 6, 6, 1], bias=False)
    x = torch.randn(2, 33, 256)
    counter = FlopCounterMode(display=False)
    with counter:
        tt(x)
    assert tt.flops(tuple(x.shape)) == counter.get_total_flops()


@pytest.mark.parametrize("hw,rank", [(16, 2), (4, "full")])
def test_conv_flops_match_flop_counter(hw, rank):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1, bias=False)
    tt = TTConv2d.from_conv(conv, rank)
    x = torch.randn(2, 16, hw, hw)
    counter = FlopCounterMode(display=False)
    with counter:
        tt(x)
    assert tt.flops(tuple(x.shape)) == counter.get_total_flops()


@pytest.mark.parametrize("rows,in_modes,out_modes,ranks", SHAPES[:4])
def test_choice_matches_opt_einsum_optimal_cost(rows, in_modes, out_modes, ranks):
    """opt_einsum's exhaustive search over all pairwise orders finds nothing cheaper than our plan."""
    import opt_einsum

    d = len(in_modes)
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    ins = [next(letters) for _ in range(d)]
    outs = [next(letters) for _ in range(d)]
    bonds = [next(letters) for _ in range(d - 1)]
    terms = ["Z" + "".join(ins)]
    shapes = [(rows, *in_modes)]
    for k in range(d):
        left = bonds[k - 1] if k > 0 else ""
        right = bonds[k] if k < d - 1 else ""
        terms.append(left + ins[k] + outs[k] + right)
        shapes.append(tuple(([ranks[k]] if left else []) + [in_modes[k], out_modes[k]] + ([ranks[k + 1]] if right else [])))
    expr = ",".join(terms) + "->Z" + "".join(outs)
    _, info = opt_einsum.contract_path(expr, *shapes, shapes=True, optimize="optimal")
    _, ours = choose_order(rows, in_modes, out_modes, ranks)
    assert ours <= int(info.opt_cost) * 1.0001


@pytest.mark.parametrize("shapes", [
    [(1, 3, 2, 4), (4, 5, 3, 1)],
    [(1, 2, 3, 2), (2, 3, 2, 3), (3, 2, 2, 1)],
    [(1, 4, 1, 3), (3, 1, 4, 1)],
    [(1, 1, 1, 1), (1, 7, 5, 1)],
])
def test_whole_rebuild_matches_left_to_right_merge_with_first_and_second_derivatives(shapes):
    from tedepr_fx.layers.contraction import _merge_left_to_right, merge_cores

    torch.manual_seed(0)
    cores = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]
    torch.testing.assert_close(merge_cores(cores), _merge_left_to_right(cores))
    assert torch.autograd.gradcheck(lambda *c: merge_cores(list(c)), cores)
    assert torch.autograd.gradgradcheck(lambda *c: merge_cores(list(c)), cores)
