"""Eval mode: a TT-matrix layer picks its order with the merged cores cached, and runs its
cached whole weight as one F.linear where that is cheaper (issue 14's small-batch overhead)."""

from __future__ import annotations

import pytest
import torch

from tedepr_fx.layers.contraction import EVAL_STEP_FLOPS, choose_eval_order, choose_order
from tedepr_fx.layers.tt import TTLinear


def _layer(ranks: list[int]) -> TTLinear:
    torch.manual_seed(0)
    return TTLinear(784, 300, [14, 8, 7], [10, 6, 5], ranks)


@pytest.mark.parametrize("rows", [1, 8, 128])
def test_eval_outputs_equal_the_training_orders_and_use_the_cached_weight(rows: int) -> None:
    layer = _layer([1, 12, 12, 1])
    x = torch.randn(rows, 784)
    with torch.no_grad():
        reference = layer(x)  # training mode: the chain, nothing cached
        layer.eval()
        out = layer(x)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert choose_eval_order(rows, [14, 8, 7], [10, 6, 5], [1, 12, 12, 1]) == ("ltr", (3,))
    assert "weight_oi" in layer.__dict__["_eval_cache"]


def test_the_eval_order_differs_from_the_training_order_where_merging_is_free() -> None:
    ranks = [1, 3, 3, 1]
    train, _ = choose_order(1, [14, 8, 7], [10, 6, 5], ranks)
    assert train != ("ltr", (3,))  # training pays the merge on every call: the chain wins
    assert choose_eval_order(1, [14, 8, 7], [10, 6, 5], ranks) == ("ltr", (3,))
    assert EVAL_STEP_FLOPS > 0


def test_the_cached_weight_follows_mask_and_weight_changes() -> None:
    layer = _layer([1, 4, 4, 1]).eval()
    x = torch.randn(2, 784)
    with torch.no_grad():
        before = layer(x)
        mask = layer.get_mask("core_0").clone()
        mask[..., 0] = False
        layer.set_mask("core_0", mask)
        after_mask = layer(x)
        layer.core_1.mul_(2.0)
        after_weight = layer(x)
        layer.train()
        expected = layer(x)
    assert not torch.equal(before, after_mask) and not torch.equal(after_mask, after_weight)
    torch.testing.assert_close(after_weight, expected, rtol=1e-5, atol=1e-5)


def test_with_autograd_on_nothing_is_cached() -> None:
    layer = _layer([1, 12, 12, 1]).eval()
    out = layer(torch.randn(1, 784))
    assert out.requires_grad and "weight_oi" not in layer.__dict__.get("_eval_cache", {})
