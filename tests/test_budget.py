"""Budgets: exact counts, floors, ties, whole layers, global / uniform / erk, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tedepr_fx
from tedepr_fx.budget import Group, allocate, apply_masks, floor_count
from tedepr_fx.errors import BudgetError, DataError
from tedepr_fx.layers.masked import MaskedLinear, MaskedMixin
from tedepr_fx.scoring import collect_targets


class TwoFactor(MaskedMixin, nn.Module):
    """Toy factorized layer ``x @ (A*mA) @ (B*mB)`` standing in for a TT layer."""

    prunable = ("A", "B")

    def __init__(self, n_in: int, rank: int, n_out: int):
        super().__init__()
        self.A = nn.Parameter(torch.randn(n_in, rank))
        self.B = nn.Parameter(torch.randn(rank, n_out))
        self.init_masks()

    def forward(self, x):
        return x @ self.masked("A") @ self.masked("B")


def model3() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(MaskedLinear(20, 30), nn.ReLU(), TwoFactor(30, 4, 25), nn.ReLU(),
                         MaskedLinear(25, 10))


def groups(model, density=0.1, allocation="global", of="dense", min_density=0.0, budget_id="default"):
    out = []
    for layer, shape in (("0", (30, 20)), ("2", (30, 25)), ("4", (10, 25))):
        out.append(Group(layer, collect_targets(model, [layer]), math.prod(shape), density, of=of,
                         allocation=allocation, min_density=min_density, budget_id=budget_id,
                         dense_shape=shape))
    return out


def rand_scores(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {t.key: torch.rand(t.tensor().shape, generator=g) for t in collect_targets(model)}


@pytest.mark.parametrize("allocation", ["global", "uniform", "erk"])
@pytest.mark.parametrize("density", [0.5, 0.05, 0.01])
def test_total_kept_equals_budget_exactly(allocation, density):
    model = model3()
    gs = groups(model, density, allocation, min_density=0.0)
    alloc = allocate(rand_scores(model), gs)
    # a layer storing less than its budget (layer "2" at 0.5) stays whole
    budget = sum(min(round(density * g.dense_params), g.stored) for g in gs)
    assert sum(int(m.sum()) for m in alloc.masks.values()) == budget
    assert alloc.total_kept == budget
    assert all(m.dtype == torch.bool for m in alloc.masks.values())
    for g in gs:
        layer = alloc.per_layer[g.layer]
        assert layer.kept == sum(alloc.kept[t.key] for t in g.targets)
        assert layer.kept <= layer.stored
    if allocation == "uniform":
        assert all(alloc.per_layer[g.layer].kept == min(round(density * g.dense_params), g.stored)
                   for g in gs)


def test_global_keeps_the_top_scores_against_a_sort():
    model = model3()
    scores = rand_scores(model)
    alloc = allocate(scores, groups(model, 0.1))
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    threshold = torch.sort(flat, descending=True).values[alloc.total_kept - 1]
    for k, s in scores.items():
        assert torch.equal(alloc.masks[k], s >= threshold)


def test_of_factors_counts_stored_entries():
    model = model3()
    gs = groups(model, 0.25, "uniform", of="factors")
    alloc = allocate(rand_scores(model), gs)
    assert alloc.per_layer["2"].kept == round(0.25 * (30 * 4 + 4 * 25))


def test_layer_storing_less_than_its_budget_stays_whole():
    model = model3()
    # layer "2" stores 220 entries; 40% of its dense 750 is 300 > 220
    alloc = allocate(rand_scores(model), groups(model, 0.4, "uniform"))
    assert alloc.per_layer["2"].whole
    assert alloc.masks["2.A"].all() and alloc.masks["2.B"].all()
    assert not alloc.per_layer["0"].whole


def test_floor_keeps_every_tensor_alive_and_is_flagged():
    model = model3()
    scores = rand_scores(model)
    scores["2.B"] = torch.full((4, 25), -1.0)  # the worst scores: global would empty it
    alloc = allocate(scores, groups(model, 0.05, min_density=0.01))
    assert alloc.kept["2.B"] == floor_count(100, 0.01) == 1
    assert "2.B" in alloc.per_layer["2"].at_floor
    no_floor = allocate(scores, groups(model, 0.05, min_density=0.0))
    assert no_floor.kept["2.B"] == 1  # the floor of 1 entry per tensor holds even at min_density 0


def test_floors_exceeding_budget_keep_floors_and_flag():
    model = model3()
    alloc = allocate(rand_scores(model), groups(model, 0.001, "uniform", min_density=0.05))
    layer = alloc.per_layer["2"]  # budget round(0.75) = 1, floors 6 + 5
    assert layer.floors_exceed_budget
    assert alloc.kept["2.A"] == floor_count(120, 0.05) and alloc.kept["2.B"] == floor_count(100, 0.05)


def test_ties_broken_by_position_deterministically():
    model = model3()
    scores = {t.key: torch.ones(t.tensor().shape) for t in collect_targets(model)}
    a = allocate(scores, groups(model, 0.1, min_density=0.0))
    b = allocate({k: v.clone() for k, v in scores.items()}, groups(model, 0.1, min_density=0.0))
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    # all equal: the first entries in target order win after the per-tensor floors of 1
    assert a.masks["0.weight"].reshape(-1)[: a.kept["0.weight"]].all()


def test_erk_matches_formula_on_two_layers():
    torch.manual_seed(0)
    model = nn.Sequential(MaskedLinear(100, 100), MaskedLinear(100, 10))
    gs = [Group("0", collect_targets(model, ["0"]), 10000, 0.1, allocation="erk", min_density=0.0,
                dense_shape=(100, 100)),
          Group("1", collect_targets(model, ["1"]), 1000, 0.1, allocation="erk", min_density=0.0,
                dense_shape=(10, 100))]
    alloc = allocate(rand_scores(model), gs)
    total = 1100
    # densities proportional to (sum dims)/(prod dims): 200/1e4 and 110/1e3, solved for c
    c = total / (200 + 110)
    assert alloc.per_layer["0"].kept == pytest.approx(c * 200, abs=1)
    assert alloc.per_layer["1"].kept == pytest.approx(c * 110, abs=1)
    assert alloc.total_kept == total


def test_erk_redistributes_what_full_layers_cannot_take():
    torch.manual_seed(0)
    model = nn.Sequential(MaskedLinear(100, 100), MaskedLinear(4, 2))
    gs = [Group("0", collect_targets(model, ["0"]), 10000, 0.05, allocation="erk", min_density=0.0,
                dense_shape=(100, 100)),
          Group("1", collect_targets(model, ["1"]), 100, 0.05, allocation="erk", min_density=0.0,
                dense_shape=(10, 10))]
    alloc = allocate(rand_scores(model), gs)
    assert alloc.per_layer["1"].kept == 8  # capped at what it stores
    assert alloc.total_kept == 505


def test_budget_ids_are_allocated_separately():
    model = model3()
    gs = groups(model, 0.1)
    gs[2].budget_id, gs[2].density = "rule:head", 0.5
    alloc = allocate(rand_scores(model), gs)
    assert alloc.per_layer["4"].kept == 125
    assert alloc.per_layer["0"].kept + alloc.per_layer["2"].kept == 60 + 75


def test_errors_name_the_fault():
    model = model3()
    scores = rand_scores(model)
    scores["2.A"][0, 0] = float("nan")
    with pytest.raises(DataError, match="'2.A'"):
        allocate(scores, groups(model))
    with pytest.raises(BudgetError, match="layer '0'.*density"):
        allocate(rand_scores(model), groups(model, density=1.5))
    gs = groups(model)
    gs[1].allocation = "erk"
    with pytest.raises(BudgetError, match="mixes allocations"):
        allocate(rand_scores(model), gs)
    gs = groups(model, allocation="erk")
    gs[0].dense_shape = ()
    with pytest.raises(BudgetError, match="layer '0'.*dense_shape"):
        allocate(rand_scores(model), gs)
    missing = rand_scores(model)
    del missing["4.weight"]
    with pytest.raises(BudgetError, match="'4.weight'"):
        allocate(missing, groups(model))


def dense3() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 25), nn.ReLU(), nn.Linear(25, 10))


def prune_rules(scorer: str, sparsity: float, allocation: str = "global", min_density: float = 0.0):
    return {"version": 1,
            "defaults": {"scorer": scorer, "budget": {"sparsity": sparsity, "allocation": allocation,
                                                      "min_density": min_density}},
            "rules": [{"name": "all", "match": {"type": "Linear"}, "action": "prune"}]}


def test_transform_masks_are_deterministic_and_hold_through_training():
    data = [(torch.randn(8, 20), torch.randint(0, 10, (8,))) for _ in range(2)]
    masks = []
    for _ in range(2):
        model = tedepr_fx.transform(dense3(), prune_rules("trainability", 0.95, min_density=0.01),
                                    data=data, seed=0, verbose=False)
        masks.append({t.key: t.mask().clone() for t in collect_targets(model)})
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    kept = {r.name: r.kept for r in tedepr_fx.report(model).rows}
    assert kept == {k.removesuffix(".weight"): int(m.sum()) for k, m in masks[0].items()}

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for x, y in data * 3:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for t in collect_targets(model):
        assert torch.equal(t.mask(), masks[0][t.key])
    first = model.get_submodule("0")
    w = first.weight.detach()
    effective = first.masked("weight").detach()
    assert torch.count_nonzero(effective) <= kept["0"] and torch.any(w[~masks[0]["0.weight"]] != 0)


def test_transform_reaches_a_uniform_budget_exactly():
    model = tedepr_fx.transform(dense3(), prune_rules("magnitude", 0.98, "uniform"),
                                example_inputs=(torch.randn(2, 20),))
    assert sum(t.mask().sum().item() for t in collect_targets(model)) == sum(
        round(0.02 * n) for n in (20 * 30, 30 * 25, 25 * 10))


def test_iterative_scorers_get_the_pooled_density_of_the_budgets(monkeypatch):
    import tedepr_fx.passes.prune as prune_pass

    seen = []
    original = prune_pass.scorer_from_rules

    def spy(name, scoring, *, density, **kwargs):
        seen.append(density)
        return original(name, scoring, density=density, **kwargs)

    monkeypatch.setattr(prune_pass, "scorer_from_rules", spy)
    rules = {"version": 1, "defaults": {"scorer": "magnitude", "budget": {"sparsity": 0.99}},
             "rules": [{"name": "tt", "match": {"name": "0"}, "action": "factorize",
                        "factorize": {"format": "tt", "rank": 4,
                                      "modes": {"in": [8, 8], "out": [8, 8]}}},
                       {"name": "rest", "match": {"type": "Linear"}, "action": "prune"}]}
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    out = tedepr_fx.transform(model, rules, example_inputs=(torch.randn(2, 64),))
    rows = tedepr_fx.report(out).rows
    # budgets are counted against the dense weights, density against what is stored
    expected = sum(0.01 * r.dense for r in rows) / sum(r.stored for r in rows)
    assert rows[0].stored < rows[0].dense and seen == [pytest.approx(expected, rel=1e-12)]


def test_apply_masks_rejects_unknown_keys():
    model = model3()
    with pytest.raises(KeyError, match="'9.weight'"):
        apply_masks(model, {"9.weight": torch.ones(2, 2, dtype=torch.bool)})


def test_global_floors_exceeding_pool_flag_every_layer():
    model = model3()
    alloc = allocate(rand_scores(model), groups(model, 0.001, "global", min_density=0.1))
    assert all(layer.floors_exceed_budget for layer in alloc.per_layer.values())
    assert alloc.total_kept == sum(floor_count(t.tensor().numel(), 0.1)
                                   for t in collect_targets(model))


@settings(max_examples=25, deadline=None)
@given(density=st.floats(0.01, 0.3), allocation=st.sampled_from(["global", "uniform", "erk"]),
       levels=st.integers(1, 4), seed=st.integers(0, 1000))
def test_exact_budget_and_repeatable_with_heavy_ties(density, allocation, levels, seed):
    model = model3()
    g = torch.Generator().manual_seed(seed)
    # few distinct score values: most comparisons are ties
    scores = {t.key: torch.randint(0, levels, t.tensor().shape, generator=g).float()
              for t in collect_targets(model)}
    gs = groups(model, density, allocation, min_density=0.0)
    a = allocate(scores, gs)
    b = allocate({k: v.clone() for k, v in scores.items()}, groups(model, density, allocation,
                                                                   min_density=0.0))
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    expected = sum(min(round(density * g.dense_params), g.stored) for g in gs)
    if not any(layer.floors_exceed_budget for layer in a.per_layer.values()):
        assert a.total_kept == expected
