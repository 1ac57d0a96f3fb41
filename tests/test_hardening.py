"""Issue 15, silent wrong results: functional layers under data scorers, models transformed
twice, modules used twice, floors above the budget, and transforms from several threads."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from torch import nn

import tedepr_fx
from tedepr_fx.errors import CaptureError, RuleError
from tedepr_fx.models.functional import FunctionalMLP

X = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2))


def prune_all(scorer: str = "magnitude", **budget: float) -> dict:
    return {"version": 1, "defaults": {"scorer": scorer, "budget": {"sparsity": 0.5, **budget}},
            "rules": [{"name": "all", "match": {"name": "*"}, "action": "prune"}]}


def quiet_transform(model: nn.Module, rules: object, **kwargs: object) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tedepr_fx.transform(model, rules, **kwargs)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- functional layers ----------------------------------------------------------------------------


@pytest.mark.parametrize("scorer", ["snip", "trainability"])
def test_functional_layers_are_scored_by_data_scorers_and_the_model_is_untouched(scorer):
    torch.manual_seed(0)
    model = FunctionalMLP()
    before, expected = state(model), model(X)
    out = quiet_transform(model, prune_all(scorer), data=[(X, Y)])
    assert [(r.name, r.new_type) for r in tedepr_fx.report(out).rows] == [
        ("w1", "MaskedLinear"), ("w2", "MaskedLinear")]
    assert_same_state(state(model), before)
    assert torch.equal(model(X), expected)
    masks = [b for n, b in out.named_buffers() if n.endswith("_mask")]
    assert masks and all(0 < int(m.sum()) < m.numel() for m in masks)
    out(X)  # the regenerated forward runs


# --- already transformed ---------------------------------------------------------------------------


def test_a_transformed_model_is_refused_by_transform_and_plan():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    out = quiet_transform(model, prune_all(), example_inputs=(X,))
    with pytest.raises(CaptureError, match=r"already transformed.*'?0'? \(MaskedLinear\)"):
        tedepr_fx.transform(out, prune_all(), example_inputs=(X,))
    with pytest.raises(CaptureError, match="already transformed"):
        tedepr_fx.plan(out, prune_all(), example_inputs=(X,))


# --- modules used twice ----------------------------------------------------------------------------


class Aliased(nn.Module):
    """One linear layer held under two names; ``branch`` makes the root untraceable."""

    def __init__(self, branch: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = self.a
        self.head = nn.Linear(64, 10)
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch and x.sum() > 1e9:  # data-dependent: fx cannot trace the root
            x = -x
        return self.head(self.b(x))


@pytest.mark.parametrize("branch", [False, True], ids=["graph", "eager"])
def test_an_aliased_module_is_rewritten_under_every_name(branch):
    torch.manual_seed(0)
    model = Aliased(branch)
    out = quiet_transform(model, prune_all(), example_inputs=(X,))
    assert type(out.a).__name__ == "MaskedLinear" and out.b is out.a
    rows = tedepr_fx.report(out).rows
    assert [r.name for r in rows] == ["a", "head"]
    assert "also named b" in rows[0].note
    assert type(model.b) is nn.Linear and model.b is model.a
    assert "b.weight_mask" in out.state_dict()  # the second name holds the masked layer too


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a(torch.relu(self.a(x))))


@pytest.mark.parametrize("scorer", ["magnitude", "snip"])
def test_a_module_called_twice_is_one_layer(scorer):
    torch.manual_seed(0)
    out = quiet_transform(CalledTwice(), prune_all(scorer), example_inputs=(X,), data=[(X, Y)])
    rows = tedepr_fx.report(out).rows
    assert [(r.name, r.dense) for r in rows] == [("a", 64 * 64), ("head", 640)]
    assert sum(r.kept for r in rows) == (64 * 64 + 640) // 2


def test_plan_counts_a_module_called_twice_once():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = tedepr_fx.plan(CalledTwice(), prune_all(), example_inputs=(X,))
    assert [(r.name, r.dense) for r in plan.rows] == [("a", 64 * 64), ("head", 640)]


# --- floors above the budget -----------------------------------------------------------------------


def test_min_density_above_the_density_of_a_prune_rule_is_a_located_rule_error():
    text = ("version: 1\n"
            "defaults:\n"
            "  budget: {sparsity: 0.9, min_density: 0.5}\n"
            "rules:\n"
            "  - {name: all, match: {name: '*'}, action: prune}\n")
    with pytest.raises(RuleError, match=r":3:.*min_density 0.5 is larger than the budget's density 0.1, "
                                        r"which rule\(s\) 'all' \(prune\) share"):
        tedepr_fx.load_rules(text)


def test_min_density_above_a_budget_shared_with_factorized_layers_is_allowed():
    # the shipped transformer policy at sparsity 0.99: its floors count factors there
    rules = tedepr_fx.load_rules("rules/transformer.yaml").with_budget(sparsity=0.99)
    assert rules.defaults.budget is not None and rules.defaults.budget.min_density == 0.05


def test_floors_above_a_factorized_layers_budget_win_and_the_report_says_so():
    model = nn.Sequential(nn.Linear(64, 64))
    rules = {"version": 1, "defaults": {"scorer": "magnitude",
                                        "budget": {"density": 0.01, "min_density": 0.5, "of": "dense"}},
             "rules": [{"name": "f", "match": {"name": "0"}, "action": "factorize",
                        "factorize": {"format": "tucker", "rank": 32}}]}
    with pytest.warns(UserWarning, match="floors exceed the budget"):
        out = tedepr_fx.transform(model, rules, example_inputs=(X,))
    row = tedepr_fx.report(out).rows[0]
    assert row.kept > round(0.01 * 64 * 64)
    assert "floors exceed the budget" in row.note


# --- threads and the global RNG --------------------------------------------------------------------


def _threaded_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.Dropout(0.2), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 10))


THREAD_RULES = {"version": 1, "defaults": {"scorer": "snip", "budget": {"sparsity": 0.9}},
                "rules": [{"name": "f", "match": {"type": "Linear"}, "action": "factorize",
                           "factorize": {"format": "tucker", "rank": 8}}]}


def test_transforms_from_four_threads_equal_the_sequential_result_and_leave_the_rng_alone():
    model = _threaded_model()
    expected = state(quiet_transform(model, THREAD_RULES, example_inputs=(X,), data=[(X, Y)], seed=3))
    results: dict[int, dict[str, torch.Tensor]] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = state(quiet_transform(model, THREAD_RULES, example_inputs=(X,), data=[(X, Y)], seed=3))
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    torch.manual_seed(123)
    rng = torch.get_rng_state()
    for _ in range(2):
        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for i in range(4):
            assert_same_state(results[i], expected)
    assert torch.equal(torch.get_rng_state(), rng)
