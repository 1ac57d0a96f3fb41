"""transform / plan / report end to end on small models (rules given as dicts)."""

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tedepr_fx
from tedepr_fx.errors import CaptureError, LayerError, RuleError


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 30), nn.ReLU(),
                         nn.Linear(30, 10))


def rules(*entries, budget=None, **defaults):
    doc = {"version": 1, "rules": list(entries)}
    if budget is not None:
        defaults["budget"] = budget
    if defaults:
        doc["defaults"] = defaults
    return doc


def factorize_rule(rule_name, fmt="tt", rank="full", **match):
    return {"name": rule_name, "match": match or {"type": "Linear"}, "action": "factorize",
            "factorize": {"format": fmt, "rank": rank}}


X = torch.randn(4, 64)


@pytest.mark.parametrize("fmt", ["tt", "tucker"])
def test_full_rank_decompose_reproduces_the_model(fmt):
    model = mlp()
    out = tedepr_fx.transform(model, rules(factorize_rule("all", fmt), init="decompose"),
                              example_inputs=(X,))
    torch.testing.assert_close(out(X), model(X), rtol=1e-4, atol=1e-5)
    assert [r.new_type for r in tedepr_fx.report(out).rows] == [
        "TTLinear" if fmt == "tt" else "TuckerLinear"] * 3


def test_model_is_not_mutated_and_result_is_deterministic():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = rules(factorize_rule("all", "tt", 4), budget={"sparsity": 0.9}, scorer="magnitude")
    a = tedepr_fx.transform(model, spec, example_inputs=(X,), seed=3)
    b = tedepr_fx.transform(model, spec, example_inputs=(X,), seed=3)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_inplace_is_gone_and_the_given_model_is_never_rewritten():
    # inplace=True used to leave a traced model half rewritten (issue 9): it was removed
    model = mlp()
    with pytest.raises(TypeError, match="inplace"):
        tedepr_fx.transform(model, rules(factorize_rule("all", "tucker", 4)), example_inputs=(X,),
                            inplace=True)
    out = tedepr_fx.transform(model, rules(factorize_rule("all", "tucker", 4)), example_inputs=(X,))
    assert type(model[1]) is nn.Linear and type(out.get_submodule("1")).__name__ == "TuckerLinear"


def test_first_matching_rule_wins_and_unmatched_layers_are_listed():
    spec = rules(
        {"name": "keep-head", "match": {"name": "5"}, "action": "keep"},
        factorize_rule("hidden", "tt", 2, type="Linear", name="[13]"),
    )
    plan = tedepr_fx.plan(mlp(), spec, example_inputs=(X,))
    assert [(r.name, r.rule, r.action) for r in plan.rows] == [
        ("1", "hidden", "factorize"), ("3", "hidden", "factorize"), ("5", "keep-head", "keep")]
    assert plan.unmatched == []


def test_rule_matching_nothing_warns_and_strict_raises():
    spec = rules(factorize_rule("all", "tt", 2), factorize_rule("ghost", name="nope.*"))
    with pytest.warns(UserWarning, match="ghost"):
        tedepr_fx.transform(mlp(), spec, example_inputs=(X,))
    with pytest.raises(RuleError, match="ghost"):
        tedepr_fx.transform(mlp(), spec, example_inputs=(X,), strict=True)


def test_plan_allocates_nothing_and_counts_flops():
    model = mlp()
    spec = rules(factorize_rule("all", "tt", 2), budget={"sparsity": 0.95}, scorer="magnitude")
    plan = tedepr_fx.plan(model, spec, example_inputs=(X,))
    first = plan.rows[0]
    assert first.dense == 64 * 48 and first.flops_before == 2 * 4 * 64 * 48
    assert 0 < first.stored < first.dense
    assert first.flops_after is not None and first.flops_after > 0
    # the budget: 5 % of the dense weights, capped by what the factors store
    assert first.kept == min(first.stored, round(0.05 * first.dense))
    text = str(plan)
    assert text == str(tedepr_fx.plan(model, spec, example_inputs=(X,)))  # deterministic
    assert "| layer | rule |" in plan.to_markdown()
    assert '"rows"' in plan.to_json()


def test_format_not_supported_for_the_layer_kind_names_the_layer():
    class WithLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 16, batch_first=True)

        def forward(self, x):
            return self.lstm(x)[0]

    spec = rules({"name": "rnn", "match": {"type": "LSTM"}, "action": "factorize",
                  "factorize": {"format": "tucker", "rank": 2}})
    with pytest.raises(LayerError, match=r"layer 'lstm' \(rule 'rnn'\).*'tucker' is not supported"):
        tedepr_fx.transform(WithLSTM(), spec, example_inputs=(torch.randn(2, 3, 8),))


def test_modes_that_do_not_multiply_to_the_features_name_the_layer():
    spec = rules({"name": "bad", "match": {"name": "1"}, "action": "factorize",
                  "factorize": {"format": "tt", "rank": 2, "modes": {"in": [4, 4, 2], "out": [4, 4, 3]}}})
    with pytest.raises(LayerError, match=r"layer '1' \(rule 'bad'\)"):
        tedepr_fx.transform(mlp(), spec, example_inputs=(X,))


def test_rank_too_large_names_the_layer():
    spec = rules({"name": "big", "match": {"name": "5"}, "action": "factorize",
                  "factorize": {"format": "tucker", "rank": 500}})
    with pytest.raises(LayerError, match=r"layer '5' \(rule 'big'\)"):
        tedepr_fx.transform(mlp(), spec, example_inputs=(X,))


def test_wrong_example_inputs_are_a_capture_error():
    with pytest.raises(CaptureError, match="do not fit the model"):
        tedepr_fx.transform(mlp(), rules(factorize_rule("all")), example_inputs=(torch.randn(4, 63),))


def test_pruned_model_keeps_exactly_the_budget_and_masks_survive_training():
    model = mlp()
    spec = rules(factorize_rule("all", "tt", 4), budget={"sparsity": 0.97, "allocation": "global"},
                 scorer="magnitude")
    out = tedepr_fx.transform(model, spec, example_inputs=(X,))
    report = tedepr_fx.report(out)
    dense = sum(r.dense for r in report.rows)
    stored = sum(r.stored for r in report.rows)
    assert report.totals["kept"] == min(stored, round(0.03 * dense))
    opt = torch.optim.SGD(out.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(out(X), torch.randint(0, 10, (4,))).backward()
        opt.step()
    assert tedepr_fx.report(out).totals["kept"] == report.totals["kept"]


def test_copy_save_load_and_state_dict_round_trip(tmp_path):
    out = tedepr_fx.transform(mlp(), rules(factorize_rule("all", "tt", 3)), example_inputs=(X,))
    expected = out(X)
    torch.testing.assert_close(copy.deepcopy(out)(X), expected)
    tedepr_fx.save(out, tmp_path / "m.tedepr")
    loaded = tedepr_fx.load(tmp_path / "m.tedepr", model=mlp())
    torch.testing.assert_close(loaded(X), expected)
    assert tedepr_fx.report(loaded).to_json() == tedepr_fx.report(out).to_json()
    buffer = io.BytesIO()
    torch.save(out.state_dict(), buffer)
    buffer.seek(0)
    fresh = tedepr_fx.transform(mlp(), rules(factorize_rule("all", "tt", 3)), example_inputs=(X,), seed=9)
    fresh.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(fresh(X), expected)


def test_functional_linear_is_rewritten():
    class FunctionalNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(32, 64) / 8)
            self.b1 = nn.Parameter(torch.zeros(32))
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            return self.head(F.relu(F.linear(x, self.w1, self.b1)))

    model = FunctionalNet()
    spec = rules(factorize_rule("fn", "tucker", "full", type="F.linear"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = tedepr_fx.transform(model, spec, example_inputs=(X,), init="decompose")
    rows = tedepr_fx.report(out).rows
    assert [(r.name, r.old_type, r.new_type) for r in rows] == [("w1", "F.linear", "TuckerLinear")]
    assert not hasattr(out, "w1")
    torch.testing.assert_close(out(X), model(X), rtol=1e-4, atol=1e-5)


def test_multihead_attention_projections_factorize_exactly_at_full_rank():
    torch.manual_seed(0)
    model = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0), 2,
        enable_nested_tensor=False).eval()
    x = torch.randn(2, 5, 16)
    spec = rules(factorize_rule("qkv", "tucker", "full", name="*.self_attn.[qkv]_proj"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = tedepr_fx.transform(model, spec, example_inputs=(x,), init="decompose")
    rows = tedepr_fx.report(out).rows
    assert len(rows) == 6 and {r.new_type for r in rows} == {"TuckerLinear"}
    torch.testing.assert_close(out(x), model(x), rtol=1e-4, atol=1e-5)
