"""Structure that stays trainable at extreme sparsity (issue 10).

Iterative trainability scoring with a synaptic-flow term, rank floors (the format's
and the rule's ``min_rank``) and per-layer entry floors (``budget.min_kept``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tedepr_fx
from tedepr_fx.budget import Group, allocate
from tedepr_fx.errors import RuleError
from tedepr_fx.layers.masked import MaskedLinear
from tedepr_fx.rules import load_rules
from tedepr_fx.scoring import collect_targets, get_scorer
from tedepr_fx.scoring.iterative import global_topk, prune_in_rounds


def mlp(bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(MaskedLinear(12, 16, bias=bias), nn.ReLU(), MaskedLinear(16, 16, bias=bias), nn.ReLU(),
                         MaskedLinear(16, 4, bias=bias))


def batches(n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 12, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


def test_rounds_of_a_fixed_score_give_the_one_shot_top_k():
    # a score that does not depend on the surviving network: pruning in rounds changes nothing
    g = torch.Generator().manual_seed(0)
    fixed = {"a": torch.rand(5, 7, generator=g), "b": torch.rand(11, generator=g)}
    keep = prune_in_rounds(fixed, 0.2, 6, lambda _, alive: fixed)
    total = sum(t.numel() for t in fixed.values())
    one_shot = global_topk(fixed, round(0.2 * total))
    from_rounds = global_topk(keep, round(0.2 * total))
    assert all(torch.equal(one_shot[k], from_rounds[k]) for k in fixed)


def test_rounds_rescore_the_surviving_network_and_keep_pruned_entries_pruned():
    seen: list[dict[str, torch.Tensor]] = []

    def score(_: int, alive: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.append({k: m.clone() for k, m in alive.items()})
        return {k: torch.arange(m.numel(), dtype=torch.float64).reshape(m.shape) for k, m in alive.items()}

    prune_in_rounds({"w": torch.zeros(10)}, 0.3, 3, score)
    assert [int(m["w"].sum()) for m in seen] == [10, 7, 4]  # 10 * 0.3 ** (k / 3), rounded
    assert all(bool((later["w"] <= earlier["w"]).all()) for earlier, later in zip(seen, seen[1:]))


def dead_ends(model: nn.Sequential, masks: dict[str, torch.Tensor]) -> int:
    """Kept entries of a hidden layer that no kept path reaches from the input or leads to the output."""
    keys = [t.key for t in collect_targets(model)]
    m = [masks[k] for k in keys]  # (out, in) per layer
    dead = 0
    for i, mask in enumerate(m):
        fed = torch.ones(mask.shape[1], dtype=torch.bool) if i == 0 else m[i - 1].any(dim=1)
        read = torch.ones(mask.shape[0], dtype=torch.bool) if i == len(m) - 1 else m[i + 1].any(dim=0)
        dead += int((mask & ~fed[None, :]).sum() + (mask & ~read[:, None]).sum())
    return dead


def test_rounds_keep_entries_on_input_output_paths_where_one_shot_scoring_does_not():
    model = mlp(bias=False)  # a bias would feed a unit that no kept weight reaches
    targets = collect_targets(model)
    density = 0.03
    count = round(density * sum(t.tensor().numel() for t in targets))

    def kept(**options: object) -> dict[str, torch.Tensor]:
        scores = get_scorer("trainability", steps=2, **options).score(model, targets, batches(), density=density)
        return global_topk(scores, count)

    # one-shot: most of the 15 kept entries lead nowhere; in rounds at most the last round's breaks
    assert dead_ends(model, kept(iterations=1, flow=False)) >= 10
    rounds = kept(iterations=8, flow=True)
    assert dead_ends(model, rounds) <= 2
    assert all(bool(rounds[t.key].any()) for t in targets)  # no layer emptied


def test_iterative_trainability_needs_the_final_density():
    model = mlp()
    with pytest.raises(Exception, match="needs the final density"):
        get_scorer("trainability", iterations=3).score(model, collect_targets(model), batches())


def test_min_kept_gives_a_layer_its_best_entries_inside_the_shared_budget():
    model = mlp()
    targets = collect_targets(model)
    scores = {t.key: torch.rand(t.tensor().shape) for t in targets}
    scores[targets[2].key] = scores[targets[2].key] * 1e-6  # the ranking would starve the head
    groups = [Group(t.layer, [t], t.tensor().numel(), 0.15, min_density=0.0, min_kept=30 if i == 2 else 0)
              for i, t in enumerate(targets)]
    budget = sum(g.budget for g in groups)
    starved = allocate(scores, [Group(g.layer, g.targets, g.dense_params, 0.15, min_density=0.0)
                                for g in groups])
    assert starved.kept[targets[2].key] < 30
    got = allocate(scores, groups)
    assert got.kept[targets[2].key] == 30 and got.total_kept == budget
    head = scores[targets[2].key].reshape(-1)
    kept = got.masks[targets[2].key].reshape(-1)
    assert float(head[kept].min()) >= float(head[~kept].max())  # its best-scored entries


def test_min_kept_and_min_rank_from_the_rules():
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    rules = {
        "version": 1,
        "defaults": {"scorer": "magnitude", "budget": {"sparsity": 0.999}},
        "rules": [
            {"name": "hidden", "match": {"name": "0"}, "action": "factorize",
             "factorize": {"format": "tt", "rank": "auto", "min_rank": 3}},
            {"name": "head", "match": {"name": "2"}, "action": "prune",
             "budget": {"sparsity": 0.999, "min_kept": 20}},
        ],
    }
    out = tedepr_fx.transform(model, rules, example_inputs=(torch.randn(2, 64),))
    rows = {r.name: r for r in tedepr_fx.report(out).rows}
    assert rows["0"].ranks is not None and min(rows["0"].ranks[1:-1]) == 3
    assert rows["2"].kept == 20


def test_min_rank_with_a_given_rank_is_a_located_error():
    rules = {"version": 1, "rules": [{"name": "r", "match": {"type": "Linear"}, "action": "factorize",
                                      "factorize": {"format": "tt", "rank": 4, "min_rank": 2}}]}
    with pytest.raises(RuleError, match="min_rank is a floor for rank: auto"):
        load_rules(rules)


def _head_floor_rules(floor: dict[str, object]) -> dict[str, object]:
    return {
        "version": 1,
        "defaults": {"scorer": "magnitude", "budget": {"sparsity": 0.99, "min_density": 0.0}},
        "rules": [
            {"name": "hidden", "match": {"name": "0"}, "action": "prune"},
            {"name": "head", "match": {"name": "2"}, "action": "prune", "floor": floor},
        ],
    }


@pytest.mark.parametrize("sparsity", [0.99, 0.995])
def test_a_rule_floor_stays_in_the_shared_budget_and_follows_with_budget(sparsity):
    # a rule's own budget would make a pool of its own that with_budget leaves at 0.99; a floor
    # keeps the head in the default pool: the total is the asked-for share, the head >= 25
    model = nn.Sequential(nn.Linear(200, 48), nn.ReLU(), nn.Linear(48, 10))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # the head's magnitudes lose every global comparison
    rules = load_rules(_head_floor_rules({"min_kept": 25})).with_budget(sparsity=sparsity)
    out = tedepr_fx.transform(model, rules, example_inputs=(torch.randn(2, 200),))
    rows = {r.name: r for r in tedepr_fx.report(out).rows}
    dense = 200 * 48 + 48 * 10
    assert rows["0"].kept + rows["2"].kept == round((1 - sparsity) * dense)
    assert rows["2"].kept == 25
    unfloored = tedepr_fx.transform(model, load_rules(_head_floor_rules({"min_kept": 0})).with_budget(
        sparsity=sparsity), example_inputs=(torch.randn(2, 200),))
    assert {r.name: r for r in tedepr_fx.report(unfloored).rows}["2"].kept < 25  # the floor did it


def test_a_rule_floor_min_density_replaces_the_budgets():
    model = nn.Sequential(nn.Linear(200, 48), nn.ReLU(), nn.Linear(48, 10))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
    out = tedepr_fx.transform(model, _head_floor_rules({"min_density": 0.005}),
                              example_inputs=(torch.randn(2, 200),))
    assert {r.name: r for r in tedepr_fx.report(out).rows}["2"].kept == 3  # ceil(0.005 * 480)


@pytest.mark.parametrize(("change", "message", "at"), [
    (lambda r: r["rules"][1].update(action="keep"), "needs a rule that prunes", "rules[1].floor"),
    (lambda r: r["defaults"].pop("budget"), "no budget", "rules[1].floor"),
    (lambda r: r["rules"][1].update(floor={"min_density": 0.2}), "larger than its budget's density",
     "rules[1].floor.min_density"),
    (lambda r: r["rules"][1].update(floor={"min_kept": -1}), "must be at least 0",
     "rules[1].floor.min_kept"),
])
def test_a_bad_floor_is_a_located_rule_error(change, message, at):
    rules = _head_floor_rules({"min_kept": 5})
    change(rules)
    with pytest.raises(RuleError, match=message) as caught:
        load_rules(rules)
    assert at in str(caught.value)
