"""The collapse check: a dead or rank-1 layer after masking is named in a warning and the report."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import tedepr_fx
from tedepr_fx.layers.masked import MaskedLinear
from tedepr_fx.layers.tt import TTLinear
from tedepr_fx.passes.collapse import DEAD, RANK_ONE, at_most_rank_one, check_collapse


def test_dead_rank_one_and_healthy_masked_layers():
    torch.manual_seed(0)
    layer = MaskedLinear.from_linear(nn.Linear(6, 4))
    assert check_collapse(layer) is None
    one_column = torch.zeros(4, 6, dtype=torch.bool)
    one_column[:, 2] = True  # every output reads one input feature
    layer.set_mask("weight", one_column)
    assert check_collapse(layer) == RANK_ONE
    layer.set_mask("weight", torch.zeros(4, 6, dtype=torch.bool))
    assert check_collapse(layer) == DEAD


def test_a_chain_with_one_dead_core_is_dead():
    torch.manual_seed(0)
    layer = TTLinear.from_linear(nn.Linear(16, 16), 2, modes=([4, 4], [4, 4]))
    assert check_collapse(layer) is None
    layer.set_mask("core_1", torch.zeros_like(layer.get_mask("core_1")))
    assert check_collapse(layer) == DEAD


@pytest.mark.parametrize("rows,cols,rank", [(5, 7, 1), (5, 7, 2), (7, 5, 3), (1, 9, 1)])
def test_rank_one_test_matches_the_numerical_rank(rows, cols, rank):
    torch.manual_seed(0)
    m = torch.randn(rows, rank, dtype=torch.float64) @ torch.randn(rank, cols, dtype=torch.float64)
    assert at_most_rank_one(m) == (int(torch.linalg.matrix_rank(m)) <= 1)


def one_weight_rules(rank_one_rule: bool = False) -> dict:
    rules: list[dict] = [{"name": "head", "match": {"name": "2"}, "action": "prune"}]
    if rank_one_rule:
        rules.insert(0, {"name": "tt1", "match": {"name": "0"}, "action": "factorize",
                         "factorize": {"format": "tt", "rank": 1, "modes": {"in": [4, 4], "out": [4, 2]}}})
    return {"version": 1, "defaults": {"scorer": "magnitude",
                                       "budget": {"sparsity": 0.97, "allocation": "uniform", "min_density": 0.0}},
            "rules": rules}


def test_transform_warns_with_the_layer_name_and_reports_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))  # head keeps round(0.03 * 32) = 1 weight
    with pytest.warns(UserWarning, match=r"layer '2' \(rule 'head'\): collapsed: effective rank 1"):
        out = tedepr_fx.transform(model, one_weight_rules(), example_inputs=(torch.randn(2, 16),))
    row = {r.name: r for r in tedepr_fx.report(out).rows}["2"]
    assert row.kept == 1 and row.collapse == RANK_ONE and RANK_ONE in row.note


def test_a_rank_one_the_rules_ask_for_is_not_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    rules = one_weight_rules(rank_one_rule=True)
    rules["rules"] = rules["rules"][:1]
    rules.pop("defaults")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = tedepr_fx.transform(model, rules, example_inputs=(torch.randn(2, 16),))
    assert tedepr_fx.report(out).rows[0].collapse == ""
