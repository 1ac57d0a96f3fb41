"""``scoring.rescale: dense``: masked layers get the dense layer's signal scale, masks unchanged."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

import tedepr_fx
from tedepr_fx.errors import RuleError
from tedepr_fx.layers.masked import MaskedMixin
from tedepr_fx.models import LeNet5
from tedepr_fx.passes.rescale import output_scales, signal_scale

LAYERS = ["conv1", "conv2", "fc1", "fc2", "fc3"]


def _rules(rescale: str | None, sparsity: float = 0.999) -> dict[str, Any]:
    """lenet5.yaml (which sets rescale: dense) with ``rescale`` set, or left out (None)."""
    rules = tedepr_fx.load_rules("rules/lenet5.yaml").with_budget(sparsity=sparsity)
    data = rules.model_dump(by_alias=True, exclude_none=True)
    data["scoring"].pop("rescale")
    if rescale is not None:
        data["scoring"]["rescale"] = rescale
    return data


def _setup() -> tuple[nn.Module, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = LeNet5()
    x = torch.randn(32, *model.example_input(1).shape[1:])
    return model, x, [(x, torch.randint(0, 10, (32,)))]


def _transform(model: nn.Module, rules: dict[str, Any], data: Any) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tedepr_fx.transform(model, rules, data=data, seed=0, verbose=False)


def _scales(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    layers = {name: model.get_submodule(name) for name in LAYERS}
    with torch.no_grad():
        return output_scales(layers, lambda: model.eval()(x))


def test_each_masked_layer_gets_the_dense_signal_scale_and_the_masks_do_not_change():
    model, x, data = _setup()
    plain = _transform(model, _rules("none"), data)
    scaled = _transform(model, _rules("dense"), data)
    masks = {n: b for n, b in plain.named_buffers() if n.endswith("_mask")}
    assert masks and all(torch.equal(b, dict(scaled.named_buffers())[n]) for n, b in masks.items())

    dense = _scales(model, x)
    before, after = _scales(plain, x), _scales(scaled, x)
    for name in LAYERS:  # measured on the scoring batch, layer after layer: exact up to float error
        assert after[name] == pytest.approx(dense[name], rel=1e-4), name
    assert any(abs(before[n] / dense[n] - 1) > 0.5 for n in LAYERS)  # it had something to do


def test_each_layer_is_scaled_by_one_factor():
    model, _, data = _setup()
    plain = _transform(model, _rules("none"), data)
    scaled = _transform(model, _rules("dense"), data)
    for name in LAYERS:
        a, b = plain.get_submodule(name), scaled.get_submodule(name)
        assert isinstance(a, MaskedMixin) and isinstance(b, MaskedMixin)
        ratios = []
        for tensor in a.prunable:
            kept = a.get_mask(tensor)
            mine, theirs = getattr(b, tensor)[kept], getattr(a, tensor)[kept]
            ratio = (mine / theirs).detach()
            torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])))  # one per tensor
            ratios.append(float(ratio[0]))
        torch.testing.assert_close(torch.tensor(ratios), torch.full((len(ratios),), ratios[0]))


def test_the_default_is_none_and_leaves_the_kept_entries_as_initialised():
    model, _, data = _setup()
    assert tedepr_fx.load_rules("rules/lenet.yaml").scoring.rescale == "none"  # not written there
    default = _transform(model, _rules(None), data)
    none = _transform(model, _rules("none"), data)
    for (n, a), (_, b) in zip(default.state_dict().items(), none.state_dict().items()):
        assert torch.equal(a, b), n


def test_the_users_model_and_its_mode_are_untouched():
    model, _, data = _setup()
    model.train()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    scaled = _transform(model, _rules("dense"), data)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert model.training and scaled.training


def test_without_data_it_measures_on_the_example_inputs():
    model, x, _ = _setup()
    rules = _rules("dense")
    rules["scoring"]["without_data"] = "synflow"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scaled = tedepr_fx.transform(model, rules, example_inputs=(x,), seed=0, verbose=False)
    dense, after = _scales(model, x), _scales(scaled, x)
    assert after["fc3"] == pytest.approx(dense["fc3"], rel=1e-4)


def test_a_bad_value_is_a_rule_error_naming_the_key():
    with pytest.raises(RuleError, match="rescale"):
        tedepr_fx.load_rules({"version": 1, "scoring": {"rescale": "unit"},
                              "rules": [{"name": "r", "match": {"type": "Linear"}, "action": "keep"}]})


def test_signal_scale_ignores_what_does_not_depend_on_the_input():
    constant = torch.tensor([1.0, -3.0, 7.0]).expand(16, 3)
    assert signal_scale(constant) == 0.0  # a bias alone: no signal
    assert signal_scale(torch.randn(1, 10)) == 0.0  # one sample: no spread to measure
    x = torch.randn(4096, 8)
    assert signal_scale(2 * x + 5) == pytest.approx(2 * signal_scale(x), rel=1e-6)
