"""What a reviewer reads: annotated graph, diff, DOT / SVG, chart, CSV, JSON schema, explain.

Golden files (tests/golden/) pin the exact text of every format on LeNet-5 with
``rules/lenet5.yaml``. After an intended change of output, regenerate them with::

    TEDEPR_REGEN_GOLDEN=1 python -m pytest tests/test_review.py -q

and review the diff of tests/golden/ like any other change.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
import transformers

import tedepr_fx
from tedepr_fx.cli import main
from tedepr_fx.errors import LayerError
from tedepr_fx.explanation import explain
from tedepr_fx.models import lenet5, tiny_transformer
from tedepr_fx.reporting import report_schema

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
RULES = ROOT / "rules" / "lenet5.yaml"
TRANSFORMER = ROOT / "rules" / "transformer.yaml"
SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]


def bert() -> Any:
    return transformers.BertModel(transformers.BertConfig(
        hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128, vocab_size=100))


@pytest.fixture(scope="module")
def lenet_plan() -> tedepr_fx.Plan:
    return tedepr_fx.plan(lenet5(), RULES)


@pytest.fixture(scope="module")
def lenet_report() -> tedepr_fx.Report:
    model = tedepr_fx.transform(lenet5(), RULES, seed=0)
    return tedepr_fx.report(model)


# -- the annotated graph ------------------------------------------------------------------------


def test_every_rewritten_call_carries_its_new_type_format_ranks_kept_and_rule(lenet_plan: Any) -> None:
    code = lenet_plan.graph()
    line = {ln.split(" = ")[0].strip(): ln for ln in code.splitlines() if " = self." in ln}
    for row in lenet_plan.rows:
        assert f"rule={row.rule}" in line[row.name], row.name
        assert row.new_type in line[row.name]
        assert f"/{row.dense:,}" in line[row.name]
    assert "# TTLinear tt [1,6,6,1] kept ~480/48,000 rule=fc1-tt" in line["fc1"]
    assert "# Tucker2Conv2d tucker [2,2]" in line["conv2"]
    assert ";  " not in code  # fx's "x = None" frees are left out


def test_report_says_actual_kept_and_plan_says_predicted(lenet_plan: Any, lenet_report: Any) -> None:
    assert "kept ~" in lenet_plan.graph()  # global allocation: predicted
    assert "kept ~" not in lenet_report.graph()
    for row in lenet_report.rows:
        assert f"kept {row.kept:,}/{row.dense:,}" in lenet_report.graph()


def test_diff_changes_exactly_the_rewritten_lines(lenet_plan: Any) -> None:
    diff = lenet_plan.graph_diff()
    removed = [ln for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    added = [ln for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    assert len(removed) == len(added) == len(lenet_plan.rows)
    assert "-    fc1 = self.fc1(flatten)  # Linear dense 48,000" in removed
    assert any(ln.startswith("+    fc1 = self.fc1(flatten)  # TTLinear") for ln in added)


def test_functional_layers_show_their_rewritten_call_and_their_original_one() -> None:
    from tedepr_fx.models import functional_mlp

    rules = {"version": 1, "rules": [{"name": "all", "match": {"type": "Linear"}, "action": "prune",
                                      "budget": {"density": 0.5, "allocation": "uniform"}}]}
    result = tedepr_fx.plan(functional_mlp(), rules)
    diff = result.graph_diff()
    assert "linear = torch._C._nn.linear(flatten, w1, b1)  # F.linear dense 8,192" in result.code_before
    assert "tedepr_w1 = self.tedepr_w1(flatten)  # MaskedLinear dense kept 4,096/8,192 rule=all" in result.graph()
    added = [ln for ln in diff.splitlines() if ln.startswith("+    ") and "MaskedLinear" in ln]
    removed = [ln for ln in diff.splitlines() if ln.startswith("-    ") and "# F.linear dense" in ln]
    assert len(added) == len(removed) == len(result.rows) == 2


def test_eager_regions_list_what_was_swapped_in_them() -> None:
    result = tedepr_fx.plan(bert(), TRANSFORMER)
    code = result.graph()
    assert "# region encoder.layer.0.attention.self: eager (" in code
    assert "#   query: TuckerLinear tucker" in code
    assert "# region encoder.layer.0.intermediate: graph" in code
    assert "dense = self.dense(hidden_states)  # TuckerLinear tucker" in code
    for row in result.rows:  # every rewritten layer is shown once, in code or in a region's list
        short = row.name.rsplit(".", 1)[-1]
        assert short in code


def test_layers_swapped_inside_a_leaf_of_a_graph_are_listed_under_its_call() -> None:
    code = tedepr_fx.plan(tiny_transformer(), TRANSFORMER).graph()
    lines = code.splitlines()
    call = next(i for i, ln in enumerate(lines) if ln.startswith("    encoder = self.encoder("))
    assert lines[call + 1].startswith("    #   layers.0.self_attn.q_proj: TuckerLinear")


def test_report_graph_of_a_transformed_hugging_face_model() -> None:
    model = tedepr_fx.transform(bert(), TRANSFORMER)
    result = tedepr_fx.report(model)
    assert "#   query: TuckerLinear tucker" in result.graph()
    assert "-#   query: Linear dense 4,096" in result.graph_diff()


# -- pictures -----------------------------------------------------------------------------------


def test_dot_colours_rewritten_nodes_by_format_and_labels_ranks_and_density(lenet_report: Any) -> None:
    dot = lenet_report.to_dot()
    assert dot.startswith("digraph tedepr_fx {") and dot.rstrip().endswith("}")
    fc1 = next(ln for ln in dot.splitlines() if ln.strip().startswith('"0:fc1" ['))
    assert "TTLinear tt [1,6,6,1]" in fc1 and 'fillcolor="#8dd3c7"' in fc1 and "%)" in fc1
    conv2 = next(ln for ln in dot.splitlines() if ln.strip().startswith('"0:conv2" ['))
    assert 'fillcolor="#fdb462"' in conv2
    assert '"0:flatten" -> "0:fc1";' in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")
def test_svg_renders_and_names_every_rewritten_layer(lenet_report: Any, tmp_path: Path) -> None:
    path = lenet_report.write_dot(tmp_path / "graph.svg")
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    text = " ".join(t for t in root.itertext())
    for row in lenet_report.rows:
        assert row.name in text and row.new_type in text


def test_svg_without_graphviz_is_a_clear_error(lenet_plan: Any, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="needs Graphviz's 'dot' program"):
        lenet_plan.write_dot(tmp_path / "graph.svg")
    assert lenet_plan.write_dot(tmp_path / "graph.dot").read_text() == lenet_plan.to_dot()
    with pytest.raises(ValueError, match="unknown picture format"):
        lenet_plan.write_dot(tmp_path / "graph.jpeg")


def test_chart_is_a_png_and_the_same_table_gives_the_same_bytes(lenet_report: Any, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    a = lenet_report.write_chart(tmp_path / "a.png").read_bytes()
    b = lenet_report.write_chart(tmp_path / "b.png").read_bytes()
    assert a[:8] == b"\x89PNG\r\n\x1a\n" and len(a) > 5000
    assert a == b
    with pytest.raises(ValueError, match=r"\.png"):
        lenet_report.write_chart(tmp_path / "chart.svg")


# -- tables ---------------------------------------------------------------------------------------


def test_csv_has_one_row_per_layer_in_model_order(lenet_report: Any) -> None:
    rows = list(csv.DictReader(io.StringIO(lenet_report.to_csv())))
    assert [r["name"] for r in rows] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    fc1 = rows[2]
    assert fc1["ranks_text"] == "[1,6,6,1]" and fc1["kept_source"] == "actual"
    assert int(fc1["kept"]) == lenet_report.rows[2].kept


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA == json.loads(json.dumps(report_schema())), (
        "docs/report.schema.json is stale: python -m tedepr_fx.reporting > docs/report.schema.json")


@pytest.mark.parametrize("make", [lenet5, tiny_transformer, bert], ids=["lenet5", "tiny_transformer", "bert"])
def test_plan_and_report_json_validate_against_the_schema(make: Any) -> None:
    rules = RULES if make is lenet5 else TRANSFORMER
    plan = json.loads(tedepr_fx.plan(make(), rules).to_json())
    jsonschema.validate(plan, SCHEMA)
    assert plan["kind"] == "plan" and plan["identity"]["rules-sha256"]
    report = json.loads(tedepr_fx.report(tedepr_fx.transform(make(), rules)).to_json())
    jsonschema.validate(report, SCHEMA)
    assert report["kind"] == "report" and report["identity"]["model"] == plan["identity"]["model"]


def test_the_schema_rejects_a_document_with_an_unknown_field(lenet_plan: Any) -> None:
    document = json.loads(lenet_plan.to_json())
    document["rows"][0]["surprise"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)


# -- explain ------------------------------------------------------------------------------------


def test_explain_lists_every_rule_with_the_term_that_decided() -> None:
    result = explain(lenet5(), RULES, "fc2")
    states = [(v.name, v.state) for v in result.verdicts]
    assert states == [("conv2-tucker", "rejects"), ("small-layers", "rejects"), ("fc1-tt", "rejects"),
                      ("fc2-tt", "decides"), ("fc3-tt", "not reached")]
    assert [(t.text, t.holds) for t in result.verdicts[1].terms] == [("type Conv2d", False)]
    fc1 = result.verdicts[2]
    assert [(t.text, t.holds) for t in fc1.terms] == [("type Linear", True), ("name 'fc1'", False)]
    line = RULES.read_text().splitlines().index("  - name: conv2-tucker") + 1
    assert result.verdicts[0].location.endswith(f"lenet5.yaml:{line}:5")
    text = str(result)
    assert "4. fc2-tt [" in text and "DECIDES" in text and text.endswith("decision: rule 'fc2-tt' (factorize)")


def test_explain_regex_and_size_terms_on_a_hugging_face_layer() -> None:
    result = explain(bert(), TRANSFORMER, "encoder.layer.0.intermediate.dense")
    attention, mlp = result.verdicts[0], result.verdicts[1]
    assert attention.state == "rejects" and [t.holds for t in attention.terms] == [True, False]
    assert mlp.state == "decides" and attention.terms[1].text.startswith("regex ")
    sized = {"version": 1, "rules": [
        {"name": "big", "match": {"type": "Linear", "min_params": 10_000}, "action": "keep"},
        {"name": "rest", "match": {"type": "Linear"}, "action": "keep"}]}
    verdict = explain(bert(), sized, "encoder.layer.0.intermediate.dense").verdicts[0]
    assert verdict.terms[1].text == "min_params 10,000" and not verdict.terms[1].holds
    assert verdict.terms[1].why == "the layer has 8,192"


def test_explain_an_unknown_layer_names_the_closest_ones() -> None:
    with pytest.raises(LayerError, match=r"did you mean 'fc3', 'fc2', 'fc1'"):
        explain(lenet5(), RULES, "fc4")


def test_explain_and_show_from_the_command_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["explain", "tedepr_fx.models:lenet5", "--rules", str(RULES), "conv1"]) == 0
    assert "decision: rule 'small-layers' (prune)" in capsys.readouterr().out
    assert main(["explain", "tedepr_fx.models:lenet5", "--rules", str(RULES), "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: layer 'nope'") and err.count("\n") == 1
    assert main(["show", "tedepr_fx.models:lenet5", "--rules", str(RULES), "--diff"]) == 0
    assert "+    fc1 = self.fc1(flatten)  # TTLinear" in capsys.readouterr().out
    assert main(["show", "tedepr_fx.models:lenet5", "--rules", str(RULES), "--dot",
                 str(tmp_path / "missing" / "g.dot")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["show", "tedepr_fx.models:lenet5", "--rules", str(RULES), "--dot", str(tmp_path / "g.dot")]) == 0
    assert (tmp_path / "g.dot").read_text().startswith("digraph")


# -- golden files and determinism ----------------------------------------------------------------

_VERSION_LINES = ("# tool:", "# torch:")


def _outputs(plan: Any) -> dict[str, str]:
    document = json.loads(plan.to_json())
    document["identity"].pop("tool")
    document["identity"].pop("torch")  # versions move with installs, not with the rewrite
    return {
        "lock": "".join(ln + "\n" for ln in plan.lock_text().splitlines() if not ln.startswith(_VERSION_LINES)),
        "md": plan.to_markdown(),
        "json": json.dumps(document, indent=2, sort_keys=True) + "\n",
        "csv": plan.to_csv(),
        "txt": str(plan) + "\n",
        "graph": plan.graph(),
        "diff": plan.graph_diff(),
        "dot": plan.to_dot(),
    }


@pytest.mark.parametrize("suffix", ["lock", "md", "json", "csv", "txt", "graph", "diff", "dot"])
def test_golden_files(lenet_plan: Any, suffix: str) -> None:
    path = GOLDEN / f"lenet5_plan.{suffix}"
    text = _outputs(lenet_plan)[suffix]
    if os.environ.get("TEDEPR_REGEN_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: TEDEPR_REGEN_GOLDEN=1 python -m pytest {Path(__file__).name}"
    assert text == path.read_text(), (
        f"{path.name} differs; if the change is intended: TEDEPR_REGEN_GOLDEN=1 python -m pytest "
        f"tests/{Path(__file__).name}")


_PRINT_ALL = """
import hashlib, json, sys, warnings
warnings.simplefilter("ignore")
import torch
import tedepr_fx
from tedepr_fx.models import lenet5
torch.manual_seed(0)  # the same model weights in both processes
plan = tedepr_fx.plan(lenet5(), sys.argv[1])
report = tedepr_fx.report(tedepr_fx.transform(lenet5(), sys.argv[1], seed=0))
texts = {}
for name, table in (("plan", plan), ("report", report)):
    texts.update({f"{name}.md": table.to_markdown(), f"{name}.json": table.to_json(),
                  f"{name}.csv": table.to_csv(), f"{name}.txt": str(table), f"{name}.py": table.graph(),
                  f"{name}.diff": table.graph_diff(), f"{name}.dot": table.to_dot()})
texts["plan.lock"] = plan.lock_text()
print(json.dumps({k: hashlib.sha256(v.encode()).hexdigest() for k, v in sorted(texts.items())}))
"""


def test_two_processes_give_byte_identical_outputs() -> None:
    runs = [subprocess.run([sys.executable, "-c", _PRINT_ALL, str(RULES)], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout
            for seed in (1, 2)]  # different string hashing: no dict- or set-order accidents
    first, second = (json.loads(r) for r in runs)
    assert len(first) == 15
    assert first == second


# -- rules that match nothing ------------------------------------------------------------------

_UNUSED = """version: 1
rules:
  - name: convs
    match: {type: Conv2d}
    action: keep
  - name: typo
    match: {name: "fc_1"}
    action: keep
  - name: big
    match: {min_params: 10000000}
    action: keep
  - name: rest
    match: {type: Linear}
    action: keep
"""


def test_a_rule_that_matches_nothing_names_its_line_and_why(tmp_path: Path) -> None:
    from tedepr_fx.models import lenet300100

    rules = tmp_path / "unused.yaml"
    rules.write_text(_UNUSED)
    with pytest.warns(UserWarning, match="matched no layer") as caught:
        tedepr_fx.plan(lenet300100(), rules)
    text = str(next(w.message for w in caught if "matched no layer" in str(w.message)))
    assert f"{rules}:3:5: rules[0]: rule 'convs' matched no layer; no layer answers to type Conv2d " \
           "(the model's layer types: Linear)" in text
    assert f"{rules}:6:5: rules[1]: rule 'typo' matched no layer; nearest layer names: fc1" in text
    assert f"{rules}:9:5: rules[2]: rule 'big' matched no layer; no layer within its size bounds" in text
    with pytest.raises(tedepr_fx.RuleError) as error:
        tedepr_fx.plan(lenet300100(), rules, strict=True)
    assert [str(e.location) for e in error.value.errors][1:] == [f"{rules}:3:5", f"{rules}:6:5", f"{rules}:9:5"]


def test_a_layer_of_an_unsupported_kind_is_an_unmatched_row_that_says_so() -> None:
    model = torch.nn.Sequential(torch.nn.Conv1d(4, 8, 3), torch.nn.Flatten(), torch.nn.Linear(48, 10))
    rules = {"version": 1, "defaults": {"scorer": "magnitude"}, "rules": [
        {"name": "all", "match": {"min_params": 0}, "action": "prune", "budget": {"sparsity": 0.5}}]}
    x = torch.randn(2, 4, 8)
    for table in (tedepr_fx.plan(model, rules, (x,)),
                  tedepr_fx.report(tedepr_fx.transform(model, rules, example_inputs=(x,)))):
        (row,) = table.unmatched
        assert (row.name, row.old_type, row.dense) == ("0", "Conv1d", 96)
        assert row.note.startswith("unsupported layer kind (supported: ") and "rule 'all' matches it" in row.note
        assert "0 (Conv1d, 96, unsupported layer kind)" in str(table)
        assert "# Conv1d dense 96 (unsupported layer kind)" in table.graph()
        assert "Conv1d" not in table.graph_diff()  # nothing changed there
        jsonschema.validate(json.loads(table.to_json()), SCHEMA)
