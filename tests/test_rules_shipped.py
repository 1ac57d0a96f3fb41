"""The shipped policy files in rules/: valid, round-trip, and fit for the model zoo."""

from __future__ import annotations

from pathlib import Path

import pytest

from tedepr_fx.cli import main
from tedepr_fx.rules import RuleSet, load_rules

RULES = Path(__file__).resolve().parent.parent / "rules"
SHIPPED = sorted(RULES.glob("*.yaml"))


def test_the_five_policies_are_shipped():
    assert {p.stem for p in SHIPPED} >= {"lenet", "vgg", "resnet", "transformer", "lstm"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_passes_check(path, capsys):
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out == f"OK {path}\n"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_round_trips(path):
    rules = load_rules(path)
    again = load_rules(rules.to_yaml())
    assert again == rules
    assert again.to_yaml() == rules.to_yaml()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_is_commented_and_points_at_the_schema(path):
    text = path.read_text()
    comments = [line for line in text.splitlines() if line.lstrip().startswith("#") or " # " in line]
    assert len(comments) >= 8
    assert text.startswith("# yaml-language-server: $schema=../docs/rules.schema.json")


def test_lenet_policy_and_the_demo_override():
    rules = load_rules(RULES / "lenet.yaml")
    assert rules.defaults.budget.sparsity == 0.99
    assert rules.defaults.scorer == "trainability"
    tt_rules = [r for r in rules.rules if r.action == "factorize"]
    assert [(r.match.name, r.factorize.format, r.factorize.modes) for r in tt_rules] == [
        ("fc1", "tt", "auto"), ("fc2", "tt", "auto"), ("fc3", "tt", "auto")]
    assert all(r.factorize.rank == "auto" for r in tt_rules)
    demo = rules.with_budget(sparsity=0.998)
    assert demo.defaults.budget.target_density == pytest.approx(0.002)
    assert demo.rules == rules.rules


# --- the zoo: which rule decides for each layer ------------------------------------------------------

torch = pytest.importorskip("torch")


def _decisions(model, rules: RuleSet) -> dict[str, str | None]:
    """Rule name per weight-bearing layer, found with the same names the match pass uses."""
    from tedepr_fx.handlers import kind_of, type_names

    out = {}
    for name, module in model.named_modules():
        kind = kind_of(module)
        if kind is not None:
            rule = rules.first_match(name, type_names(module, kind), kind.dense_params(module))
            out[name] = rule.name if rule is not None else None
    return out


def test_lenet_decisions():
    from tedepr_fx.models import LeNet5, LeNet300100

    rules = load_rules(RULES / "lenet.yaml")
    expected = {"fc1": "fc1-tt", "fc2": "fc2-tt", "fc3": "fc3-tt"}
    assert _decisions(LeNet300100(), rules) == expected
    assert _decisions(LeNet300100(in_features=64), rules) == expected
    assert _decisions(LeNet5(), rules) == {**expected, "conv1": None, "conv2": None}  # lenet5.yaml's
    lenet5 = load_rules(RULES / "lenet5.yaml")
    assert _decisions(LeNet5(), lenet5) == {**expected, "conv1": "small-layers", "conv2": "conv2-tucker"}
    assert lenet5.scoring.rescale == "dense" and rules.scoring.rescale == "none"


def test_vgg_and_resnet_decisions():
    from tedepr_fx.models import VGG11, ResNet20

    vgg = _decisions(VGG11(), load_rules(RULES / "vgg.yaml"))
    wide = {name for name, m in VGG11().named_modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 150_000}
    assert len(wide) == 6 and {vgg.pop(name) for name in wide} == {"wide-convs-tucker"}
    assert vgg.pop("features.0") == "other-layers" and vgg.pop("classifier") == "other-layers"
    assert vgg and set(vgg.values()) == {"other-layers"}
    resnet = _decisions(ResNet20(), load_rules(RULES / "resnet.yaml"))
    assert resnet.pop("conv1") == "stem" and resnet.pop("fc") == "classifier"
    shortcuts = {k: resnet.pop(k) for k in list(resnet) if ".shortcut." in k}
    assert len(shortcuts) == 2 and set(shortcuts.values()) == {"shortcuts"}
    assert len(resnet) == 18 and set(resnet.values()) == {"block-convs"}


def test_lstm_and_transformer_decisions():
    from tedepr_fx.models import LSTMClassifier

    assert _decisions(LSTMClassifier(), load_rules(RULES / "lstm.yaml")) == {
        "lstm": "lstm-tt", "fc": "classifier"}
    rules = load_rules(RULES / "transformer.yaml")
    linear = {"Linear", "torch.nn.modules.linear.Linear"}

    def rule_for(name: str) -> str:
        return rules.first_match(name, linear, 4096).name

    # names after the attention split (torch) and Hugging Face BERT names
    for name in ("encoder.layers.3.self_attn.q_proj", "encoder.layers.0.self_attn.out_proj",
                 "bert.encoder.layer.11.attention.self.key", "bert.encoder.layer.0.attention.output.dense"):
        assert rule_for(name) == "attention", name
    for name in ("encoder.layers.1.linear1", "encoder.layers.1.linear2",
                 "bert.encoder.layer.2.intermediate.dense", "bert.encoder.layer.2.output.dense"):
        assert rule_for(name) == "mlp", name
    for name in ("head", "classifier", "bert.pooler.dense"):
        assert rule_for(name) == "edges", name


def test_vit_decisions_and_floors():
    rules = load_rules(RULES / "vit.yaml")
    linear = {"Linear", "torch.nn.modules.linear.Linear"}
    conv = {"Conv2d", "torch.nn.modules.conv.Conv2d"}
    expected = {"encoder.layers.0.self_attn.q_proj": "attention-qk", "encoder.layers.1.self_attn.k_proj": "attention-qk",
                "encoder.layers.0.self_attn.v_proj": "attention-vo", "encoder.layers.1.self_attn.out_proj": "attention-vo",
                "encoder.layers.0.linear1": "mlp", "encoder.layers.1.linear2": "mlp", "head": "head"}
    assert {name: rules.first_match(name, linear, 4096).name for name in expected} == expected
    assert rules.first_match("patch_embed", conv, 1024).name == "patch-embed"
    floors = {r.name: r.floor.min_kept for r in rules.rules if r.floor is not None}
    assert floors == {"attention-vo": 8, "head": 20, "patch-embed": 16}
    assert load_rules(RULES / "resnet.yaml").rules[-1].floor.min_kept == 30


@pytest.mark.parametrize("stem, factories", [
    ("lenet", ["LeNet300100", "LeNet5"]), ("vgg", ["VGG11"]), ("resnet", ["ResNet20"]),
    ("lstm", ["LSTMClassifier"]), ("transformer", ["ViT", "TinyTransformer"]), ("vit", ["ViT"]),
])
def test_shipped_file_plans_on_the_zoo_with_every_rule_used(stem, factories):
    import tedepr_fx
    from tedepr_fx import models

    rules = load_rules(RULES / f"{stem}.yaml")
    sparsities = [None, 0.998] if stem == "lenet" else [None]
    for factory in factories:
        model = getattr(models, factory)()
        for sparsity in sparsities:
            chosen = rules if sparsity is None else rules.with_budget(sparsity=sparsity)
            # strict: a rule that matches no layer of the model is an error
            tedepr_fx.plan(model, chosen, example_inputs=(model.example_input(2),), strict=True)
