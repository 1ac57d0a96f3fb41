"""``tedepr-fx bench``: one cell end to end, the cache, the table, the targets, the arguments."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

from tedepr_fx.api import plan
from tedepr_fx.bench import cell as cell_module
from tedepr_fx.bench import suite as suite_module
from tedepr_fx.bench.datasets import load_suite_data, reshape_images, target_side
from tedepr_fx.bench.methods import baseline_rules, lowrank_rules, method_rules
from tedepr_fx.bench.plots import have_matplotlib
from tedepr_fx.bench.settings import MODELS, SUITES, resolve_suite
from tedepr_fx.bench.summary import best_baseline, summarize
from tedepr_fx.bench.table import markdown
from tedepr_fx.bench.targets import HOLDS, MISSED, NOT_APPLICABLE, NOT_MEASURED, check_targets
from tedepr_fx.bench.zoo import SUITE_MODELS
from tedepr_fx.cli import main
from tedepr_fx.data import load_dataset
from tedepr_fx.errors import CostWarning
from tedepr_fx.policies import path as policy_path
from tedepr_fx.rules import load_rules

TINY = dict(models=("lenet300100",), methods=("dense", "magnitude", "tedepr"), sparsities=(0.99,),
            seeds=(0,), epochs=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _tiny_suite():
    return dataclasses.replace(resolve_suite("quick", dataset="digits"), **TINY)


def test_one_cell_end_to_end_writes_records_table_and_plot(tmp_path, digits, one_thread):
    result = suite_module.run_suite(_tiny_suite(), digits, out=tmp_path, echo=lambda _: None)
    assert result.failures == [] and result.ran == 3 and result.cached == 0
    files = sorted((tmp_path / "records" / "lenet300100").glob("*.json"))
    assert [f.name.split("_")[0] for f in files] == ["dense", "magnitude", "tedepr"]
    record = json.loads(next(f for f in files if f.name.startswith("tedepr")).read_text())
    assert record["status"] == "ok" and 0.0 <= record["accuracy"] <= 1.0
    assert record["config"]["data"]["name"] == "digits" and record["config"]["sparsity"] == 0.99
    assert set(record["versions"]) == {"tedepr_fx", "torch", "python"}
    kept = record["kept"]
    assert kept["check"] == "ok" and kept["dense"] == 64 * 300 + 300 * 100 + 100 * 10
    assert kept["total"] == kept["report"] == kept["masks"]
    assert kept["total"] == pytest.approx(0.01 * kept["dense"], abs=2)
    assert {layer["name"] for layer in record["layers"]} == {"fc1", "fc2", "fc3"}
    assert all(layer["ranks"] for layer in record["layers"] if layer["action"] == "factorize")
    assert record["at_chance"] == (record["accuracy"] < 0.2)
    table = (tmp_path / "results.md").read_text()
    assert "## LeNet-300-100" in table and "| tedepr |" in table and "| magnitude |" in table
    assert "TEDEPR − best baseline" in table and "vs magnitude" in table
    if have_matplotlib():  # the dev extra installs it; without it the plots are skipped with a note
        assert (tmp_path / "plots" / "lenet300100.png").stat().st_size > 1000
    assert len(json.loads((tmp_path / "results.json").read_text())) == 3


def test_the_cache_skips_finished_cells(tmp_path, digits, one_thread, monkeypatch):
    suite = dataclasses.replace(_tiny_suite(), methods=("dense", "random"))
    first = suite_module.run_suite(suite, digits, out=tmp_path, plots=False, echo=lambda _: None)
    assert first.ran == 2

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cached cell was run again")

    monkeypatch.setattr(suite_module, "run_cell", must_not_run)
    second = suite_module.run_suite(suite, digits, out=tmp_path, plots=False, echo=lambda _: None)
    assert (second.ran, second.cached, second.failures) == (0, 2, [])
    assert [r["accuracy"] for r in second.records] == [r["accuracy"] for r in first.records]
    # another configuration (here: 2 epochs) is another cell, run again
    monkeypatch.setattr(suite_module, "run_cell", cell_module.run_cell)
    third = suite_module.run_suite(dataclasses.replace(suite, epochs=2, methods=("random",)), digits,
                                   out=tmp_path, plots=False, echo=lambda _: None)
    assert (third.ran, third.cached) == (1, 0)


def test_a_failed_cell_is_recorded_and_run_again(tmp_path, digits, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(suite_module, "run_cell", broken)
    suite = dataclasses.replace(_tiny_suite(), methods=("random",))
    result = suite_module.run_suite(suite, digits, out=tmp_path, plots=False, echo=lambda _: None)
    assert result.ran == 0 and len(result.failures) == 1 and "boom" in result.failures[0]
    assert "## Cells that failed" in (tmp_path / "results.md").read_text()
    stored = json.loads(next((tmp_path / "records").rglob("*.json")).read_text())
    assert stored["status"] == "error"
    monkeypatch.setattr(suite_module, "run_cell", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("again")))
    again = suite_module.run_suite(suite, digits, out=tmp_path, plots=False, echo=lambda _: None)
    assert "again" in again.failures[0]


def _record(model, method, sparsity, seed, accuracy, kept=None, dense=1000):
    if kept is None:  # the budget
        kept = dense if sparsity is None else round((1 - sparsity) * dense)
    return {"status": "ok", "accuracy": accuracy, "chance": 0.1, "at_chance": accuracy < 0.2,
            "kept": {"total": kept, "dense": dense},
            "config": {"model": model, "method": method, "sparsity": sparsity, "seed": seed,
                       "training": {"epochs": 3, "batch_size": 128, "lr": 0.05, "momentum": 0.9},
                       "data": {"name": "fashion-mnist", "train_images": 60000}}}


def _synthetic():
    records = [_record("lenet5", "dense", None, s, 0.9) for s in (0, 1)]
    for s in (0, 1):
        records += [
            _record("lenet5", "snip", 0.99, s, 0.50 + 0.02 * s),
            _record("lenet5", "synflow", 0.99, s, 0.70 + 0.02 * s),  # the best baseline at 0.99
            _record("lenet5", "tedepr", 0.99, s, 0.75),
            _record("lenet5", "lowrank", 0.99, s, 0.95, kept=900),  # keeps too much: no rival
            _record("lenet5", "snip", 0.998, s, 0.40),  # the best baseline at 0.998
            _record("lenet5", "synflow", 0.998, s, 0.10 + 0.15 * s),
            _record("lenet5", "tedepr", 0.998, s, 0.45),
            _record("lenet5", "lowrank", 0.998, s, 0.12, kept=2),
        ]
    return records


def test_the_table_marks_the_best_baseline_and_tedepr_margin():
    records = _synthetic()
    summary = summarize(records)
    assert best_baseline(summary, "lenet5", 0.99)[0] == "synflow"
    assert best_baseline(summary, "lenet5", 0.998)[0] == "snip"
    text = markdown(records, title="t")
    accuracy_table = text.split("Weights kept")[0]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in accuracy_table.splitlines()
            if line.startswith("| ")}
    assert rows["synflow"].startswith("| synflow | **71.0 ± 1.4** | 17.5 ± 10.6 †1/2 |")
    assert rows["snip"] == "| snip | 51.0 ± 1.4 | **40.0 ± 0.0** |"
    assert rows["lowrank"] == "| lowrank | 95.0 ± 0.0 ‡ | 12.0 ± 0.0 † |"
    assert rows["TEDEPR − best baseline (points)"] == (
        "| TEDEPR − best baseline (points) | +4.0 vs synflow | +5.0 vs snip |")
    assert "dense: 90.0 ± 0.0 % (1000 weights); chance: 10 %." in text
    assert "| lowrank | 900 (90.00 %) | 2 (0.20 %) |" in text  # the kept-weights table
    # TEDEPR keeping more than the budget is flagged on its margin, and the targets say by how much
    over = [dict(r, kept={"total": 5, "dense": 1000}) if r["config"]["method"] == "tedepr"
            and r["config"]["sparsity"] == 0.998 else r for r in records]
    assert "+5.0 vs snip § |" in markdown(over, title="t")
    found = {t.what: t.detail for t in check_targets(over)}
    assert "TEDEPR keeps 0.50 % of the dense weights, the budget 0.20 %" in \
        found["TEDEPR >= best baseline + 10 points at 0.998"]


def test_targets_report_holds_misses_and_gaps():
    targets = {(t.model, t.what): t.status for t in check_targets(_synthetic())}
    assert targets[("lenet5", "TEDEPR >= best baseline at 0.99")] == HOLDS
    assert targets[("lenet5", "TEDEPR >= best baseline + 10 points at 0.998")] == MISSED
    assert targets[("lenet5", "TEDEPR >= best baseline + 10 points at 0.999")] == NOT_MEASURED
    assert targets[("lenet5", "no TEDEPR cell below 2 x chance (20 %) up to 0.999")] == HOLDS
    lenet = [_record("lenet300100", "tedepr", 0.99, 0, 0.85), _record("lenet300100", "tedepr", 0.998, 0, 0.15)]
    found = {t.what: t for t in check_targets(lenet)}
    assert found["TEDEPR >= 84 % at 0.99"].status == HOLDS
    assert found["TEDEPR >= 83 % at 0.998"].status == MISSED
    assert found["no TEDEPR cell below 2 x chance (20 %) up to 0.999"].status == MISSED
    short = [dict(r, config={**r["config"], "training": {**r["config"]["training"], "epochs": 1}}) for r in lenet]
    assert {t.what: t.status for t in check_targets(short)}["TEDEPR >= 84 % at 0.99"] == NOT_APPLICABLE


@pytest.mark.parametrize("argv, message", [
    (["--suite", "huge"], "unknown suite 'huge'"),
    (["--models", "alexnet"], "unknown model 'alexnet'"),
    (["--methods", "dense", "obd"], "unknown method 'obd'"),
    (["--sparsities", "1.5"], "sparsities must lie in [0, 1)"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--seeds", "-1"], "seeds must be >= 0"),
    (["--suite", "paper", "--data", "digits"], "needs real data"),
    (["--data", "/nonexistent/dir"], "neither a data set name"),
])
def test_bad_arguments_exit_2_with_a_message(tmp_path, capsys, argv, message):
    assert main(["bench", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "records").exists()


def test_unparsable_arguments_exit_2(capsys):
    assert main(["bench", "--sparsities", "abc"]) == 2
    assert main(["bench", "--epochs", "three"]) == 2
    assert "invalid" in capsys.readouterr().err


def test_suites_and_models_agree():
    assert tuple(SUITE_MODELS) == MODELS
    paper = SUITES["paper"]
    assert paper.sparsities == (0.9, 0.99, 0.995, 0.998, 0.999) and paper.seeds == (0, 1, 2)
    assert (paper.epochs, paper.batch_size, paper.lr, paper.momentum) == (3, 128, 0.05, 0.9)
    assert paper.real_data and not SUITES["quick"].real_data
    assert resolve_suite("quick", dataset="digits").epochs == 5
    assert resolve_suite("quick", dataset="digits", epochs=2).epochs == 2


def test_images_are_padded_or_enlarged_to_32(digits):
    assert [target_side(s, g) for s, g in [(28, "classic"), (8, "classic"), (28, "32x32"), (8, "native")]] \
        == [28, 32, 32, 8]
    big = reshape_images(digits, "32x32")
    assert big.input_shape == (1, 32, 32)
    x, small = big.train.tensors[0][0, 0], digits.train.tensors[0][0, 0]
    assert torch.equal(x[::4, ::4], small) and torch.equal(x[1::4, 2::4], small)
    fake = dataclasses.replace(digits, mean=(0.5,), std=(2.0,))
    pad = torch.ones(3, 1, 24, 24)
    padded = reshape_images(dataclasses.replace(
        fake, train=torch.utils.data.TensorDataset(pad, torch.zeros(3)),
        test=torch.utils.data.TensorDataset(pad, torch.zeros(3)), input_shape=(1, 24, 24)), "32x32")
    img = padded.train.tensors[0][0, 0]
    assert img.shape == (32, 32) and img[0, 0] == -0.25 and img[4, 4] == 1.0 and img[3, 4] == -0.25


def test_paper_suite_refuses_digits_but_quick_accepts_it():
    assert load_suite_data("digits", real_data=False).name == "digits"
    with pytest.raises(Exception, match="real data"):
        load_suite_data("digits", real_data=True)


def test_method_rules():
    policy = load_rules(policy_path("lenet"))
    low = lowrank_rules(policy, 0.99)
    assert low.defaults.budget is None
    by_name = {r.name: r for r in low.rules}
    assert by_name["fc1-tt"].factorize.rank == pytest.approx(0.01) and by_name["fc1-tt"].budget is None
    assert by_name["fc3-tt"].factorize.rank == pytest.approx(0.01) and by_name["fc3-tt"].budget is None
    pruned = {r.name: r for r in lowrank_rules(load_rules(policy_path("lenet5")), 0.99).rules}["small-layers"]
    assert pruned.budget.target_density == pytest.approx(0.01)  # a prune rule keeps its share
    vit = {r.name: r for r in lowrank_rules(load_rules(policy_path("transformer")), 0.99).rules}
    assert vit["edges"].budget.min_density == pytest.approx(0.01)  # 0.05 in the policy: capped at the share
    floored = {r.name: r for r in lowrank_rules(load_rules(policy_path("vit")), 0.99).rules}
    assert floored["attention-vo"].floor is None and floored["attention-vo"].budget is None  # not pruned
    assert floored["head"].floor.min_kept == 20 and floored["head"].budget.target_density == pytest.approx(0.01)
    base = baseline_rules("synflow", policy, 0.998)
    assert base.defaults.scorer == "synflow" and base.defaults.budget.target_density == pytest.approx(0.002)
    assert base.scoring == policy.scoring
    assert method_rules("dense", policy, 0.9) is None
    assert method_rules("tedepr", policy, 0.9).defaults.budget.target_density == pytest.approx(0.1)


@pytest.mark.parametrize("name", MODELS)
def test_every_suite_model_fits_its_policy_and_the_baselines(name):
    """The shipped policy matches every weight-bearing layer (none unmatched, no unused rule), and
    the baselines prune them all."""
    spec = SUITE_MODELS[name]
    shape = {"native": (1, 28, 28), "classic": (1, 28, 28), "32x32": (1, 32, 32)}[spec.geometry]
    model = spec.build(shape, 10)
    example = (torch.randn(2, *shape),)
    policy = load_rules(policy_path(spec.policy))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rule that matches nothing warns
        warnings.simplefilter("ignore", CostWarning)  # a costlier layer is the speed benchmark's concern
        planned = plan(model, policy.with_budget(sparsity=0.99), example)
        baseline = plan(model, baseline_rules("snip", policy, 0.99), example)
    assert planned.unmatched == [] and baseline.unmatched == []
    assert {r.action for r in baseline.rows} == {"prune"}
    assert planned.totals["dense"] == baseline.totals["dense"]


def test_a_policy_changed_since_planning_fails_the_cell(digits):
    suite = dataclasses.replace(_tiny_suite(), methods=("tedepr",))
    cell = cell_module.Cell("lenet300100", "tedepr", 0.99, 0)
    config = cell_module.cell_config(cell, suite, digits)
    with pytest.raises(RuntimeError, match="changed since the suite was planned"):
        cell_module.run_cell(cell, suite, digits, config={**config, "policy_sha256": "0" * 64})
