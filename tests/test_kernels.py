"""Inference kernels per layer (tedepr_fx.kernels): same outputs, the cheapest candidate."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

import tedepr_fx
from tedepr_fx.kernels import FrozenLinear, SparseLinear, choose_kernels, csr_crossover

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(sparsity: float = 0.99) -> nn.Module:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))
    rules = {"version": 1, "defaults": {"scorer": "magnitude", "budget": {"sparsity": sparsity}},
             "rules": [
                 {"name": "tt", "match": {"name": "0"}, "action": "factorize",
                  "factorize": {"format": "tt", "rank": 3, "modes": {"in": [8, 8], "out": [6, 8]}}},
                 {"name": "tucker", "match": {"name": "2"}, "action": "factorize",
                  "factorize": {"format": "tucker", "rank": 4}},
                 {"name": "rest", "match": {"type": "Linear"}, "action": "prune"}]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tedepr_fx.transform(dense, rules, example_inputs=(torch.randn(2, 64),), verbose=False).eval()


@pytest.mark.parametrize("how", ["measure", "density"])
@pytest.mark.parametrize("batch", [1, 128])
def test_every_choice_gives_the_chains_outputs(how: str, batch: int) -> None:
    model = _model()
    fast = tedepr_fx.bake(model)
    choices = choose_kernels(fast, batch, how=how, reps=3)
    assert [c.layer for c in choices] == ["0", "2", "4"]
    x = torch.randn(batch, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)
    kinds = {"chain": (nn.Module,), "dense": (FrozenLinear,), "csr": (SparseLinear,)}
    for c in choices:
        assert isinstance(fast.get_submodule(c.layer), kinds[c.kernel])
        assert (c.seconds != {}) == (how == "measure")


def test_density_mode_takes_csr_exactly_below_the_crossover() -> None:
    model = tedepr_fx.bake(_model(0.9))
    choices = choose_kernels(model, 1, how="density")
    for c in choices:
        assert (c.kernel == "csr") == (c.density < csr_crossover(1))
    assert any(c.kernel == "csr" for c in choices) or all(c.density >= csr_crossover(1) for c in choices)
    assert csr_crossover(1) == pytest.approx(0.05) and csr_crossover(128) == pytest.approx(0.2)
    assert csr_crossover(1) < csr_crossover(8) < csr_crossover(128) == csr_crossover(4096)


def test_sparse_linear_keeps_leading_dimensions_and_bias() -> None:
    w = torch.randn(5, 7) * (torch.rand(5, 7) < 0.3)
    b = torch.randn(5)
    layer = SparseLinear(w, b)
    x = torch.randn(2, 3, 7)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, w, b))
    assert layer.nnz == int((w != 0).sum()) and "kernel=csr" in repr(layer)


@pytest.mark.parametrize("bad", [{"how": "fastest"}, {"batch_size": 0}])
def test_bad_arguments_are_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="how must be|batch_size must be"):
        choose_kernels(_model(), **{"batch_size": 1, **bad})


@pytest.mark.parametrize("sparse", ["auto", "density"])
def test_bake_chooses_kernels_when_asked(sparse: str) -> None:
    model = _model(0.9)
    types = [type(m) for m in model.modules()]
    fast = tedepr_fx.bake(model, sparse=sparse, batch_size=4)
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)
    assert [type(m) for m in model.modules()] == types  # the input model is untouched
    assert any(isinstance(m, (FrozenLinear, SparseLinear)) for m in fast.modules()) or sparse == "density"
    with pytest.raises(ValueError, match="sparse must be"):
        tedepr_fx.bake(model, sparse="csr")


def test_convolutions_get_the_chain_or_a_rebuilt_conv2d_with_the_same_outputs() -> None:
    from tedepr_fx.models import lenet5

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tedepr_fx.transform(lenet5(), "rules/lenet5.yaml", verbose=False).eval()
    fast = tedepr_fx.bake(model)
    choices = {c.layer: c for c in choose_kernels(fast, 8, reps=3)}
    assert set(choices) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
    for name in ("conv1", "conv2"):
        assert set(choices[name].seconds) == {"chain", "dense"}
        layer = fast.get_submodule(name)
        assert (type(layer) is nn.Conv2d) == (choices[name].kernel == "dense")
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)


def test_an_lstm_gets_the_chain_or_a_rebuilt_nn_lstm_with_the_same_outputs() -> None:
    from tedepr_fx.models import LSTMClassifier

    torch.manual_seed(0)
    data = [(torch.randn(8, 28, 28), torch.randint(0, 10, (8,)))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tedepr_fx.transform(LSTMClassifier(input_size=28, hidden_size=32, num_classes=10, seq_len=28),
                                    "rules/lstm.yaml", data=data, verbose=False).eval()
    fast = tedepr_fx.bake(model)
    choices = {c.layer: c for c in choose_kernels(fast, 4, reps=3)}
    lstm = next(name for name in choices if name != "fc")
    assert set(choices[lstm].seconds) == {"chain", "dense"}
    assert (type(fast.get_submodule(lstm)) is nn.LSTM) == (choices[lstm].kernel == "dense")
    x = torch.randn(4, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)


def test_hugging_face_conv1d_layers_keep_their_outputs() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=100, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tedepr_fx.transform(transformers.GPT2LMHeadModel(cfg), "rules/transformer.yaml").eval()
    fast = tedepr_fx.bake(model)
    choices = choose_kernels(fast, 2, how="measure", reps=3)
    assert choices and all(c.kernel in ("chain", "dense", "csr") for c in choices)
    ids = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(fast(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_a_measured_csr_product_must_win_clearly() -> None:
    from tedepr_fx.kernels import CSR_MARGIN, _fastest

    assert _fastest({"chain": 1.0, "dense": 0.74, "csr": 0.70}) == "dense"  # a near tie: not CSR
    assert _fastest({"chain": 1.0, "dense": 0.74, "csr": 0.74 * CSR_MARGIN}) == "csr"
    assert _fastest({"chain": 0.5, "dense": 0.74, "csr": 0.45}) == "chain"
    assert _fastest({"chain": 0.5, "dense": 0.74}) == "chain"

