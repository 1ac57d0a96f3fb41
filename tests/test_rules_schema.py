"""The pydantic models of the rule language: meanings, strictness, helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tedepr_fx import RuleError
from tedepr_fx.names import FORMAT_NAMES
from tedepr_fx.rules import Budget, Defaults, Match, Rule, RuleSet, load_rules

LINEAR = {"Linear", "torch.nn.modules.linear.Linear"}
CONV = {"Conv2d", "torch.nn.modules.conv.Conv2d"}


def ruleset(*rules: dict, **top) -> RuleSet:
    return load_rules({"version": 1, "rules": list(rules), **top})


def rule(rule_name: str = "r", **match) -> dict:
    return {"name": rule_name, "match": match or {"type": "Linear"}, "action": "keep"}


def tt(rank) -> dict:
    return {"name": "r", "match": {"type": "Linear"}, "action": "factorize",
            "factorize": {"format": "tt", "rank": rank}}


def test_int_and_float_ranks_stay_distinct():
    assert type(ruleset(tt(1)).rules[0].factorize.rank) is int
    assert type(ruleset(tt(1.0)).rules[0].factorize.rank) is float
    assert ruleset(tt([2, 3])).rules[0].factorize.rank == [2, 3]
    assert ruleset(tt("full")).rules[0].factorize.rank == "full"


@pytest.mark.parametrize("bad", [True, 0, -3, 1.5, 0.0, [], [2, 0], [2, True], "half", None])
def test_bad_ranks_are_refused_with_the_shared_message(bad):
    with pytest.raises(RuleError) as info:
        ruleset(tt(bad))
    (error,) = info.value.errors
    assert error.path == "rules[0].factorize.rank"
    assert error.message.startswith("must be a positive int, a list of positive ints, a float in (0, 1]")
    assert error.message.endswith(f"got {bad!r}")


@pytest.mark.parametrize("version", [True, 1.0, "1", 2])
def test_version_is_the_int_one(version):
    with pytest.raises(RuleError) as info:
        load_rules({"version": version, "rules": [rule()]})
    assert [e.path for e in info.value.errors] == ["version"]


def test_bool_is_never_a_number():
    with pytest.raises(RuleError) as info:
        ruleset(rule(), defaults={"budget": {"sparsity": True}}, scoring={"batches": True})
    assert {e.path for e in info.value.errors} == {"defaults.budget.sparsity", "scoring.batches"}


def test_rule_names_are_unique_whatever_builds_the_rule_set():
    with pytest.raises(ValidationError) as info:
        RuleSet(version=1, rules=[Rule.model_validate(rule("a")), Rule.model_validate(rule("a"))])
    (error,) = info.value.errors()
    assert (error["type"], error["loc"]) == ("duplicate_rule_name", ("rules", 1, "name"))
    assert error["msg"] == "duplicate rule name 'a' (first used by rules[0])"


def test_budget_needs_exactly_one_share_and_gives_the_target_density():
    assert Budget(sparsity=0.99).target_density == pytest.approx(1 - 0.99)
    assert Budget(density=0.05).target_density == 0.05
    for kwargs in ({}, {"sparsity": 0.9, "density": 0.1}):
        with pytest.raises(ValidationError, match="exactly one of 'sparsity' and 'density'"):
            Budget(**kwargs)
    for kwargs in ({"sparsity": 1.0}, {"sparsity": -0.1}, {"density": 0.0}, {"density": 1.5},
                   {"sparsity": 0.5, "min_density": 2.0}):
        with pytest.raises(ValidationError):
            Budget(**kwargs)


def test_match_selectors_all_must_hold():
    m = Match(type="Linear", name="encoder.*.q_proj", min_params=100, max_params=1000)
    assert m.accepts("encoder.0.q_proj", LINEAR, 500)
    assert not m.accepts("encoder.0.q_proj", CONV, 500)  # wrong type
    assert not m.accepts("decoder.0.q_proj", LINEAR, 500)  # wrong name
    assert not m.accepts("encoder.0.q_proj", LINEAR, 99)  # too small
    assert not m.accepts("encoder.0.q_proj", LINEAR, 1001)  # too big
    assert not Match(name="Encoder.*").accepts("encoder.0", LINEAR, 1)  # globs are case-sensitive


def test_match_type_list_dotted_path_and_regex_fullmatch():
    m = Match(type=["Conv2d", "torch.nn.modules.linear.Linear"])
    assert m.accepts("x", LINEAR, 1) and m.accepts("x", CONV, 1)
    assert not m.accepts("x", {"LSTM"}, 1)
    r = Match(regex=r"layer\d+\.\d+\.conv[12]")
    assert r.accepts("layer1.0.conv2", CONV, 1)
    assert not r.accepts("layer1.0.conv2.extra", CONV, 1)  # fullmatch, not search
    assert not r.accepts("xlayer1.0.conv1", CONV, 1)


def test_match_needs_a_selector_and_consistent_bounds():
    for kwargs in ({}, {"name": "a", "regex": "a"}, {"min_params": 10, "max_params": 5}, {"type": []}):
        with pytest.raises(ValidationError):
            Match(**kwargs)


def test_first_match_is_in_file_order():
    rs = ruleset(rule("first", name="fc1"), rule("second", type="Linear"))
    assert rs.first_match("fc1", LINEAR, 10).name == "first"
    assert rs.first_match("fc2", LINEAR, 10).name == "second"
    assert rs.first_match("conv", CONV, 10) is None


def test_effective_settings_fall_back_to_defaults():
    defaults = Defaults(init="decompose", scorer="snip", budget=Budget(sparsity=0.9))
    plain = Rule.model_validate(rule())
    assert plain.effective_init(defaults) == "decompose"
    assert plain.effective_scorer(defaults) == "snip"
    assert plain.effective_budget(defaults) == Budget(sparsity=0.9)
    own = Rule.model_validate({**rule(), "init": "scratch", "scorer": "grasp", "budget": {"density": 0.2}})
    assert own.effective_init(defaults) == "scratch"
    assert own.effective_scorer(defaults) == "grasp"
    assert own.effective_budget(defaults).target_density == 0.2
    assert plain.effective_budget(Defaults()) is None


def test_factorize_section_iff_action_factorize():
    with pytest.raises(RuleError, match="factorize.*required"):
        ruleset({"name": "r", "match": {"type": "Linear"}, "action": "factorize"})
    with pytest.raises(RuleError, match="only allowed with action: factorize"):
        ruleset({**rule(), "action": "prune", "factorize": {"format": "tucker", "rank": 2}})


def test_tt_modes_alias_and_lengths():
    rs = ruleset({**tt(2), "factorize": {"format": "tt", "rank": 2, "modes": {"in": [4, 4], "out": [2, 5]}}})
    assert rs.rules[0].factorize.modes.in_ == [4, 4]
    with pytest.raises(RuleError, match="same number of modes"):
        ruleset({**tt(2), "factorize": {"format": "tt", "rank": 2, "modes": {"in": [4, 4], "out": [2, 5, 1]}}})
    with pytest.raises(RuleError, match="unknown key 'modes'"):  # tucker has no modes
        ruleset({**tt(2), "factorize": {"format": "tucker", "rank": 2, "modes": "auto"}})


def test_with_budget_replaces_the_share_and_keeps_the_rest():
    rs = ruleset(rule(), defaults={"budget": {"density": 0.5, "allocation": "erk", "min_density": 0.001}})
    changed = rs.with_budget(sparsity=0.998)
    assert changed.defaults.budget == Budget(sparsity=0.998, allocation="erk", min_density=0.001)
    assert rs.defaults.budget.density == 0.5  # the original is untouched
    assert ruleset(rule()).with_budget(sparsity=0.9).defaults.budget == Budget(sparsity=0.9)
    with pytest.raises(RuleError, match="sparsity"):
        rs.with_budget(sparsity=1.0)


def test_equality_ignores_the_source_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nrules: [{name: r, match: {type: Linear}, action: keep}]\n")
    from_file = load_rules(path)
    assert from_file.source == str(path)
    assert from_file == ruleset(rule())
    assert from_file != ruleset(rule("other"))


def test_json_schema_is_generated_and_closed():
    schema = RuleSet.model_json_schema()
    assert schema["required"] == ["version", "rules"]
    assert schema["additionalProperties"] is False
    factorize = schema["$defs"]["Rule"]["properties"]["factorize"]["anyOf"][0]
    assert set(factorize["discriminator"]["mapping"]) == set(FORMAT_NAMES)  # every registered format
    assert "modes" in schema["$defs"]["TRFactorization"]["properties"]
    assert "modes" not in schema["$defs"]["TuckerFactorization"]["properties"]
    assert "in" in schema["$defs"]["TTModes"]["properties"]


def test_json_schema_accepts_the_shipped_files_and_flags_mistakes():
    # what an editor's YAML language server does with the schema, done by an independent validator
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    validator = jsonschema.Draft202012Validator(RuleSet.model_json_schema())
    shipped = sorted((Path(__file__).resolve().parent.parent / "rules").glob("*.yaml"))
    assert shipped
    for path in shipped:
        assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == [], path.name
    good = {"version": 1, "rules": [tt(8)]}
    assert validator.is_valid(good)
    for bad in ({**good, "extra": 1}, {"version": 2, "rules": good["rules"]}, {"version": 1, "rules": []},
                {"version": 1, "rules": [tt(-3)]}, {"version": 1, "rules": [tt(1.5)]},
                {"version": 1, "rules": [{**tt(8), "factorize": {"format": "cp", "rank": 2}}]}):
        assert not validator.is_valid(bad), bad
