"""Issue 15, unclear errors: bad labels, outputs without a tensor, models capture cannot take,
parametrized layers under prune, unsupported layer kinds, and the CLI's arguments. Each is a
message that names the cause and what to do, never a torch traceback."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

import tedepr_fx
from tedepr_fx.cli import main
from tedepr_fx.errors import CaptureError, DataError, LayerError

X = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
PRUNE = {"version": 1, "defaults": {"scorer": "snip", "budget": {"sparsity": 0.5}},
         "rules": [{"name": "all", "match": {"name": "*"}, "action": "prune"}]}
FACTORIZE = {"version": 1, "rules": [{"name": "all", "match": {"type": "Linear"}, "action": "factorize",
                                      "factorize": {"format": "tucker", "rank": 4}}]}


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def quiet_transform(model: nn.Module, rules: object, **kwargs: object) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tedepr_fx.transform(model, rules, **kwargs)


# --- labels and outputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("labels", [
    torch.randn(8),  # float: dtype
    torch.randint(0, 10, (8, 2)),  # shape
    torch.full((8,), 12),  # range: 10 classes
    torch.randint(0, 10, (4,)),  # batch size
    None,
], ids=["dtype", "shape", "range", "batch-size", "none"])
def test_bad_labels_are_a_data_error_naming_the_batch_the_default_loss_and_loss_fn(labels):
    with pytest.raises(DataError) as info:
        quiet_transform(mlp(), PRUNE, data=[(X, labels)])
    message = str(info.value)
    assert "data batch 0" in message
    assert "default loss is cross-entropy, which expects integer (long) class indices of shape (8,) in [0, 10)" in message
    assert "loss_fn=" in message


def test_an_output_without_a_tensor_is_a_data_error_naming_output_fn():
    class NoTensor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> dict[str, object]:
            return {"size": self.fc(x).shape[0]}

    with pytest.raises(DataError, match="output_fn="):
        quiet_transform(NoTensor(), PRUNE, example_inputs=(X,), data=[(X, torch.zeros(8, dtype=torch.long))])


# --- models capture cannot take --------------------------------------------------------------------


def test_a_lazy_module_is_a_capture_error_saying_to_run_it_first():
    model = nn.Sequential(nn.LazyLinear(32), nn.ReLU(), nn.Linear(32, 10))
    with pytest.raises(CaptureError, match=r"layer '0' \(LazyLinear\) has uninitialized lazy parameters.*model\(x\)"):
        quiet_transform(model, FACTORIZE, example_inputs=(X,))


def test_a_meta_model_is_a_capture_error_under_transform_and_plans_fine():
    model = mlp().to("meta")
    with pytest.raises(CaptureError, match=r"layer '0' \(Linear\) has parameters on the meta device.*to_empty"):
        quiet_transform(model, FACTORIZE, example_inputs=(X,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [r.new_type for r in tedepr_fx.plan(model, FACTORIZE, example_inputs=(X,)).rows] == [
            "TuckerLinear", "TuckerLinear"]


def test_a_script_module_is_a_capture_error():
    with pytest.raises(CaptureError, match="TorchScript module.*before torch.jit.script"):
        quiet_transform(torch.jit.script(mlp()), FACTORIZE, example_inputs=(X,))


def test_the_legacy_weight_norm_is_a_capture_error_naming_the_layer():
    model = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates it
        torch.nn.utils.weight_norm(model[2])
    with pytest.raises(CaptureError, match=r"layer '2' \(Linear\) uses the legacy torch.nn.utils.weight_norm"):
        quiet_transform(model, FACTORIZE, example_inputs=(X,))


class Symmetric(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return (w + w.T) / 2


@pytest.mark.parametrize("wrap", [
    lambda m: parametrize.register_parametrization(m, "weight", Symmetric()),
    weight_norm,
    spectral_norm,
], ids=["parametrize", "weight_norm", "spectral_norm"])
def test_a_parametrized_layer_under_prune_is_a_layer_error_and_factorizes(wrap):
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    wrap(model[0])
    with pytest.raises(LayerError, match=r"layer '0' \(rule 'all'\): its weight is parametrized.*"
                                         r"remove_parametrizations\(layer, 'weight'\)"):
        quiet_transform(model, {**PRUNE, "defaults": {"scorer": "magnitude", "budget": {"sparsity": 0.5}}},
                        example_inputs=(X,))
    out = quiet_transform(model, FACTORIZE, example_inputs=(X,))
    assert [r.new_type for r in tedepr_fx.report(out).rows] == ["TuckerLinear", "TuckerLinear"]
    assert out(X).shape == (8, 10)


@pytest.mark.parametrize("layer", [
    nn.Sequential(nn.Unflatten(1, (4, 16)), nn.Conv1d(4, 8, 3), nn.Flatten(), nn.Linear(112, 10)),
    nn.Sequential(nn.Unflatten(1, (1, 4, 4, 4)), nn.Conv3d(1, 2, 3), nn.Flatten(), nn.Linear(16, 10)),
    nn.Sequential(nn.Unflatten(1, (4, 4, 4)), nn.ConvTranspose2d(4, 2, 3), nn.Flatten(), nn.Linear(72, 10)),
], ids=["Conv1d", "Conv3d", "ConvTranspose2d"])
def test_an_unsupported_layer_kind_under_a_catch_all_rule_is_named_as_such(layer):
    kind = type(layer[1]).__name__
    with pytest.warns(UserWarning, match=rf"rule 'all' also matches '1' \({kind}\): unsupported layer kind"):
        tedepr_fx.transform(layer, {**PRUNE, "defaults": {"scorer": "magnitude", "budget": {"sparsity": 0.5}}},
                            example_inputs=(X,))
    only = {"version": 1, "rules": [{"name": "these", "match": {"type": kind}, "action": "prune"}]}
    with pytest.warns(UserWarning, match=rf"matched no layer: these \(rule 'these' matches only '1' \({kind}\): "
                                         "unsupported layer kind"):
        tedepr_fx.transform(layer, only, example_inputs=(X,))


# --- the command line ------------------------------------------------------------------------------

FACTORIES = '''
from torch import nn

def mlp():
    return nn.Sequential(nn.Linear(8, 4))

def explode():
    raise AssertionError("the model was built before the output path was checked")

def number():
    return 3
'''
RULES = "version: 1\nrules:\n  - {name: a, match: {name: '*'}, action: factorize, factorize: {format: tucker, rank: 2}}\n"


@pytest.fixture
def cli_dir(tmp_path, monkeypatch):
    (tmp_path / "hardening_factories.py").write_text(FACTORIES)
    (tmp_path / "rules.yaml").write_text(RULES)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_transform_checks_the_output_folder_before_it_builds_the_model(cli_dir, capsys):
    line = one_error_line(capsys, ["transform", "hardening_factories:explode", "--rules", "rules.yaml",
                                   "--input-shape", "2,8", "-o", "missing/dir/x.pt"])
    assert line == "error: -o missing/dir/x.pt: the folder missing/dir does not exist; create it first"


@pytest.mark.parametrize("shape", ["2,-8", "0,8"])
def test_a_non_positive_input_shape_is_one_line(cli_dir, capsys, shape):
    line = one_error_line(capsys, ["plan", "hardening_factories:mlp", "--rules", "rules.yaml", "--input-shape", shape])
    assert line == f"error: --input-shape must be positive ints (a batch of at least one sample); got '{shape}'"


def test_a_factory_returning_a_non_module_is_one_line(cli_dir, capsys):
    line = one_error_line(capsys, ["plan", "hardening_factories:number", "--rules", "rules.yaml"])
    assert line == "error: model 'hardening_factories:number' returned int, not an nn.Module"
