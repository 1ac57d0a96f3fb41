"""``tedepr_fx.compact``: dead rank slices go, outputs stay, the model still trains, the record follows."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from zoo_cases import CASES, output

import tedepr_fx
from tedepr_fx.compaction import NOTE, CompactionRecord, compact
from tedepr_fx.errors import LayerError
from tedepr_fx.formats.tr import TRConv2d, TRLinear
from tedepr_fx.layers import MaskedMixin, iter_masked
from tedepr_fx.layers.embedding import TTEmbedding
from tedepr_fx.layers.tt import TTConv2d, TTLinear
from tedepr_fx.layers.tt_lstm import TTLSTM
from tedepr_fx.layers.tucker import Tucker2Conv2d, TuckerLinear
from tedepr_fx.models import LeNet5, LeNet300100

pytestmark = pytest.mark.usefixtures("one_thread")


def _same(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to the rounding of a sum over fewer (zero-free) terms."""
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def _half_pruned(layer: nn.Module, seed: int = 0) -> nn.Module:
    """``layer`` with a random half of every factor's entries pruned."""
    gen = torch.Generator().manual_seed(seed)
    assert isinstance(layer, MaskedMixin)
    for name in layer.prunable:
        layer.set_mask(name, torch.rand(getattr(layer, name).shape, generator=gen) < 0.5)
    return layer


def _prune(layer: nn.Module, name: str, index: tuple[object, ...]) -> None:
    """Prune ``getattr(layer, name)[index]`` (a whole slice) on top of the current mask."""
    assert isinstance(layer, MaskedMixin)
    mask = layer.get_mask(name).clone()
    mask[index] = False
    layer.set_mask(name, mask)


def _masks(layer: nn.Module) -> dict[str, torch.Tensor]:
    assert isinstance(layer, MaskedMixin)
    return {n: layer.get_mask(n).clone() for n in layer.prunable}


def _trains(model: nn.Module, x: torch.Tensor) -> None:
    """One SGD step changes the output, and every pruned entry stays exactly zero in effect."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model(x).detach()
    model(x).square().sum().backward()
    opt.step()
    assert not torch.equal(model(x).detach(), before)
    for _, module, name in iter_masked(model):
        assert isinstance(module, MaskedMixin)
        assert not module.masked(name)[~module.get_mask(name)].any()


# --- hand-made dead slices, one layer kind each ---------------------------------------------------


def test_tt_linear_loses_the_bond_index_whose_core_slice_is_pruned():
    torch.manual_seed(0)
    layer = TTLinear(16, 12, [4, 4], [3, 4], [1, 5, 1]).train()
    _prune(layer, "core_1", (2,))  # bond index 2 enters core_1 nowhere
    before = _masks(layer)
    x = torch.randn(7, 16)
    small, records = compact(layer)
    assert records == [CompactionRecord("(root)", "TTLinear", [1, 5, 1], [1, 4, 1])]
    assert isinstance(small, TTLinear) and small.ranks == [1, 4, 1] and small.core_0.shape == (1, 4, 3, 4)
    _same(small(x), layer(x))
    dropped = int(layer.get_mask("core_0")[..., 2].sum())  # kept entries that led to index 2
    assert small.training and small.kept_params() == layer.kept_params() - dropped > 0
    assert layer.ranks == [1, 5, 1] and all(torch.equal(before[n], m) for n, m in _masks(layer).items())
    _trains(small, x)


def test_compaction_iterates_until_no_slice_of_a_neighbouring_bond_dies():
    torch.manual_seed(0)
    layer = TTLinear(8, 8, [2, 2, 2], [2, 2, 2], [1, 3, 3, 1])
    mask = torch.zeros(3, 2, 2, 3, dtype=torch.bool)
    mask[0, ..., 2] = True  # bond-1 index 0 reaches bond-2 only through index 2 ...
    mask[1:, ..., :2] = True
    layer.set_mask("core_1", mask)
    _prune(layer, "core_2", (2,))  # ... which core_2 prunes: both go
    x = torch.randn(5, 8)
    small, records = compact(layer)
    assert records[0].ranks_after == [1, 2, 2, 1] and not records[0].dead
    _same(small(x), layer(x))


def test_tucker_linear_loses_a_dead_factor_column_and_a_dead_core_fibre():
    torch.manual_seed(0)
    layer = _half_pruned(TuckerLinear(10, 8, [3, 4]))
    assert all(bool(m.any()) for m in _masks(layer).values())
    _prune(layer, "factor_out", (slice(None), 1))  # r_out index 1: its output column
    _prune(layer, "core", (slice(None), 0))  # r_in index 0: its core fibre
    x = torch.randn(6, 10)
    small, records = compact(layer)
    assert records[0].ranks_after == [2, 3] and small.ranks == [2, 3]
    assert (small.factor_out.shape, small.core.shape, small.factor_in.shape) == ((8, 2), (2, 3), (10, 3))
    _same(small(x), layer(x))
    _trains(small, x)


def test_tucker_conv_loses_a_dead_input_column_and_keeps_its_geometry():
    torch.manual_seed(0)
    layer = Tucker2Conv2d(4, 6, 3, [3, 3], stride=2, padding=1, padding_mode="reflect")
    _prune(layer, "factor_in", (slice(None), 2))
    _prune(layer, "core", (0,))
    x = torch.randn(2, 4, 9, 9)
    small, records = compact(layer)
    assert records[0].ranks_after == [2, 2] and isinstance(small, Tucker2Conv2d)
    assert (small.stride, small.padding, small.padding_mode) == ((2, 2), (1, 1), "reflect")
    _same(small(x), layer(x))
    _trains(small, x)


def test_tt_conv_loses_a_dead_spatial_filter_and_a_dead_channel_bond():
    torch.manual_seed(0)
    layer = TTConv2d(8, 6, 3, [2, 4], [2, 3], [1, 4, 3, 1], padding=1)
    spatial = layer.get_mask("core_0").clone().reshape(1, 4, 9)
    spatial[:, 1] = False  # filter b = 1 of the spatial core
    layer.set_mask("core_0", spatial.reshape(4, 1, 3, 3))
    _prune(layer, "core_2", (0,))  # channel bond index 0
    x = torch.randn(2, 8, 5, 5)
    small, records = compact(layer)
    assert records[0].ranks_after == [1, 3, 2, 1] and small.core_0.shape == (3, 1, 3, 3)
    _same(small(x), layer(x))
    _trains(small, x)


def test_tensor_ring_loses_an_index_of_its_closing_bond():
    torch.manual_seed(0)
    layer = TRLinear(12, 8, [3, 4], [2, 4], [3, 2, 3])
    _prune(layer, "core_1", (..., 0))  # the last core's right slice: closing bond index 0
    x = torch.randn(4, 12)
    small, records = compact(layer)
    assert records[0].ranks_after == [2, 2, 2] and isinstance(small, TRLinear)
    _same(small(x), layer(x))
    _trains(small, x)


def test_tr_conv_loses_an_index_of_its_closing_bond_through_the_spatial_core():
    torch.manual_seed(0)
    layer = TRConv2d(4, 4, 3, [2, 2], [2, 2], [2, 3, 2, 2])
    spatial = layer.get_mask("core_0").clone().reshape(2, 3, 9)
    spatial[1] = False  # every filter (a = 1, b)
    layer.set_mask("core_0", spatial.reshape(6, 1, 3, 3))
    x = torch.randn(2, 4, 6, 6)
    small, records = compact(layer)
    assert records[0].ranks_after == [1, 3, 2, 1] and small.core_0.shape == (3, 1, 3, 3)
    _same(small(x), layer(x))


def test_tt_embedding_compacts_with_the_same_lookups():
    torch.manual_seed(0)
    layer = TTEmbedding(20, 6, [4, 5], [2, 3], [1, 4, 1], padding_idx=3)
    _prune(layer, "core_0", (..., 3))
    ids = torch.tensor([[0, 3, 19], [7, 7, 1]])
    small, records = compact(layer)
    assert records[0].ranks_after == [1, 3, 1] and small.padding_idx == 3
    _same(small(ids), layer(ids))


def test_tt_lstm_compacts_each_map_as_its_own_chain():
    torch.manual_seed(0)
    layer = TTLSTM.from_lstm(nn.LSTM(8, 16, num_layers=2), rank=4, hidden_to_hidden=True)
    _prune(layer, "ih_l0_core_0", (..., 1))  # ih_l0 loses bond index 1
    _prune(layer, "hh_l1_core_1", (...,))  # hh_l1 has no path left
    x = torch.randn(5, 3, 8)
    small, records = compact(layer)
    (r,) = records
    assert r.maps_before == dict.fromkeys(["ih_l0", "ih_l1", "hh_l0", "hh_l1"], [1, 4, 1])
    assert r.maps_after == {"ih_l0": [1, 3, 1], "ih_l1": [1, 4, 1], "hh_l0": [1, 4, 1], "hh_l1": [1, 1, 1]}
    assert r.ranks_after == [1, 3, 1] and r.dead and r.dead_maps == ["hh_l1"] and "dead maps hh_l1" in r.note
    assert [m["ranks"] for m in small.maps] == [[1, 3, 1], [1, 4, 1], [1, 4, 1], [1, 1, 1]]
    out, (h, c) = small(x)
    ref, (h_ref, c_ref) = layer(x)
    for got, want in ((out, ref), (h, h_ref), (c, c_ref)):
        _same(got, want)
    out.square().sum().backward()
    assert small.ih_l0_core_0.grad is not None and small.bias_l1.grad is not None


# --- what stays the same --------------------------------------------------------------------------


def test_a_layer_without_dead_slices_is_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(_half_pruned(TTLinear(16, 12, [4, 4], [3, 4], [1, 3, 1])), nn.ReLU())
    copy_, records = compact(model)
    assert [(r.ranks_before, r.ranks_after, r.compacted) for r in records] == [([1, 3, 1], [1, 3, 1], False)]
    assert copy_ is not model and copy_[0].ranks == [1, 3, 1]
    same, _ = compact(model, inplace=True)
    assert same is model


def test_a_dead_layer_keeps_rank_one_everything_pruned_and_outputs_its_bias():
    torch.manual_seed(0)
    layer = TTLinear(16, 12, [4, 4], [3, 4], [1, 4, 1])
    _prune(layer, "core_0", (...,))
    x = torch.randn(3, 16)
    small, records = compact(layer)
    assert records[0].dead and records[0].ranks_after == [1, 1, 1] and "dead" in records[0].note
    assert small.kept_params() == 0
    _same(small(x), layer.bias.detach().expand(3, 12))


def test_inplace_compacts_the_model_itself_and_a_shared_layer_once():
    torch.manual_seed(0)
    shared = TuckerLinear(8, 8, [4, 4])
    _prune(shared, "core", (3,))
    model = nn.Sequential(shared, nn.Tanh(), shared)
    x = torch.randn(2, 8)
    ref = model(x).detach()
    out, records = compact(model, inplace=True)
    assert out is model and len(records) == 1 and records[0].ranks_after == [3, 4]
    assert model[0] is model[2] and model[0].ranks == [3, 4]
    _same(model(x), ref)


def test_a_baked_layer_stays_baked_and_compacts_by_its_zeros():
    torch.manual_seed(0)
    layer = TTLinear(16, 12, [4, 4], [3, 4], [1, 5, 1])
    _prune(layer, "core_0", (..., 1))
    layer.bake_masks()
    x = torch.randn(3, 16)
    small, records = compact(layer)
    assert records[0].ranks_after == [1, 4, 1] and isinstance(small, MaskedMixin) and small.baked
    _same(small(x), layer(x))


def test_a_float_mask_is_an_error_naming_the_layer():
    model = nn.Sequential(TTLinear(16, 12, [4, 4], [3, 4], [1, 3, 1]))
    model[0].core_0_mask = torch.ones(1, 4, 3, 3)  # a scorer's differentiable mask left in place
    with pytest.raises(LayerError, match="layer '0'.*core_0.*not bool"):
        compact(model)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_zoo_family_compacts_with_identical_outputs(case):
    model, x = CASES[case]()
    ref = output(model, x)
    compacted, records = compact(model)
    assert records  # every case holds factorized layers
    for r in records:
        assert all(a <= b for a, b in zip(r.ranks_after, r.ranks_before, strict=True))
        assert compacted.get_submodule(r.name).tedepr_info["ranks"] == r.ranks_after
    _same(output(compacted, x), ref)


# --- transformed zoo models: the record and the report follow -------------------------------------


def _transformed(model: nn.Module, rules: object, x: torch.Tensor) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collapse and cost warnings at this extreme budget
        return tedepr_fx.transform(model, rules, example_inputs=(x,), verbose=False)


def test_lenet300100_at_sparsity_0999_compacts_with_identical_outputs_and_report():
    torch.manual_seed(0)
    rules = {"version": 1, "defaults": {"budget": {"sparsity": 0.999}, "scorer": "magnitude"},
             "rules": [{"name": "tt", "match": {"name": "fc[12]"}, "action": "factorize",
                        "factorize": {"format": "tt", "rank": 16}},
                       {"name": "rest", "match": {"type": "Linear"}, "action": "prune"}]}
    model = LeNet300100()
    x = model.example_input(8)
    small = _transformed(model, rules, x)
    state = {k: v.clone() for k, v in small.state_dict().items()}
    compacted, records = compact(small)
    assert [r.name for r in records] == ["fc1", "fc2"]
    for r in records:  # 0.1 % of the weights cannot fill 15 + 15 bond indices on both sides
        assert all(a <= b for a, b in zip(r.ranks_after, r.ranks_before)) and sum(r.ranks_after) < 34
    _same(compacted(x), small(x))
    assert small.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in small.state_dict().items())  # input untouched
    rows = {r.name: r for r in tedepr_fx.report(compacted).rows}
    old = {r.name: r for r in tedepr_fx.report(small).rows}
    for r in records:
        assert rows[r.name].ranks == r.ranks_after == compacted.get_submodule(r.name).ranks
        assert rows[r.name].note.startswith(f"{NOTE} [1,16,16,1]")
        assert rows[r.name].stored < old[r.name].stored and rows[r.name].kept <= old[r.name].kept
        assert rows[r.name].flops_after < old[r.name].flops_after
        ratio = rows[r.name].flops_after / rows[r.name].flops_before
        assert (f"{ratio:.2f}x the dense FLOPs" in rows[r.name].note) == (ratio > 1)
        assert rows[r.name].note.count("x the dense FLOPs") <= 1
    assert copy.deepcopy(compacted).get_submodule("fc1").ranks == records[0].ranks_after
    compacted.train()
    _trains(compacted, x)


def test_lenet5_shipped_policy_at_sparsity_0999_compacts_with_identical_outputs():
    torch.manual_seed(0)
    rules = tedepr_fx.load_rules("rules/lenet5.yaml").with_budget(sparsity=0.999).with_scorer("magnitude")
    model = LeNet5()
    x = model.example_input(4)
    small = _transformed(model, rules, x)
    compacted, records = compact(small)
    assert {r.layer_type for r in records} == {"Tucker2Conv2d", "TTLinear"}
    for r in records:
        module, old = compacted.get_submodule(r.name), small.get_submodule(r.name)
        assert module.ranks == r.ranks_after
        if not r.compacted:  # a layer without dead slices comes through as it was
            assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), old.state_dict().values()))
    _same(compacted(x), small(x))
    assert tedepr_fx.report(compacted).totals["kept"] == tedepr_fx.report(small).totals["kept"]
