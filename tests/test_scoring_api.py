"""The scorer interface: registry, errors, no side effects, determinism, output hooks."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from tedepr_fx.errors import DataError
from tedepr_fx.layers.masked import MaskedConv2d, MaskedLinear
from tedepr_fx.rules import load_rules
from tedepr_fx.rules.scoring import GraspOptions, ScorerOptions, TrainabilityOptions
from tedepr_fx.scoring import SCORERS, collect_targets, get_scorer, scorer_from_rules

ALL = sorted(SCORERS)
FEW_ROUNDS = {"synflow": {"iterations": 3}, "force": {"iterations": 3}}  # each scorer's own options


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        MaskedConv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
        nn.Flatten(), MaskedLinear(4 * 6 * 6, 3),
    )


def batches(n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 1, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g))
            for _ in range(n)]


def test_registry_names_and_unknown():
    assert set(SCORERS) == {"trainability", "snip", "grasp", "synflow", "force", "magnitude", "random"}
    with pytest.raises(ValueError, match="valid scorers: .*snip"):
        get_scorer("snipp")
    with pytest.raises(ValueError, match="unknown options \\['lr'\\]"):
        get_scorer("snip", lr=0.1)
    with pytest.raises(ValueError, match="steps"):
        get_scorer("trainability", steps=0)


def test_each_scorer_takes_only_its_own_options():
    assert get_scorer("trainability", steps=2, first_order=True).options.steps == 2
    assert get_scorer("grasp", temperature=50.0).options.temperature == 50.0
    assert get_scorer("force").options.iterations == 10 and get_scorer("synflow").options.iterations == 100
    with pytest.raises(ValueError, match="unknown options \\['steps'\\]; 'steps' is an option of trainability"):
        get_scorer("snip", steps=3)
    with pytest.raises(ValueError, match="'iterations' is an option of trainability, synflow, force"):
        get_scorer("grasp", iterations=3)
    with pytest.raises(TypeError, match="takes TrainabilityOptions; got GraspOptions"):
        SCORERS["trainability"](GraspOptions())


def test_scorer_from_rules_passes_each_scorer_its_section():
    rules = load_rules({"version": 1, "rules": [{"name": "r", "match": {"type": "Linear"}, "action": "keep"}],
                        "scoring": {"trainability": {"steps": 5, "checkpoint": False},
                                    "force": {"iterations": 4}}})
    trainability = scorer_from_rules("trainability", rules.scoring, density=None, seed=3)
    assert trainability.options == TrainabilityOptions(steps=5, checkpoint=False)
    assert trainability.seed == 3 and not trainability.verbose
    assert scorer_from_rules("force", rules.scoring, density=0.1).options.iterations == 4
    assert scorer_from_rules("snip", rules.scoring, density=0.1).options == ScorerOptions()


def test_collect_targets_filters_and_names_unknown_layers():
    model = conv_net()
    assert [t.key for t in collect_targets(model)] == ["0.weight", "5.weight"]
    assert [t.key for t in collect_targets(model, layers=["5"])] == ["5.weight"]
    with pytest.raises(ValueError, match="'7'"):
        collect_targets(model, layers=["7"])


@pytest.mark.parametrize("name", ["trainability", "snip", "grasp", "force"])
def test_data_scorer_without_data_names_scorer_and_rule(name):
    model = conv_net()
    with pytest.raises(DataError, match=f"rule 'attention': scorer '{name}' needs data"):
        get_scorer(name, density=0.5).score(model, collect_targets(model), [], context="rule 'attention'")


def test_iterative_scorers_need_density_and_synflow_needs_inputs():
    model = conv_net()
    with pytest.raises(DataError, match="density"):
        get_scorer("force").score(model, collect_targets(model), batches())
    with pytest.raises(DataError, match="example_inputs"):
        get_scorer("synflow", density=0.5).score(model, collect_targets(model), [])


@pytest.mark.parametrize("name", ALL)
def test_scoring_leaves_model_untouched(name):
    model = conv_net()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    model[5].set_mask("weight", torch.rand(3, 144) > 0.5)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = get_scorer(name, density=0.3, **FEW_ROUNDS.get(name, {})).score(
        model, collect_targets(model), batches(), example_inputs=torch.randn(1, 1, 6, 6))
    assert {k: tuple(v.shape) for k, v in scores.items()} == {"0.weight": (4, 1, 3, 3),
                                                              "5.weight": (3, 144)}
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[5].weight.grad is None
    assert not model.training and not model[1].training


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_scores_despite_dropout(name):
    opts = dict(density=0.3, seed=7, **FEW_ROUNDS.get(name, {}))
    model = conv_net()
    a = get_scorer(name, **opts).score(model, collect_targets(model), batches(),
                                       example_inputs=torch.randn(1, 1, 6, 6))
    torch.manual_seed(123)  # the global RNG state must not matter
    b = get_scorer(name, **opts).score(model, collect_targets(model), batches(),
                                       example_inputs=torch.randn(1, 1, 6, 6))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_scores_name_the_layer():
    model = conv_net()
    bad = batches()
    bad[0] = (torch.full_like(bad[0][0], float("nan")), bad[0][1])
    with pytest.raises(DataError, match="layer '0' tensor 'weight'"):
        get_scorer("snip").score(model, collect_targets(model), bad)


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = MaskedLinear(4, 3)

    def forward(self, x):
        return {"logits": self.fc(x), "hidden": x}


def test_dict_logits_output_and_custom_output_fn_agree():
    model = TupleOut()
    data = [(torch.randn(5, 4), torch.randint(0, 3, (5,)))]
    targets = collect_targets(model)
    auto = get_scorer("snip").score(model, targets, data)
    custom = get_scorer("snip").score(model, targets, data, output_fn=lambda out: out["logits"])
    torch.testing.assert_close(auto["fc.weight"], custom["fc.weight"])
    # a different hook changes the scores: the hook is really used
    other = get_scorer("snip").score(model, targets, data, output_fn=lambda out: 2 * out["logits"])
    assert not torch.allclose(auto["fc.weight"], other["fc.weight"])


def test_progress_bar_silent_off_terminal_and_on_when_verbose_on_tty(monkeypatch):
    scorer = get_scorer("snip")
    with scorer._progress(3, "x") as bar:
        assert bar.disable
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    with scorer._progress(3, "x") as bar:
        assert not bar.disable and bar.delay == 1.0  # appears only after a second
    with get_scorer("snip", verbose=False)._progress(3, "x") as bar:
        assert bar.disable
