"""Loading rule files: located errors, extends, inputs of every kind, bombs, fuzzing."""

from __future__ import annotations

import time
from pathlib import Path
from textwrap import dedent

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tedepr_fx import RuleError, policies
from tedepr_fx.names import FORMAT_NAMES
from tedepr_fx.rules import MAX_DEPTH, MAX_NODES, RuleSet, load_rules, parse_rules
from tedepr_fx.rules.limits import MAX_CHARS

GOOD = dedent("""\
    version: 1
    rules:
      - name: fc
        match: {type: Linear}
        action: keep
""")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text))
    return path


def at(text: str, line: int, token: str) -> str:
    """``"line:col"`` of the last ``token`` on 1-based ``line`` of ``text``, counted independently."""
    return f"{line}:{text.splitlines()[line - 1].rindex(token) + 1}"


def errors_of(rules) -> list[tuple[str, str, str]]:
    """``(line:col, key path, message)`` of every error ``load_rules`` reports."""
    with pytest.raises(RuleError) as info:
        load_rules(rules)
    return [(f"{e.location.line}:{e.location.column}", e.path, e.message) for e in info.value.errors]


def test_error_names_file_line_column_and_key(tmp_path):
    path = write(tmp_path, "bad.yaml", """\
        version: 1
        rules:
          - name: a
            match: {type: Linear}
            action: keep
          - name: b
            match: {type: Linear}
            action: factorize
            factorize: {format: tt, rank: -3}
    """)
    with pytest.raises(RuleError) as info:
        load_rules(path)
    (error,) = info.value.errors
    assert str(error) == (f"{path}:{at(path.read_text(), 9, '-3')}: rules[1].factorize.rank: must be a positive int, a list of "
                          "positive ints, a float in (0, 1], 'full' or 'auto'; got -3")


def test_all_errors_of_a_file_are_reported_at_once():
    text = dedent("""\
        version: 1
        defaults:
          scorer: snipp
          budget: {sparsity: 0.99}
          budget: {sparsity: 0.9}
        rules:
          - name: a
            match: {type: Linear, nmae: fc1}
            action: factorize
            factorize: {format: tt, rank: 8, modes: {in: [4, x], out: [2, 2]}}
          - name: b
            match: {regex: "fc(("}
            action: prune
          - name: a
            match: {name: fc, regex: fc}
            action: keep
          - name: c
            match: {type: Linear}
            action: factorize
            factorize: {format: cp, rank: 2}
          - name: d
            match: {type: Linear}
            action: factorize
            factorize: {rank: 2}
    """)
    found = errors_of(text)
    assert [(where, path) for where, path, _ in found] == [
        (at(text, 3, "snipp"), "defaults.scorer"),
        (at(text, 5, "budget"), "defaults.budget"),
        (at(text, 8, "nmae"), "rules[0].match.nmae"),
        (at(text, 10, "x]"), "rules[0].factorize.modes.in[1]"),
        (at(text, 12, '"fc(("'), "rules[1].match.regex"),
        (at(text, 14, "a"), "rules[2].name"),
        (at(text, 15, "regex"), "rules[2].match.regex"),
        (at(text, 20, "cp"), "rules[3].factorize.format"),
        (at(text, 24, "{rank"), "rules[4].factorize"),
    ]
    messages = [m for _, _, m in found]
    assert messages[0].startswith("must be 'trainability', 'snip'") and messages[0].endswith("got 'snipp'")
    assert messages[1].startswith("duplicate key 'budget' (first at line 4, column 3)")
    assert messages[2] == "unknown key 'nmae' (did you mean 'name'?)"
    assert messages[3] == "must be an int; got 'x'"
    assert messages[4].startswith("is not a valid regular expression")
    assert messages[5] == f"duplicate rule name 'a' (first used by rules[0] at <string>:{at(text, 7, 'a')})"
    assert messages[6] == "give either 'name' or 'regex', not both"
    formats = ", ".join(map(repr, FORMAT_NAMES))  # the format registry, e.g. 'tt', 'tucker', 'tr'
    assert messages[7] == f"must be one of {formats}; got 'cp'"
    assert messages[8] == f"missing key 'format': one of {formats}"


def test_missing_keys_point_at_the_mapping_that_lacks_them():
    found = errors_of("version: 1\nrules:\n  - name: a\n    match: {type: Linear}\n")
    assert found == [("3:5", "rules[0]", "missing required key 'action'")]
    assert errors_of("rules: []\n") == [
        ("1:1", "", "missing required key 'version'"),
        ("1:8", "rules", "must have at least 1 item; got []"),
    ]


def test_int_one_and_float_one_are_different_ranks():
    text = GOOD.replace("action: keep", "action: factorize\n    factorize: {format: tucker, rank: %s}")
    assert type(load_rules(text % "1").rules[0].factorize.rank) is int
    assert type(load_rules(text % "1.0").rules[0].factorize.rank) is float
    assert errors_of(text % "2.0")[0][2].endswith("got 2.0")


def test_yaml_syntax_error_is_located():
    assert errors_of("version: 1\nrules: [\n  {name: a\n") == [
        ("4:1", "", "invalid YAML: while parsing a flow mapping expected ',' or '}', but got '<stream end>'")]


def test_keys_are_read_as_written():
    # YAML 1.1 reads an unquoted `no:` key as False; the loader reports the key as written
    found = errors_of(GOOD + "no: 1\n")
    assert found == [("6:1", "no", "unknown key 'no'")]


def test_non_mapping_documents():
    assert errors_of("- a\n- b\n") == [
        ("1:1", "", "a rule file must be a mapping with the keys 'version' and 'rules'; got ['a', 'b']")]
    assert errors_of("") == [
        ("1:1", "", "the document is empty; a rule file needs 'version: 1' and 'rules:'")]


def test_alias_bomb_is_refused_quickly():
    lines = ["version: 1", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("rules: *a9")  # 9**10 = 3.5e9 values once expanded
    start = time.perf_counter()
    found = errors_of("\n".join(lines))
    assert time.perf_counter() - start < 0.5
    assert found == [("1:1", "", f"the document expands to more than {MAX_NODES} values (aliases "
                                 "expanding to a huge tree?); refused")]


def test_recursive_alias_and_deep_nesting_are_refused():
    assert errors_of("version: 1\nrules: &r\n  - *r\n")[0][2] == (
        "an alias refers to a node that contains it (recursive alias)")
    assert "nested" in errors_of("version: 1\nrules: " + "[" * 200 + "]" * 200 + "\n")[0][2]
    assert "nested" in errors_of("[" * 5000 + "]" * 5000)[0][2]
    assert "too long" in errors_of("#" * (MAX_CHARS + 1))[0][2]


def test_aliases_that_nest_deeper_once_expanded_are_refused():
    # each anchor is 40 levels deep and holds the previous one: 40 * 30 levels once expanded
    lines = ["version: 1", "a0: &a0 " + "[" * 40 + "]" * 40]
    lines += [f"a{i}: &a{i} " + "[" * 40 + f"*a{i - 1}" + "]" * 40 for i in range(1, 30)]
    text = "\n".join(lines + ["rules: *a29"])
    (found,) = errors_of(text)
    assert found == (at(text, 3, "*a0"), "", f"nested deeper than {MAX_DEPTH} levels; refused")


def test_a_dict_that_contains_itself_is_refused():
    data: dict = {"version": 1, "rules": []}
    data["rules"].append(data)
    assert errors_of(data) == [("None:None", "", f"nested deeper than {MAX_DEPTH} levels; refused")]


def test_small_aliases_and_merge_keys_work():
    text = dedent("""\
        version: 1
        x-tt: &tt {format: tt, rank: 4, modes: auto}
        rules:
          - name: a
            match: {name: fc1}
            action: factorize
            factorize: *tt
          - name: b
            match: {name: fc2}
            action: factorize
            factorize: {<<: *tt, rank: 2}
    """)
    assert errors_of(text) == [("2:1", "x-tt", "unknown key 'x-tt'")]  # extra top-level keys stay refused
    ok = dedent("""\
        version: 1
        rules:
          - name: a
            match: {name: fc1}
            action: factorize
            factorize: &tt {format: tt, rank: 4, modes: auto}
          - name: b
            match: {name: fc2}
            action: factorize
            factorize: {<<: *tt, rank: 2}
    """)
    a, b = load_rules(ok).rules
    assert (a.factorize.rank, b.factorize.rank) == (4, 2)
    assert b.factorize.format == "tt"
    # an error inside a mapping that uses a merge key is still located where it is written
    bad = ok.replace("{<<: *tt, rank: 2}", "\n      <<: *tt\n      modes: bad")
    assert errors_of(bad) == [(at(bad, 12, "bad"), "rules[1].factorize.modes",
                               "must be 'auto' or a mapping (key: value lines); got 'bad'")]


def test_inputs_of_every_kind(tmp_path, monkeypatch):
    path = write(tmp_path, "r.yaml", GOOD)
    expected = load_rules(GOOD)
    assert load_rules(path) == expected  # pathlib.Path
    assert load_rules(str(path)) == expected  # str naming a file
    assert load_rules(expected) is expected  # a RuleSet as is
    assert load_rules(yaml.safe_load(GOOD)) == expected  # dict
    assert errors_of(str(tmp_path / "missing.yml")) == [("None:None", "", "no such file")]
    monkeypatch.chdir(tmp_path)
    assert load_rules("r.yaml").source == "r.yaml"
    with pytest.raises(RuleError, match="must be a path, YAML text, a dict or a RuleSet; got int"):
        load_rules(3)  # type: ignore[arg-type]


def test_dict_errors_use_key_paths():
    with pytest.raises(RuleError) as info:
        load_rules({"version": 1, "rules": [{"name": "a", "match": {"type": "Linear"}, "action": "fold"}]})
    (error,) = info.value.errors
    assert str(error) == "<dict>: rules[0].action: must be 'factorize', 'prune' or 'keep'; got 'fold'"


def test_extends_merges_child_first(tmp_path):
    write(tmp_path, "base/base.yaml", """\
        version: 1
        defaults:
          init: decompose
          scorer: snip
          budget: {sparsity: 0.9, allocation: erk}
        scoring: {batches: 2, trainability: {steps: 5, inner_lr: 0.5}}
        rules:
          - name: base-rule
            match: {name: "*"}
            action: prune
    """)
    child = write(tmp_path, "child.yaml", """\
        version: 1
        extends: base/base.yaml
        defaults:
          scorer: grasp
          budget: {density: 0.1}
        scoring: {batches: 3, trainability: {steps: 4}}
        rules:
          - name: child-rule
            match: {name: fc1}
            action: keep
    """)
    merged = load_rules(child)
    assert [r.name for r in merged.rules] == ["child-rule", "base-rule"]
    assert merged.defaults.init == "decompose"  # from the base
    assert merged.defaults.scorer == "grasp"  # the child wins
    assert merged.defaults.budget.model_dump(exclude_none=True) == {  # replaced as a whole
        "density": 0.1, "of": "dense", "allocation": "global", "min_density": 0.0005, "min_kept": 0}
    assert merged.scoring.batches == 3  # the child wins
    assert merged.scoring.trainability.steps == 4  # a scorer's section given by the child replaces the base's
    assert merged.scoring.trainability.inner_lr == 0.1
    assert merged.extends is None and merged.source == str(child)
    assert load_rules(merged.to_yaml()) == merged


def test_scoring_options_written_flat_say_where_they_moved():
    text = GOOD + "scoring:\n  batches: 2\n  steps: 3\n  iterations: 5\n  snip: {}\n"
    assert errors_of(text) == [
        (at(text, 8, "steps"), "scoring.steps",
         "'steps' moved to scoring.trainability.steps (each scorer has its own options)"),
        (at(text, 9, "iterations"), "scoring.iterations",
         "'iterations' moved to scoring.trainability.iterations or scoring.synflow.iterations or scoring.force.iterations "
         "(each scorer has its own options)"),
        (at(text, 10, "snip"), "scoring.snip", "the snip scorer has no options"),
    ]
    nested = GOOD + "scoring:\n  trainability: {steps: 0, lr: 1}\n"
    assert errors_of(nested) == [
        (at(nested, 7, "0"), "scoring.trainability.steps", "must be at least 1; got 0"),
        (at(nested, 7, "lr"), "scoring.trainability.lr", "unknown key 'lr'"),
    ]


def test_messages_come_from_the_error_type_not_its_english_text():
    from tedepr_fx.rules.document import Document
    from tedepr_fx.rules.messages import located_errors

    doc = Document({"scoring": {"batches": "x", "batch_size": 0}}, "<test>")
    reworded = [
        {"type": "int_parsing", "loc": ("scoring", "batches"), "msg": "Reworded by pydantic", "input": "x"},
        {"type": "greater_than_equal", "loc": ("scoring", "batch_size"), "msg": "Reworded", "input": 0,
         "ctx": {"ge": 1}},
    ]
    assert [str(e) for e in located_errors(doc, reworded)] == [
        "<test>: scoring.batches: must be an int; got 'x'",
        "<test>: scoring.batch_size: must be at least 1; got 0",
    ]


def test_extends_chain_of_any_depth_and_errors_in_the_base(tmp_path):
    write(tmp_path, "a.yaml", "version: 1\nrules: [{name: a, match: {name: x}, action: keep}]\n")
    write(tmp_path, "sub/b.yaml", "version: 1\nextends: ../a.yaml\n"
                                   "rules: [{name: b, match: {name: x}, action: fold}]\n")
    c = write(tmp_path, "c.yaml", "version: 1\nextends: sub/b.yaml\n"
                                  "rules: [{name: a, match: {name: x}, action: keep}]\n")
    with pytest.raises(RuleError) as info:
        load_rules(c)
    a, b = tmp_path / "a.yaml", tmp_path / "sub" / "b.yaml"
    assert sorted(str(e) for e in info.value.errors) == sorted([
        # c's rule, then b's, then a's: a's rule is the duplicate, located in a.yaml
        f"{a.resolve()}:{at(a.read_text(), 2, 'a,')}: rules[2].name: duplicate rule name 'a' "
        f"(first used by rules[0] at {c}:{at(c.read_text(), 3, 'a,')})",
        f"{b.resolve()}:{at(b.read_text(), 3, 'fold')}: rules[1].action: must be 'factorize', 'prune' or 'keep'; got 'fold'",
    ])


def test_extends_missing_and_cyclic_are_located_at_the_key(tmp_path):
    missing = write(tmp_path, "m.yaml", "version: 1\nextends: nope.yaml\n" + GOOD.split("\n", 1)[1])
    assert errors_of(missing) == [("2:10", "extends", f"base file 'nope.yaml' does not exist "
                                                      f"({tmp_path / 'nope.yaml'})")]
    write(tmp_path, "x.yaml", "version: 1\nextends: y.yaml\nrules: [{name: x, match: {name: x}, action: keep}]\n")
    write(tmp_path, "y.yaml", "version: 1\nextends: x.yaml\nrules: [{name: y, match: {name: y}, action: keep}]\n")
    with pytest.raises(RuleError) as info:
        load_rules(tmp_path / "x.yaml")
    (error,) = info.value.errors
    assert (error.location.file, error.location.line, error.location.column) == (
        str((tmp_path / "y.yaml").resolve()), 2, 10)
    assert error.message.startswith("extends chain is cyclic:")


def test_to_yaml_round_trip_of_floats_and_modes():
    rs = load_rules(dedent("""\
        version: 1
        defaults: {budget: {sparsity: 0.998, min_density: 0.00001}}
        rules:
          - name: a
            match: {type: [Linear, Conv2d], regex: 'a\\.\\d+', min_params: 0}
            action: factorize
            factorize: {format: tt, rank: 1.0, modes: {in: [4, 4], out: [2, 5]}}
    """))
    again = load_rules(rs.to_yaml())
    assert again == rs
    assert type(again.rules[0].factorize.rank) is float


def test_parse_rules_resolves_extends_against_base_dir(tmp_path):
    write(tmp_path, "base.yaml", GOOD)
    rs = parse_rules("version: 1\nextends: base.yaml\n", base_dir=tmp_path)
    assert [r.name for r in rs.rules] == ["fc"]


# --- fuzzing ---------------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=8),
    st.sampled_from(["tt", "tucker", "auto", "full", "Linear", "factorize", "prune", "keep", "1.0", "*"]),
)
_keys = st.sampled_from(["version", "rules", "defaults", "scoring", "extends", "name", "match", "action",
                         "factorize", "format", "rank", "modes", "in", "out", "type", "regex", "budget",
                         "sparsity", "density", "of", "allocation", "min_density", "scorer", "init", "x"])
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)), max_leaves=20)


_budgets = st.fixed_dictionaries({}, optional={
    "sparsity": st.floats(-0.5, 1.5), "density": st.floats(-0.5, 1.5),
    "of": st.sampled_from(["dense", "factors", "both"]), "allocation": st.sampled_from(["global", "erk", "x"]),
    "min_density": st.floats(0, 1)})
_match = st.fixed_dictionaries(
    {"type": st.sampled_from(["Linear", "Conv2d", ["Linear", "Conv2d"], []])},
    optional={"name": st.sampled_from(["fc*", "x"]), "regex": st.sampled_from([r"fc\d", "(("]),
              "min_params": st.integers(-1, 10), "max_params": st.integers(0, 10)})
_factorize = st.fixed_dictionaries(
    {"format": st.sampled_from(["tt", "tucker", "tt", "cp"]),
     "rank": st.one_of(st.integers(-1, 9), st.floats(0, 1.5), st.just("auto"),
                       st.lists(st.integers(0, 4), max_size=3))},
    optional={"modes": st.one_of(st.just("auto"), st.fixed_dictionaries(
        {"in": st.lists(st.integers(0, 5), max_size=3), "out": st.lists(st.integers(0, 5), max_size=3)}))})
_extras = {"budget": _budgets, "scorer": st.sampled_from(["snip", "grasp", "nope"]),
           "init": st.sampled_from(["scratch", "decompose", "warm"])}
# mostly consistent rules (so that many documents validate), sometimes not
_rules = st.one_of(
    st.fixed_dictionaries({"name": st.integers(0, 10**6).map(str), "match": _match,
                           "action": st.sampled_from(["prune", "keep", "fold"])}, optional=_extras),
    st.fixed_dictionaries({"name": st.integers(0, 10**6).map(str), "match": _match,
                           "action": st.just("factorize"), "factorize": _factorize}, optional=_extras),
)
_rule_docs = st.fixed_dictionaries(
    {"version": st.just(1), "rules": st.lists(_rules, max_size=4)},
    optional={"defaults": st.fixed_dictionaries({}, optional={"budget": _budgets, "init": st.just("decompose")}),
              "scoring": st.fixed_dictionaries({}, optional={"batches": st.integers(0, 3),
                                                             "inner_lr": st.floats(allow_nan=True)})},
)
_random_docs = st.fixed_dictionaries({"version": st.one_of(st.just(1), _scalars)},
                                     optional={"rules": _values, "defaults": _values, "scoring": _values})


def _mutate(text: str, cuts: list[tuple[int, int, str]]) -> str:
    for position, length, insert in cuts:
        at = position % (len(text) + 1)
        text = text[:at] + insert + text[at + length:]
    return text


@settings(max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.one_of(_rule_docs, _random_docs),
    cuts=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 4),
                            st.sampled_from(["", ":", "-", "[", "{", "&a ", "*a", "\n  ", "!!", '"', "<<: "])),
                  max_size=3),
)
def test_fuzz_only_rule_errors(doc, cuts):
    text = _mutate(yaml.safe_dump(doc, sort_keys=False), cuts)
    for source in (doc, text):
        try:
            result = load_rules(source) if isinstance(source, dict) else parse_rules(source)
        except RuleError as error:
            assert error.errors and all(str(e) for e in error.errors)
        else:
            assert isinstance(result, RuleSet)
            assert load_rules(result.to_yaml()) == result


def test_rules_slash_a_shipped_policy_is_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no rules/ folder here: the shipped policy is read
    shipped = load_rules("rules/transformer.yaml")
    assert [r.name for r in shipped.rules] == [r.name for r in load_rules(policies.path("transformer")).rules]
    (tmp_path / "rules").mkdir()  # a user's own rules/transformer.yaml wins
    (tmp_path / "rules" / "transformer.yaml").write_text(
        "version: 1\nrules:\n  - {name: mine, match: {type: Linear}, action: keep}\n")
    assert [r.name for r in load_rules("rules/transformer.yaml").rules] == ["mine"]
    with pytest.raises(RuleError, match="no such file"):
        load_rules("rules/not-a-policy.yaml")
