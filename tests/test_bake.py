"""``tedepr_fx.bake`` and ``tedepr_fx.densify`` on every zoo family, every layer kind and a tiny
Hugging Face BERT; and what ``load_state_dict`` says when it would revive pruned entries."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from zoo_cases import CASES, mixed, quiet_transform
from zoo_cases import output as _out

import tedepr_fx
from tedepr_fx.errors import LayerError
from tedepr_fx.layers import MaskedMixin, iter_masked
from tedepr_fx.layers.masked import RevivedWarning
from tedepr_fx.record import RECORD_ATTR

pytestmark = pytest.mark.usefixtures("one_thread")

DENSE_TYPES = (nn.Linear, nn.Conv2d, nn.LSTM, nn.Embedding)


def _same(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to the last bit a GEMM may flip: MKL's results depend on buffer alignment."""
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _pruned(model: nn.Module) -> int:
    return sum(int((~m.get_mask(n)).sum()) for _, m, n in iter_masked(model))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bake_removes_masks_and_keeps_outputs_identical(case):
    model, x = CASES[case]()
    assert _pruned(model) > 0
    before, ref = _state(model), _out(model, x)
    kinds = {type(m).__name__ for _, m, _ in iter_masked(model)}
    baked = tedepr_fx.bake(model)
    _same(_out(baked, x), ref)
    assert not [n for n, b in baked.named_buffers() if n.endswith("_mask") or b.dtype == torch.bool]
    assert not [n for n, b in copy.deepcopy(baked).named_buffers() if n.endswith("_mask")]
    assert {type(m).__name__ for _, m, _ in iter_masked(baked)} == kinds  # still factorized
    for _, module, name in iter_masked(model):  # pruned entries are exactly zero in the copy
        twin = baked.get_submodule(_qualname(model, module))
        assert not getattr(twin, name)[~module.get_mask(name)].any()
    after = model.state_dict()  # the caller's model is untouched
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # the record stays; kept now counts nonzero entries (a kept entry holding 0 reads as pruned)
    kept = [r.kept for r in tedepr_fx.report(model).rows]
    baked_kept = [r.kept for r in tedepr_fx.report(baked).rows]
    assert all(b <= k for b, k in zip(baked_kept, kept, strict=True))
    assert sum(kept) - sum(baked_kept) == _zero_kept(model)


def _qualname(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _zero_kept(model: nn.Module) -> int:
    """Kept entries that hold exactly 0 (a baked model cannot tell them from pruned ones)."""
    return sum(int((m.get_mask(n) & (getattr(m, n) == 0)).sum()) for _, m, n in iter_masked(model))


@pytest.mark.parametrize("case", sorted(CASES))
def test_densify_gives_dense_torch_layers_with_the_same_outputs(case):
    model, x = CASES[case]()
    ref = _out(model, x)
    dense = tedepr_fx.densify(model)
    assert not [n for n, m in dense.named_modules() if isinstance(m, MaskedMixin)]
    assert not [n for n, m in copy.deepcopy(dense).named_modules() if isinstance(m, MaskedMixin)]
    assert not any(n.endswith("_mask") for n, _ in dense.named_buffers())
    assert any(type(m) in DENSE_TYPES for m in dense.modules())
    out = _out(dense, x)
    err = (out - ref).abs().max() / ref.abs().max()
    assert err < 1e-5, f"max relative error {err:.2e}"
    assert not hasattr(dense, RECORD_ATTR) and hasattr(model, RECORD_ATTR)
    with pytest.raises(ValueError, match="not produced by tedepr_fx.transform"):
        tedepr_fx.report(dense)
    assert any(isinstance(m, MaskedMixin) for m in model.modules())  # the caller's model is untouched
    dense.train()
    _out(dense, x).pow(2).mean().backward()
    assert all(m.weight.grad is not None for m in dense.modules() if type(m) in (nn.Linear, nn.Conv2d))


def test_a_densified_model_can_be_transformed_again():
    model, x = CASES["lenet5"]()
    again = quiet_transform(tedepr_fx.densify(model), "lenet5", x[0])
    assert {r.name for r in tedepr_fx.report(again).rows} == {r.name for r in tedepr_fx.report(model).rows}
    assert _pruned(again) > 0


def test_densify_of_each_layer_kind_names_the_dense_type():
    model, _ = mixed()
    dense = tedepr_fx.densify(model)
    kinds = {name: type(dense.get_submodule(name)) for name in ("tok", "pos", "typ", "lstm", "conv_tt",
                                                                 "conv_tr", "head")}
    assert kinds == {"tok": nn.Embedding, "pos": nn.Embedding, "typ": nn.Embedding, "lstm": nn.LSTM,
                     "conv_tt": nn.Conv2d, "conv_tr": nn.Conv2d, "head": nn.Linear}
    assert dense.pos.padding_idx == 0 and dense.conv_tr.stride == (2, 2) and dense.conv_tr.bias is None


def test_densify_of_a_hugging_face_conv1d_layout_transposes_to_linear():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(
        n_embd=32, n_layer=1, n_head=4, n_positions=16, vocab_size=50, bos_token_id=0, eos_token_id=0)).eval()
    x = torch.randint(0, 50, (2, 6))
    rules = {"version": 1, "defaults": {"scorer": "magnitude", "budget": {"sparsity": 0.5}},
             "rules": [{"name": "attn", "match": {"name": "*.c_attn"}, "action": "factorize",
                        "factorize": {"format": "tt", "rank": 4}},
                       {"name": "rest", "match": {"type": "Conv1D"}, "action": "prune"}]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tedepr_fx.transform(gpt2, rules, example_inputs=(x,), verbose=False)
    dense = tedepr_fx.densify(model)
    assert type(dense.get_submodule("h.0.attn.c_attn")) is nn.Linear
    assert type(dense.get_submodule("h.0.mlp.c_fc")) is nn.Linear
    torch.testing.assert_close(dense(x).last_hidden_state, model(x).last_hidden_state, rtol=1e-5, atol=1e-5)


def test_bake_zeroes_inf_and_nan_stored_in_pruned_entries():
    model, x = CASES["lenet"]()
    ref = _out(model, x)
    _, module, name = next(t for t in iter_masked(model) if not t[1].get_mask(t[2]).all())
    pruned = ~module.get_mask(name)
    with torch.no_grad():
        getattr(module, name)[pruned] = float("inf")
        getattr(module, name).view(-1)[pruned.view(-1).nonzero()[0]] = float("nan")
    _same(_out(model, x), ref)  # selected, never multiplied: no NaN
    baked = tedepr_fx.bake(model)
    twin = baked.get_submodule(_qualname(model, module))
    assert torch.equal(getattr(twin, name)[pruned], torch.zeros(int(pruned.sum())))
    _same(_out(baked, x), ref)
    assert torch.isfinite(tedepr_fx.densify(model)(*x)).all()


def test_bake_inplace_returns_the_same_model_and_cannot_set_masks_after():
    model, x = CASES["lenet5"]()
    ref = _out(model, x)
    assert tedepr_fx.bake(model, inplace=True) is model
    _same(_out(model, x), ref)
    _, module, name = next(iter(iter_masked(model)))
    with pytest.raises(ValueError, match="baked"):
        module.set_mask(name, torch.ones_like(getattr(module, name), dtype=torch.bool))
    assert tedepr_fx.bake(model) is not model  # baking a baked model is a copy, nothing else


def test_bake_refuses_a_float_mask_naming_the_layer():
    model, _ = CASES["lenet"]()
    qual, module, name = next(iter(iter_masked(model)))
    setattr(module, f"{name}_mask", torch.ones_like(getattr(module, name)))
    with pytest.raises(LayerError, match=f"{qual}.*not bool"):
        tedepr_fx.bake(model)


def test_densify_refuses_a_masked_layer_it_does_not_know():
    class Odd(MaskedMixin, nn.Module):
        prunable = ("w",)

        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))
            self.init_masks()

    with pytest.raises(LayerError, match="'odd'.*Odd has no dense equivalent"):
        tedepr_fx.densify(nn.ModuleDict({"linear": nn.Linear(3, 3), "odd": Odd()}))


def test_densify_keeps_a_shared_layer_shared():
    layer = nn.Linear(8, 8)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    x = torch.randn(2, 8)
    rules = {"version": 1, "defaults": {"scorer": "magnitude", "budget": {"sparsity": 0.5}},
             "rules": [{"name": "all", "match": {"type": "Linear"}, "action": "prune"}]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = tedepr_fx.transform(model, rules, example_inputs=(x,), verbose=False)
    shared = {id(out.get_submodule(n)) for n in ("0", "2") if n in dict(out.named_modules())}
    dense = tedepr_fx.densify(out)
    assert len({id(dense.get_submodule(n)) for n in ("0", "2") if n in dict(dense.named_modules())}) == len(shared)
    torch.testing.assert_close(dense(x), out(x))


# --- load_state_dict and pruned entries (issue 15) ------------------------------------------------


def test_loading_a_mask_that_revives_pruned_entries_warns_and_loads():
    model, x = CASES["lenet"]()
    qual, module, name = next(t for t in iter_masked(model) if not t[1].get_mask(t[2]).all())
    state = model.state_dict()
    state[f"{qual}.{name}_mask"] = torch.ones_like(state[f"{qual}.{name}_mask"])
    pruned = int((~module.get_mask(name)).sum())
    with pytest.warns(RevivedWarning, match=f"{qual}: the mask of '{name}' keeps {pruned} entries that were pruned") \
            as record:
        model.load_state_dict(state)
    assert {w.filename for w in record} == {__file__}  # points at the caller's line, not at torch
    assert bool(module.get_mask(name).all())  # loaded as asked


def test_loading_a_dense_copy_without_masks_warns_and_keeps_entries_pruned():
    model, x = CASES["lenet"]()
    ref = _out(model, x)
    dense_copy = {k: (v.clone().fill_(1.0) if v.is_floating_point() else v)
                  for k, v in model.state_dict().items() if not k.endswith("_mask")}
    with pytest.warns(RevivedWarning, match="comes without its mask and writes .* nonzero values into pruned"):
        model.load_state_dict(dense_copy, strict=False)
    assert _pruned(model) > 0 and not torch.equal(_out(model, x), ref)


def test_loading_the_same_or_a_sparser_state_is_silent():
    model, x = CASES["lenet5"]()
    fresh = copy.deepcopy(model)
    for _, module, name in iter_masked(fresh):
        module.set_mask(name, torch.ones_like(module.get_mask(name)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RevivedWarning)
        model.load_state_dict(model.state_dict())
        fresh.load_state_dict(model.state_dict())  # a pruned checkpoint into a not yet pruned model
    _same(_out(fresh, x), _out(model, x))
