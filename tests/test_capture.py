"""Capture: tracing, the sub-module fallback, functional layers, attention splitting."""

import copy
import pickle

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import tedepr_fx
from tedepr_fx.capture import capture
from tedepr_fx.errors import CaptureError
from tedepr_fx.layers.attention import SplitMultiheadAttention


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(16, 8))
        self.b1 = nn.Parameter(torch.zeros(16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(F.relu(F.linear(x, self.w1, self.b1)))


class Untraceable(nn.Module):
    """Value-dependent control flow at the root; a traceable block inside."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        if x.sum() > 1e9:  # data-dependent: fx cannot trace this
            x = x * 0
        return self.head(self.block(x))


def test_sequential_traces_as_one_graph():
    cap = capture(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), (torch.randn(3, 4),))
    assert isinstance(cap.module, fx.GraphModule)
    assert [(s.name, s.how) for s in cap.sites] == [("0", "graph"), ("2", "graph")]
    assert cap.input_shapes == {"0": (3, 4), "2": (3, 8)}


def test_functional_linear_is_a_layer_with_its_input_shape():
    cap = capture(FunctionalNet(), (torch.randn(5, 8),))
    sites = {s.name: s for s in cap.sites}
    assert sites["w1"].functional and sites["w1"].kind.name == "linear"
    assert cap.input_shapes["w1"] == (5, 8)
    view = sites["w1"].get()
    assert view.weight is cap.module.w1 and view.bias is cap.module.b1


def test_untraceable_root_falls_back_to_traced_submodules():
    model = Untraceable()
    x = torch.randn(4, 8)
    expected = model(x)
    cap = capture(model, (x,))
    regions = {r.name: r for r in cap.regions}
    assert regions[""].mode == "swap" and regions[""].reason.startswith("data-dependent control flow")
    assert "TraceError" in regions[""].detail and "TraceError" in regions[""].as_dict()["detail"]
    assert regions["block"].mode == "graph"
    assert isinstance(cap.module.block, fx.GraphModule)
    assert {s.name: s.how for s in cap.sites} == {"block.0": "graph", "block.2": "graph", "head": "swap"}
    torch.testing.assert_close(cap.module(x), expected)


def test_graph_module_keeps_unused_members_through_deepcopy_and_pickle():
    model = FunctionalNet()
    model.unused = nn.Linear(2, 2)
    model.note = "kept"
    names = [n for n, _ in model.named_parameters()]
    gm = capture(model, (torch.randn(2, 8),)).module
    for clone in (copy.deepcopy(gm), pickle.loads(pickle.dumps(gm))):
        assert [n for n, _ in clone.named_parameters()] == names
        assert clone.note == "kept"


def test_wrong_example_inputs_name_the_layer():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(CaptureError, match=r"shapes \[\(3, 5\)\].*layer '0' failed"):
        capture(model, (torch.randn(3, 5),))


def test_dropout_baked_in_train_mode_is_not_used_as_a_graph():
    class BakesTraining(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return F.dropout(self.fc(x), p=0.5, training=self.training)

    class Root(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = BakesTraining()

        def forward(self, x):
            if x.sum() > 1e9:
                return x
            return self.inner(x)

    cap = capture(Root().train(), (torch.randn(2, 8),))
    regions = {r.name: r for r in cap.regions}
    # a graph traced in train mode would keep dropout on in eval mode: it must be refused
    assert regions["inner"].mode == "swap"
    assert not isinstance(cap.module.inner, fx.GraphModule)


def test_multihead_attention_projections_are_sites_and_split_exactly():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0).eval()
    x = torch.randn(2, 5, 16)
    expected = layer(x)
    model = nn.Sequential(layer)
    cap = capture(model, (x,))
    names = [s.name for s in cap.sites]
    assert names[:4] == ["0.self_attn.q_proj", "0.self_attn.k_proj", "0.self_attn.v_proj",
                         "0.self_attn.out_proj"]
    # reading a projection has no side effect: the packed attention stays as it is
    q = cap.sites[0].get()
    assert isinstance(q, nn.Linear) and tuple(q.weight.shape) == (16, 16)
    assert type(cap.module.get_submodule("0.self_attn")) is nn.MultiheadAttention
    torch.testing.assert_close(q.weight, layer.self_attn.in_proj_weight[:16])
    # replacing one splits the attention, with identical outputs
    cap.sites[1].set(copy.deepcopy(cap.sites[1].get()))
    assert isinstance(cap.module.get_submodule("0.self_attn"), SplitMultiheadAttention)
    torch.testing.assert_close(cap.module(x), expected, rtol=1e-5, atol=1e-6)


def test_keeping_every_projection_leaves_multihead_attention_unsplit():
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0).eval()
    rules = {"version": 1, "rules": [{"name": "attn", "match": {"name": "*.self_attn.*"},
                                      "action": "keep"}]}
    out = tedepr_fx.transform(nn.Sequential(layer), rules, example_inputs=(torch.randn(2, 5, 16),))
    assert type(out.get_submodule("0.self_attn")) is nn.MultiheadAttention


def test_weight_tied_to_an_embedding_is_shared_in_transform_and_plan():
    class TiedHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.head = nn.Linear(16, 50, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(self.embed(ids))

    ids = torch.randint(0, 50, (2, 7))
    # the embedding is a layer kind too: both holders see the tie
    assert ({s.name: s.shared_with for s in capture(TiedHead(), (ids,)).sites}
            == {"embed": ("head",), "head": ("embed",)})
    rules = {"version": 1, "rules": [{"name": "head", "match": {"name": "head"}, "action": "prune"}],
             "defaults": {"scorer": "magnitude", "budget": {"sparsity": 0.5}}}
    # a tied weight is never split: the layer is kept dense, with a warning naming the group
    with pytest.warns(UserWarning, match=r"'head' \(rule 'head'\): its weight is tied to embed "
                                         r"\(tied group: embed, head\).*kept dense"):
        out = tedepr_fx.transform(TiedHead(), rules, example_inputs=(ids,))
    assert out.head.weight is out.embed.weight and type(out.head) is nn.Linear
    with pytest.warns(UserWarning, match="tied group: embed, head"):
        row, = tedepr_fx.plan(TiedHead(), rules, example_inputs=(ids,)).rows
    assert (row.action, row.kept, row.dense) == ("keep", 800, 800) and "tied" in row.note


def test_tied_weights_are_marked_shared():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    cap = capture(Tied(), (torch.randn(2, 4),))
    shared = {s.name: s.shared_with for s in cap.sites}
    assert shared == {"a": ("b",), "b": ("a",)}


def test_hugging_face_bert_traces_its_traceable_blocks():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, vocab_size=100)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 100, (2, 7))
    expected = model(ids).last_hidden_state
    cap = capture(model, (ids,))
    regions = {r.name: r.mode for r in cap.regions}
    assert regions[""] == "swap"
    assert regions["encoder.layer.0.intermediate"] == "graph"
    # q, k, v, attention out, intermediate, output; pooler; word, position and token-type embeddings
    assert len(cap.sites) == 2 * 6 + 1 + 3
    torch.testing.assert_close(cap.module(ids).last_hidden_state, expected)


def test_functional_weight_read_twice_is_not_a_layer():
    class TiedInCode(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return F.linear(F.linear(x, self.w), self.w)

    cap = capture(TiedInCode(), (torch.randn(2, 4),))
    assert cap.sites == []


def test_traced_graph_reads_no_layer_attribute_besides_calling_it():
    # a leaf check that read module.weight during tracing would leave get_attr nodes behind
    # (and a GraphModule that no longer unpickles once the layer's weight is a property)
    cap = capture(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), (torch.randn(2, 4),))
    assert [n.op for n in cap.module.graph.nodes] == [
        "placeholder", "call_module", "call_module", "call_module", "output"]
