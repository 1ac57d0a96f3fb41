"""budget.flops: rank: auto stays within a share of the dense FLOPs; plan flags costlier layers."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

import tedepr_fx
from tedepr_fx.errors import LayerError, RuleError
from tedepr_fx.models import lenet300100

pytestmark = pytest.mark.usefixtures("one_thread")


def _rules(flops: float | None = None, rank: Any = "auto", **budget: Any) -> dict[str, Any]:
    share: dict[str, Any] = {"sparsity": 0.99, **budget}
    if flops is not None:
        share["flops"] = flops
    return {"version": 1, "defaults": {"budget": share}, "rules": [
        {"name": "hidden", "match": {"name": "fc[12]"}, "action": "factorize",
         "factorize": {"format": "tt", "rank": rank}},
        {"name": "rest", "match": {"type": "Linear"}, "action": "prune"}]}


def _plan(rules: dict[str, Any], model: nn.Module | None = None, example: Any = None) -> tedepr_fx.Plan:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tedepr_fx.plan(model if model is not None else lenet300100(), rules, example)


@pytest.mark.parametrize("share", [0.5, 0.2])
def test_rank_auto_stays_within_the_flops_share_and_takes_the_largest_rank_that_does(share: float) -> None:
    free = {r.name: r for r in _plan(_rules()).rows}
    bound = {r.name: r for r in _plan(_rules(share)).rows}
    for name in ("fc1", "fc2"):
        row = bound[name]
        assert row.flops_after is not None and row.flops_before is not None
        assert row.flops_after <= share * row.flops_before
        assert max(row.ranks or []) <= max(free[name].ranks or [])
        # one rank more would break the bound (or the parameter target, which the free plan shows)
        higher = _rules(rank=max(row.ranks or []) + 1)
        over = {r.name: r for r in _plan(higher).rows}[name]
        assert (over.flops_after or 0) > share * row.flops_before or max(over.ranks or []) > max(free[name].ranks or [])
    assert bound["fc1"].ranks != free["fc1"].ranks  # the shipped-like rank costs more than dense: it must move


def test_a_given_rank_above_the_bound_is_an_error_naming_the_layer_and_rule() -> None:
    with pytest.raises(LayerError, match=r"layer 'fc1' \(rule 'hidden'\): rank 12 costs .* flops bound"):
        _plan(_rules(0.5, rank=12))


def test_a_bound_no_rank_meets_is_an_error() -> None:
    with pytest.raises(LayerError, match="no rank meets it"):
        _plan(_rules(0.001))


def test_the_bound_needs_input_shapes() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    rules = {"version": 1, "defaults": {"budget": {"sparsity": 0.9, "flops": 0.5}}, "rules": [
        {"name": "first", "match": {"name": "0"}, "action": "factorize",
         "factorize": {"format": "tt", "rank": "auto", "modes": {"in": [8, 8], "out": [4, 8]}}}]}
    with pytest.raises(LayerError, match="needs the layer's input shape: pass example_inputs"):
        _plan(rules, model)
    ok = _plan(rules, model, (torch.randn(2, 64),))
    assert all((r.flops_after or 0) <= 0.5 * (r.flops_before or 0) for r in ok.rows if r.action == "factorize")


@pytest.mark.parametrize("bad", [0.0, 1.5, "half"])
def test_invalid_flops_shares_are_located_rule_errors(bad: Any) -> None:
    with pytest.raises(RuleError, match="defaults.budget.flops"):
        tedepr_fx.load_rules(_rules(bad))


def test_plan_notes_and_warns_when_a_rewrite_costs_more_than_dense() -> None:
    with pytest.warns(UserWarning, match=r"more expensive than dense: fc1 \(\d\.\d\dx the dense FLOPs\)"):
        result = tedepr_fx.plan(lenet300100(), _rules())
    fc1 = next(r for r in result.rows if r.name == "fc1")
    assert "x the dense FLOPs" in fc1.note
    assert (fc1.flops_after or 0) > (fc1.flops_before or 0)
