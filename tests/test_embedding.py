"""Embeddings as a layer kind: ``MaskedEmbedding`` (prune), the TT- / TR-embedding (factorize),
the rules that select them, and the scorers on them."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import tedepr_fx
from tedepr_fx.errors import LayerError
from tedepr_fx.formats.tr import TREmbedding
from tedepr_fx.handlers import EMBEDDING, kind_of
from tedepr_fx.layers import MaskedEmbedding, TTEmbedding

pytestmark = pytest.mark.usefixtures("one_thread")

FACTORIZED = [TTEmbedding, TREmbedding]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor (entries) any op produces while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.shape: tuple[int, ...] = ()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.shape = t.numel(), tuple(t.shape)
        return out


# --- the layer kind -----------------------------------------------------------------------------


def test_embedding_is_a_layer_kind_but_not_a_subclass_with_its_own_forward():
    class Scaled(nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) * 2.0

    class Plain(nn.Embedding):
        pass

    assert kind_of(nn.Embedding(10, 4)) is EMBEDDING and kind_of(Plain(10, 4)) is EMBEDDING
    assert kind_of(Scaled(10, 4)) is None  # its forward computes more than a lookup
    assert kind_of(MaskedEmbedding.from_embedding(nn.Embedding(10, 4))) is None  # built by us
    assert EMBEDDING.dense_shape(nn.Embedding(10, 4)) == (10, 4)
    assert EMBEDDING.dense_flops(nn.Embedding(10, 4), (2, 7)) == 0
    assert set(EMBEDDING.formats) == {"tt", "tr"}


# --- MaskedEmbedding ----------------------------------------------------------------------------


def test_masked_embedding_is_the_embedding_while_every_entry_is_kept():
    torch.manual_seed(0)
    dense = nn.Embedding(20, 6, padding_idx=3)
    masked = MaskedEmbedding.from_embedding(dense)
    assert masked.weight is dense.weight  # shared, not copied
    assert set(masked.state_dict()) == {"weight", "weight_mask"}
    ids = torch.tensor([[1, 3, 5], [3, 19, 0]])
    torch.testing.assert_close(masked(ids), dense(ids))
    masked(ids).sum().backward()
    assert torch.all(dense.weight.grad[3] == 0)  # the padding row gets no gradient
    assert dense.weight.grad[1].abs().sum() > 0


def test_pruned_entries_are_selected_out_even_when_inf_or_nan():
    torch.manual_seed(0)
    masked = MaskedEmbedding.from_embedding(nn.Embedding(8, 4))
    mask = torch.rand(8, 4) > 0.5
    masked.set_mask("weight", mask)
    with torch.no_grad():
        masked.weight[~mask] = float("nan")
        masked.weight[~mask & (torch.arange(4) % 2 == 0)] = float("inf")
    ids = torch.arange(8).reshape(2, 4)
    out = masked(ids)
    assert torch.isfinite(out).all()
    expected = torch.where(mask, masked.weight.detach(), 0)[ids]
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert torch.all(masked.weight.grad[~mask] == 0) and torch.all(masked.weight.grad[mask] == 1)
    torch.testing.assert_close(masked.to_dense(), torch.where(mask, masked.weight.detach(), 0))


def test_masked_embedding_accounting():
    masked = MaskedEmbedding.from_embedding(nn.Embedding(50, 8))
    mask = torch.zeros(50, 8, dtype=torch.bool)
    mask[:10] = True
    masked.set_mask("weight", mask)
    assert (masked.dense_params, masked.stored_params(), masked.kept_params()) == (400, 400, 80)
    assert masked.flops((4, 16)) == 0  # a lookup is a gather: no multiply-add


def test_max_norm_is_refused_with_a_clear_error():
    dense = nn.Embedding(10, 4, max_norm=1.0)
    with pytest.raises(ValueError, match="does not support max_norm"):
        MaskedEmbedding.from_embedding(dense)
    for cls in FACTORIZED:
        with pytest.raises(ValueError, match="does not support max_norm"):
            cls.from_embedding(dense, 2)
    model = nn.Sequential(dense)
    rules = {"version": 1, "rules": [{"name": "e", "match": {"type": "Embedding"}, "action": "prune"}]}
    with pytest.raises(LayerError, match="layer '0'.*max_norm"):
        tedepr_fx.transform(model, rules, example_inputs=(torch.tensor([[1, 2]]),))


# --- the TT- and TR-embedding -------------------------------------------------------------------


@pytest.mark.parametrize("cls", FACTORIZED)
@pytest.mark.parametrize("vocab,dim,modes,padding_idx", [
    (30, 6, "auto", None),
    (97, 10, "auto", 0),  # a prime vocabulary and dimension 10: both padded
    (60, 12, ([3, 4, 5], [2, 3, 2]), 59),
])
def test_full_rank_decomposition_is_exact(cls, vocab, dim, modes, padding_idx):
    torch.manual_seed(0)
    dense = nn.Embedding(vocab, dim, padding_idx=padding_idx).double()
    layer = cls.from_embedding(dense, "full", modes=modes, init="decompose")
    assert layer.core_0.dtype == torch.float64
    assert rel_err(layer.to_dense(), dense.weight) <= 1e-10
    ids = torch.randint(0, vocab, (3, 11))
    if padding_idx is not None:
        ids[0, :3] = padding_idx
    assert rel_err(layer(ids), dense(ids)) <= 1e-10
    assert layer(ids).shape == (3, 11, dim)
    assert layer.stored_params() == layer.fmt.stored_params((layer.in_modes, layer.out_modes), layer.ranks)
    assert layer.dense_params == vocab * dim


def test_tt_embedding_modes_ranks_and_counts():
    layer = TTEmbedding.from_embedding(nn.Embedding(1000, 32), 8, modes=([10, 10, 10], [4, 4, 2]))
    assert layer.ranks == [1, 8, 8, 1]
    assert layer.stored_params() == 10 * 4 * 8 + 8 * 10 * 4 * 8 + 8 * 10 * 2 == layer.kept_params()
    # per token: (1 x 4 x 8) @ (8 x 4*8), then (16 x 8) @ (8 x 2*1)
    assert layer.token_flops() == 2 * (4 * 8 * 4 * 8 + 16 * 8 * 2 * 1)
    assert layer.flops((2, 5)) == 10 * layer.token_flops()
    auto = TTEmbedding.from_embedding(nn.Embedding(1009, 30), 4)  # a prime vocabulary: padded
    assert math.prod(auto.in_modes) == 1009 + auto.in_pad and auto.in_pad > 0
    assert math.prod(auto.out_modes) == 30 + auto.out_pad and auto.out_pad > 0
    assert auto(torch.tensor([0, 1008])).shape == (2, 30)
    assert auto.to_dense().shape == (1009, 30)


@pytest.mark.parametrize("cls", FACTORIZED)
def test_scratch_table_has_the_embeddings_init_variance(cls):
    """N(0, 1) for nn.Embedding; a Hugging Face table's N(0, 0.02^2) scale is kept too."""
    seconds = []
    for seed in range(8):
        torch.manual_seed(seed)
        seconds.append(float(cls.from_embedding(nn.Embedding(2048, 64), 8).to_dense().pow(2).mean()))
    assert sum(seconds) / len(seconds) == pytest.approx(1.0, rel=0.25)
    hf = nn.Embedding(2048, 64)
    nn.init.normal_(hf.weight, std=0.02)
    torch.manual_seed(0)
    second = float(cls.from_embedding(hf, 8).to_dense().pow(2).mean())
    assert 0.4 * 0.02**2 < second < 2.5 * 0.02**2


@pytest.mark.parametrize("cls", FACTORIZED)
def test_a_large_vocabulary_lookup_never_builds_the_table(cls):
    """50,000 x 64 at rank 8: the largest tensor of a lookup (forward and backward) is a few
    entries per token, not the 3.2 M-entry table."""
    torch.manual_seed(0)
    layer = cls.from_embedding(nn.Embedding(50_000, 64, device="meta"), 8).to_empty(device="cpu")
    for p in layer.parameters():
        nn.init.normal_(p, std=0.3)
    ids = torch.randint(0, 50_000, (4, 32))
    with LargestOutput() as seen:
        out = layer(ids)
        out.square().sum().backward()
    tokens, table = ids.numel(), 50_000 * 64
    bound = max(math.prod(s) for s in layer.lookup_sizes(tokens))  # the running products
    assert seen.largest <= bound, seen.shape
    assert seen.largest <= tokens * layer.ranks[0] * 8 * 64 // layer.out_modes[-1] < table // 10
    print(f"{cls.__name__}: largest tensor of a {tokens}-token lookup {seen.shape} "
          f"({seen.largest} entries; the table has {table})")
    assert torch.isfinite(out).all() and out.shape == (4, 32, 64)


@pytest.mark.parametrize("cls", FACTORIZED)
def test_padding_row_is_zero_and_gets_no_gradient(cls):
    torch.manual_seed(0)
    layer = cls.from_embedding(nn.Embedding(40, 8, padding_idx=5), 3)
    assert torch.all(layer(torch.tensor([5, 5])) == 0) and torch.all(layer.to_dense()[5] == 0)
    layer(torch.tensor([[5, 5, 5]])).sum().backward()
    assert all(torch.all(p.grad == 0) for p in layer.parameters())
    layer.zero_grad()
    ids = torch.tensor([1, 5, 7, 5])
    (layer(ids) ** 2).sum().backward()
    with_padding = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    (layer(ids[ids != 5]) ** 2).sum().backward()
    for a, p in zip(with_padding, layer.parameters()):
        torch.testing.assert_close(a, p.grad)


@pytest.mark.parametrize("cls", FACTORIZED)
def test_core_masks_select_and_count(cls):
    torch.manual_seed(0)
    layer = cls.from_embedding(nn.Embedding(64, 16), 4, modes=([4, 4, 4], [2, 4, 2]))
    mask = torch.rand(layer.core_1.shape) > 0.4
    layer.set_mask("core_1", mask)
    with torch.no_grad():
        layer.core_1[~mask] = float("nan")
    ids = torch.arange(64)
    out = layer(ids)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.detach(), layer.to_dense())
    out.sum().backward()
    assert torch.all(layer.core_1.grad[~mask] == 0)
    assert layer.kept_params() == layer.stored_params() - int((~mask).sum())


def test_indices_are_checked():
    layer = TTEmbedding.from_embedding(nn.Embedding(30, 6), 2)  # the vocabulary is padded to 32
    with pytest.raises(IndexError, match="index out of range"):
        layer(torch.tensor([30]))
    with pytest.raises(IndexError, match="index out of range"):
        layer(torch.tensor([-1]))
    with pytest.raises(TypeError, match="long or int"):
        layer(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="scale_grad_by_freq"):
        TTEmbedding.from_embedding(nn.Embedding(30, 6, scale_grad_by_freq=True), 2)


# --- rules ----------------------------------------------------------------------------------------


class Classifier(nn.Module):
    """Token embedding, position embedding, mean pooling and a linear head."""

    def __init__(self, vocab: int = 120, dim: int = 16, classes: int = 4, length: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Embedding(length, dim)
        self.head = nn.Linear(dim, classes)
        self.register_buffer("positions", torch.arange(length))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos(self.positions[: ids.shape[1]])
        return self.head(x.mean(1))


def _rules(embed: dict, **defaults) -> dict:
    budget = {"sparsity": 0.5, "allocation": "uniform"}
    return {"version": 1, "defaults": {"scorer": "magnitude", "budget": budget, **defaults},
            "rules": [{"name": "embed", "match": {"type": "Embedding", "name": "embed"}, **embed},
                      {"name": "pos", "match": {"type": "Embedding"}, "action": "keep"},
                      {"name": "head", "match": {"type": "Linear"}, "action": "prune"}]}


def _ids(batch: int = 6, length: int = 10, vocab: int = 120, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("embed, new_type", [
    ({"action": "keep"}, "Embedding"),
    ({"action": "prune"}, "MaskedEmbedding"),
    ({"action": "factorize", "factorize": {"format": "tt", "rank": 4}}, "TTEmbedding"),
    ({"action": "factorize", "factorize": {"format": "tt", "rank": 4,
                                           "modes": {"in": [4, 5, 6], "out": [2, 4, 2]}}}, "TTEmbedding"),
    ({"action": "factorize", "factorize": {"format": "tr", "rank": 3}}, "TREmbedding"),
    ({"action": "factorize", "factorize": {"format": "tt", "rank": "auto"}, "budget": {"sparsity": 0.9}},
     "TTEmbedding"),
])
def test_rules_select_embeddings_and_plan_agrees_with_transform(embed, new_type):
    torch.manual_seed(0)
    model, ids = Classifier(), _ids()
    rules = _rules(embed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # strict too: every rule matches
        planned = tedepr_fx.plan(model, rules, example_inputs=(ids,), strict=True)
        out = tedepr_fx.transform(model, rules, example_inputs=(ids,), strict=True)
    done = tedepr_fx.report(out)
    assert not planned.unmatched and not done.unmatched
    row = {r.name: r for r in done.rows}["embed"]
    assert row.new_type == new_type and type(out.embed).__name__ == new_type
    assert (row.dense, row.dense_shape, row.flops_before) == (120 * 16, [120, 16], 0)
    for p, d in zip(planned.rows, done.rows):
        assert p.name == d.name
        for field in ("action", "new_type", "format", "in_modes", "out_modes", "ranks", "padding",
                      "dense", "stored", "flops_before", "flops_after", "auto_rank"):
            assert getattr(p, field) == getattr(d, field), (d.name, field)
    if new_type in ("TTEmbedding", "TREmbedding"):
        assert row.format == embed["factorize"]["format"]
        assert row.stored == out.embed.stored_params() < row.dense
        assert row.flops_after == ids.numel() * out.embed.token_flops() > 0
        assert row.ranks == out.embed.ranks and row.in_modes == out.embed.in_modes
    if "modes" in embed.get("factorize", {}):
        assert (row.in_modes, row.out_modes) == ([4, 5, 6], [2, 4, 2]) and not row.padding
    if embed.get("factorize", {}).get("rank") == "auto":
        # the largest rank whose cores hold <= 4 x the budget (0.1 x dense)
        target = 4 * 0.1 * row.dense
        assert row.auto_rank is not None and 1 < row.auto_rank and row.stored <= target
        bigger = TTEmbedding.from_embedding(nn.Embedding(120, 16), row.auto_rank + 1)
        assert bigger.stored_params() > target
    if new_type in ("MaskedEmbedding", "TTEmbedding", "TREmbedding"):
        assert row.kept == out.embed.kept_params()
    assert torch.isfinite(out(ids)).all()


def test_tiny_bert_factorizes_words_and_prunes_positions():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64))
    rules = {"version": 1,
             "defaults": {"scorer": "magnitude", "budget": {"sparsity": 0.5, "allocation": "uniform"}},
             "rules": [{"name": "words", "match": {"name": "embeddings.word_embeddings"},
                        "action": "factorize", "factorize": {"format": "tt", "rank": 8}},
                       {"name": "positions", "match": {"type": "Embedding", "name": "*position_embeddings"},
                        "action": "prune"}]}
    ids = torch.randint(1, 1000, (2, 12))
    out = tedepr_fx.transform(model, rules, example_inputs={"input_ids": ids}, strict=True)
    assert type(out.embeddings.word_embeddings) is TTEmbedding
    assert type(out.embeddings.position_embeddings) is MaskedEmbedding
    assert out.embeddings.word_embeddings.padding_idx == model.config.pad_token_id
    rows = {r.name: r for r in tedepr_fx.report(out).rows}
    assert rows["embeddings.word_embeddings"].stored < 1000 * 32
    assert rows["embeddings.position_embeddings"].kept == 64 * 32 // 2
    with torch.no_grad():
        hidden = out(input_ids=ids).last_hidden_state
    assert hidden.shape == (2, 12, 32) and torch.isfinite(hidden).all()


def test_gpt2_tied_word_embedding_stays_dense_with_the_tie_warning():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=1, n_head=2, vocab_size=100, n_positions=16))
    rules = {"version": 1, "defaults": {"scorer": "magnitude", "budget": {"sparsity": 0.5}},
             "rules": [{"name": "embeddings", "match": {"type": "Embedding"}, "action": "factorize",
                        "factorize": {"format": "tt", "rank": 4}}]}
    ids = torch.randint(0, 100, (2, 8))
    with pytest.warns(UserWarning, match=r"'transformer.wte' \(rule 'embeddings'\): its weight is tied "
                                         r"to lm_head.*kept dense"):
        out = tedepr_fx.transform(model, rules, example_inputs={"input_ids": ids})
    assert type(out.transformer.wte) is nn.Embedding and out.lm_head.weight is out.transformer.wte.weight
    assert type(out.transformer.wpe) is TTEmbedding  # the position embedding is not tied
    rows = {r.name: r for r in tedepr_fx.report(out).rows}
    assert rows["transformer.wte"].action == "keep" and "tied" in rows["transformer.wte"].note
    with torch.no_grad():
        assert torch.isfinite(out(input_ids=ids).logits).all()


# --- scorers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scorer", ["trainability", "snip", "synflow", "magnitude"])
@pytest.mark.parametrize("embed", [
    {"action": "prune"},
    {"action": "factorize", "factorize": {"format": "tt", "rank": 8}},
])
def test_scorers_mask_embeddings_at_sparsity_0_9(scorer, embed):
    torch.manual_seed(0)
    model = Classifier(vocab=200, dim=16)
    data = [(_ids(8, vocab=200, seed=s), torch.randint(0, 4, (8,))) for s in range(4)]
    rules = _rules(embed, scorer=scorer, budget={"sparsity": 0.9, "allocation": "uniform"})
    rules["scoring"] = {"batches": 4, "trainability": {"iterations": 2}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a collapse warning at this budget is not the point here
        out = tedepr_fx.transform(model, rules, data=data)
    layer = out.embed
    assert layer.stored_params() > 320  # the TT cores at rank 8 store more than the budget
    assert abs(layer.kept_params() - 0.1 * 200 * 16) <= 1
    row = {r.name: r for r in tedepr_fx.report(out).rows}["embed"]
    assert row.kept == layer.kept_params() and row.scored_by == scorer
    assert torch.isfinite(out(data[0][0])).all()


def test_the_documented_extension_of_the_transformer_policy_compresses_bert_embeddings(tmp_path):
    """docs/rules.md's example: extend transformer.yaml with embedding rules."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    policy = Path(tedepr_fx.__file__).resolve().parent / "policies" / "transformer.yaml"
    child = tmp_path / "embeddings.yaml"
    child.write_text(f"""
version: 1
extends: {policy}
rules:
  - name: token-embeddings
    match: {{type: Embedding, regex: '.*(word_embeddings|wte|embed_tokens|shared)'}}
    action: factorize
    factorize: {{format: tt, rank: 16, modes: auto}}
    budget: {{density: 0.5}}
  - name: other-embeddings
    match: {{type: Embedding}}
    action: keep
""")
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        planned = tedepr_fx.plan(model, child)
    rules = {r.name: r.rule for r in planned.rows}
    assert rules["embeddings.word_embeddings"] == "token-embeddings"
    assert rules["embeddings.position_embeddings"] == rules["embeddings.token_type_embeddings"] == "other-embeddings"
    assert not planned.unmatched
    row = {r.name: r for r in planned.rows}["embeddings.word_embeddings"]
    assert row.new_type == "TTEmbedding" and row.stored < row.dense


def test_compressed_embeddings_save_load_and_copy(tmp_path):
    torch.manual_seed(0)
    model, ids = Classifier(), _ids()
    rules = _rules({"action": "factorize", "factorize": {"format": "tt", "rank": 4}})
    rules["rules"][1]["action"] = "prune"  # the position embedding: a MaskedEmbedding
    out = tedepr_fx.transform(model, rules, example_inputs=(ids,)).eval()
    tedepr_fx.save(out, tmp_path / "m.pt")
    loaded = tedepr_fx.load(tmp_path / "m.pt", model=Classifier())
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), out(ids))
        torch.testing.assert_close(copy.deepcopy(out)(ids), out(ids))
    assert type(loaded.embed) is TTEmbedding and type(loaded.pos) is MaskedEmbedding
    assert tedepr_fx.report(loaded).rows == tedepr_fx.report(out).rows
