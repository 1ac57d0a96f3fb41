"""Issue 11's headline: ``tedepr_fx.transform(model, "rules/transformer.yaml")``, exactly as
written, on Hugging Face BERT, RoBERTa, GPT-2, Llama, T5 and ViT, torch's Transformer modules
and the zoo's ViT (tiny configs, no download).

* example inputs come from the model when none are given (:mod:`tedepr_fx.example_inputs`);
* without data the rule file decides (``scoring.without_data``), recorded per layer;
* the shipped policy takes each family's projections and lowers FLOPs and parameters;
* a tied weight (GPT-2's and tied Llama's ``lm_head``) is kept dense, never split.
"""

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import tedepr_fx
from tedepr_fx import models
from tedepr_fx.errors import CaptureError, DataError, RuleError
from tedepr_fx.example_inputs import model_example, require_example
from tedepr_fx.rules import Scoring, load_rules

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

pytestmark = pytest.mark.usefixtures("one_thread")

POLICY = Path(__file__).resolve().parents[1] / "rules" / "transformer.yaml"
SEQ, BATCH = 128, 8  # where transformer.yaml documents its cost
H, FF, V = 64, 128, 100  # tiny widths and vocabulary


def bert():
    return transformers.BertModel(transformers.BertConfig(
        hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=FF, vocab_size=V))


def roberta():
    return transformers.RobertaModel(transformers.RobertaConfig(
        hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=FF, vocab_size=V,
        max_position_embeddings=SEQ + 4))


def gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=H, n_layer=2, n_head=4, vocab_size=V, n_positions=SEQ, bos_token_id=0, eos_token_id=0))


def llama(tie=False):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=H, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=FF, vocab_size=V, max_position_embeddings=SEQ, tie_word_embeddings=tie))


def t5(gated=False):
    return transformers.T5Model(transformers.T5Config(
        d_model=H, d_ff=FF, num_layers=2, num_heads=4, d_kv=16, vocab_size=V,
        feed_forward_proj="gated-gelu" if gated else "relu"))


def hf_vit():
    return transformers.ViTModel(transformers.ViTConfig(
        hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=FF,
        image_size=32, patch_size=8))


def encoder():
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def seq2seq():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: no nested tensors without batch_first
        return nn.Transformer(32, 4, 2, 2, 64)  # (seq, batch, d_model): batch_first is False


FAMILIES = {
    "bert": bert, "roberta": roberta, "gpt2": gpt2, "llama": llama, "t5": t5, "hf_vit": hf_vit,
    "torch_encoder": encoder, "torch_transformer": seq2seq, "zoo_vit": models.vit,
}


def _ids():
    return torch.randint(0, V, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call(*args, **kwargs)
    return out, [str(w.message) for w in caught]


def _run(model, example):
    args, kwargs = example
    with torch.no_grad():
        return model(*args, **kwargs)


def _tensors(output):
    """Every tensor of a model's output (a tensor, a tuple, a Hugging Face output)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    return [t for v in output for t in _tensors(v)] if isinstance(output, (list, tuple)) else []


# --- 1. example inputs from the model ---------------------------------------------------------------


def test_example_inputs_come_from_the_model():
    (x,), kwargs = model_example(models.vit())
    assert x.shape == (2, 3, 32, 32) and kwargs == {}
    args, kwargs = model_example(bert())
    assert args == () and set(kwargs) >= {"input_ids"}
    _, kwargs = model_example(t5())
    assert {"input_ids", "decoder_input_ids"} <= set(kwargs)  # an encoder-decoder gets decoder inputs
    _, kwargs = model_example(hf_vit())  # its dummy_inputs say input_ids; its main input is pixels
    assert set(kwargs) == {"pixel_values"} and kwargs["pixel_values"].shape == (2, 3, 32, 32)
    (x,), _ = model_example(encoder())
    assert x.shape == (2, 8, 32)  # batch_first
    (src, tgt), _ = model_example(seq2seq())
    assert src.shape[1:] == (2, 32) and tgt.shape[1:] == (2, 32)  # (seq, batch, d_model)
    (x,), _ = model_example(nn.TransformerEncoderLayer(16, 2, 32))
    assert x.shape == (8, 2, 16)
    assert model_example(nn.Linear(4, 4)) is None


def test_an_encoder_decoder_without_decoder_dummies_gets_decoder_input_ids():
    class Seq2Seq(nn.Module):
        main_input_name = "input_ids"

        def __init__(self):
            super().__init__()
            self.config = transformers.PretrainedConfig(is_encoder_decoder=True)

        @property
        def dummy_inputs(self):
            return {"input_ids": torch.tensor([[1, 2, 3]])}

    _, kwargs = model_example(Seq2Seq())
    assert torch.equal(kwargs["decoder_input_ids"], kwargs["input_ids"])


def test_a_model_that_cannot_say_its_inputs_gets_a_clear_error_when_they_are_needed():
    with pytest.raises(CaptureError, match="pass example_inputs="):
        require_example(nn.Sequential(nn.Linear(4, 4)), "capture needs a call")
    rules = {"version": 1, "scoring": {"without_data": "synflow"},
             "defaults": {"budget": {"sparsity": 0.5}},
             "rules": [{"name": "all", "match": {"type": "Linear"}, "action": "prune"}]}
    with pytest.raises(CaptureError, match=r"scorer 'synflow' of rule\(s\) 'all'.*pass example_inputs="):
        _quiet(tedepr_fx.transform, nn.Sequential(nn.Linear(4, 4)), rules)


def test_plan_and_transform_take_keyword_example_inputs():
    model = bert().eval()
    ids = torch.randint(0, V, (2, 7))
    plan = tedepr_fx.plan(model, POLICY, {"input_ids": ids})
    assert {tuple(r.input_shape[:-1]) for r in plan.rows} == {(2, 7), (2,)}  # the pooler reads one token
    out, _ = _quiet(tedepr_fx.transform, model, POLICY, example_inputs={"input_ids": ids})
    assert torch.isfinite(out(input_ids=ids).last_hidden_state).all()


# --- 2. without data, the rule file decides ---------------------------------------------------------


def _prune_rules(scorer="trainability", **scoring):
    return {"version": 1, "scoring": scoring,
            "defaults": {"scorer": scorer, "budget": {"sparsity": 0.5}},
            "rules": [{"name": "hidden", "match": {"type": "Linear"}, "action": "prune"}]}


def _mlp():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def test_without_data_is_validated_against_the_data_free_scorers():
    from tedepr_fx.names import SCORER_NAMES
    from tedepr_fx.scoring import SCORERS

    assert set(Scoring.DATA_FREE) == {n for n in SCORER_NAMES if not SCORERS[n].needs_data}
    assert load_rules(_prune_rules()).scoring.without_data == "error"  # the default keeps the error
    assert load_rules(_prune_rules(without_data="synflow")).scoring.without_data == "synflow"
    with pytest.raises(RuleError, match=r"scoring\.without_data: scorer 'snip' needs data itself"):
        load_rules(_prune_rules(without_data="snip"))
    with pytest.raises(RuleError, match=r"scoring\.without_data: must be a data-free scorer .* got 'nope'"):
        load_rules(_prune_rules(without_data="nope"))
    schema = load_rules(POLICY).model_json_schema()["$defs"]["Scoring"]["properties"]["without_data"]
    assert schema["enum"] == ["error", *Scoring.DATA_FREE] and schema["default"] == "error"


def test_without_data_error_keeps_the_data_error():
    with pytest.raises(DataError, match="scorer 'trainability' needs data batches and got none"):
        tedepr_fx.transform(_mlp(), _prune_rules(), example_inputs=(torch.randn(2, 8),))


def test_without_data_the_declared_scorer_scores_and_the_records_say_so():
    x = torch.randn(4, 8)
    out, messages = _quiet(tedepr_fx.transform, _mlp(), _prune_rules(without_data="magnitude"),
                           example_inputs=(x,))
    fallback = [m for m in messages if "no data was given" in m]
    assert len(fallback) == 1 and "scorer 'trainability' of rule(s) 'hidden'" in fallback[0]
    assert "scored by 'magnitude'" in fallback[0]
    rows = tedepr_fx.report(out).rows
    assert {(r.scorer, r.scored_by, r.no_data_fallback) for r in rows} == {("trainability", "magnitude", True)}
    assert all("scored by magnitude (no data)" in r.note for r in rows)
    assert all(r.as_dict()["scored_by"] == "magnitude" for r in rows)

    # with data the rule's own scorer runs, and nothing is said
    data = [(torch.randn(4, 8), torch.randint(0, 3, (4,))) for _ in range(4)]
    out, messages = _quiet(tedepr_fx.transform, _mlp(), _prune_rules(without_data="magnitude"), data=data)
    assert not [m for m in messages if "no data" in m]
    rows = tedepr_fx.report(out).rows
    assert {(r.scorer, r.scored_by, r.no_data_fallback) for r in rows} == {("trainability", "trainability", False)}

    # a data-free rule scorer is no fallback
    out, messages = _quiet(tedepr_fx.transform, _mlp(), _prune_rules("random", without_data="magnitude"),
                           example_inputs=(x,))
    assert {(r.scored_by, r.no_data_fallback) for r in tedepr_fx.report(out).rows} == {("random", False)}


def test_shipped_transformer_policy_declares_a_data_free_fallback():
    assert load_rules(POLICY).scoring.without_data in Scoring.DATA_FREE


# --- 3. the shipped policy fits each family and lowers its cost ----------------------------------------


def _ends(names):
    """Layer names by their last parts: ``encoder.layer.0.attention.self.query`` -> ``self.query``."""
    return {".".join(n.split(".")[-2:]) for n in names}


# family -> (model, example inputs at the documented length, {rule: the layers it takes (last parts)})
POLICY_CASES = {
    "bert": (bert, lambda: {"input_ids": _ids()}, {
        "attention": {"self.query", "self.key", "self.value", "output.dense"},
        "mlp": {"intermediate.dense", "output.dense"}, "edges": {"pooler.dense"}}),
    "roberta": (roberta, lambda: {"input_ids": _ids()}, {
        "attention": {"self.query", "self.key", "self.value", "output.dense"},
        "mlp": {"intermediate.dense", "output.dense"}, "edges": {"pooler.dense"}}),
    "gpt2": (gpt2, lambda: {"input_ids": _ids()}, {
        "attention": {"attn.c_attn", "attn.c_proj"}, "mlp": {"mlp.c_fc", "mlp.c_proj"}, "edges": {"lm_head"}}),
    "llama": (llama, lambda: {"input_ids": _ids()}, {
        "attention": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"},
        "mlp": {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}, "edges": {"lm_head"}}),
    "t5": (t5, lambda: {"input_ids": _ids(), "decoder_input_ids": _ids()}, {
        "attention": {f"{a}.{p}" for a in ("SelfAttention", "EncDecAttention") for p in "qkvo"},
        "mlp": {"DenseReluDense.wi", "DenseReluDense.wo"}}),
    "t5_gated": (lambda: t5(gated=True), lambda: {"input_ids": _ids(), "decoder_input_ids": _ids()}, {
        "attention": {f"{a}.{p}" for a in ("SelfAttention", "EncDecAttention") for p in "qkvo"},
        "mlp": {"DenseReluDense.wi_0", "DenseReluDense.wi_1", "DenseReluDense.wo"}}),
    "hf_vit": (hf_vit, lambda: {"pixel_values": torch.randn(BATCH, 3, 32, 32)}, {
        "attention": {"attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"},
        "mlp": {"mlp.fc1", "mlp.fc2"}, "edges": {"patch_embeddings.projection", "pooler.dense"}}),
    "torch_encoder": (encoder, lambda: (torch.randn(BATCH, SEQ, 32),), {
        "attention": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"},
        "mlp": {"0.linear1", "0.linear2", "1.linear1", "1.linear2"}}),
    "torch_transformer": (seq2seq, lambda: (torch.randn(SEQ, BATCH, 32), torch.randn(SEQ, BATCH, 32)), {
        "attention": {f"{a}.{p}_proj" for a in ("self_attn", "multihead_attn") for p in ("q", "k", "v", "out")},
        "mlp": {"0.linear1", "0.linear2", "1.linear1", "1.linear2"}}),
    "zoo_vit": (models.vit, lambda: (torch.randn(BATCH, 3, 32, 32),), {
        "attention": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"},
        "mlp": {"0.linear1", "0.linear2", "1.linear1", "1.linear2"}, "edges": {"patch_embed", "head"}}),
}


@pytest.mark.parametrize("family", sorted(POLICY_CASES))
def test_shipped_policy_takes_each_familys_projections_and_lowers_flops_and_params(family):
    factory, example, expected = POLICY_CASES[family]
    plan, _ = _quiet(tedepr_fx.plan, factory(), POLICY, example())
    taken = {rule: _ends(r.name for r in plan.rows if r.rule == rule) for rule in ("attention", "mlp", "edges")}
    assert {k: v for k, v in taken.items() if v} == expected
    # every weight layer but the embeddings, which the policy leaves dense (no rule names them)
    assert not [r.name for r in plan.unmatched if r.old_type != "Embedding"]
    factorized = [r for r in plan.rows if r.action == "factorize"]
    assert factorized
    for row in factorized:  # every factorized layer gets cheaper in FLOPs and in parameters
        assert row.flops_after < row.flops_before and row.stored < row.dense, row.name
    totals = plan.totals
    assert totals["flops_after"] < 0.5 * totals["flops_before"] or family == "gpt2"  # gpt2: tied head
    assert totals["flops_after"] < totals["flops_before"] and totals["stored"] < totals["dense"]


def test_shipped_policy_lowers_the_cost_of_base_sized_shapes():
    # BERT-base on the meta device (no weights): the issue measured 2.4 x more FLOPs with the old policy
    with torch.device("meta"):
        model = transformers.BertModel(transformers.BertConfig())
    totals = tedepr_fx.plan(model, POLICY, {"input_ids": _ids()}).totals
    assert totals["flops_after"] < 0.3 * totals["flops_before"] and totals["stored"] < 0.3 * totals["dense"]


# --- 4. tied weights ------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory, embedding", [(gpt2, "transformer.wte"), (lambda: llama(tie=True), "model.embed_tokens")])
def test_a_tied_head_is_kept_dense_with_a_warning_naming_the_group(factory, embedding):
    out, messages = _quiet(tedepr_fx.transform, factory(), POLICY)
    tied = [m for m in messages if "tied" in m]
    assert len(tied) == 1 and f"tied group: lm_head, {embedding})" in tied[0] and "kept dense" in tied[0]
    head, = [r for r in tedepr_fx.report(out).rows if r.name == "lm_head"]
    assert (head.rule, head.action, head.new_type) == ("edges", "keep", "Linear")
    assert head.kept == head.stored == head.dense and head.kept_source == "dense"  # never counted as pruned
    assert "tied" in head.note and head.scored_by is None
    assert out.lm_head.weight is out.get_parameter(f"{embedding}.weight")  # still one tensor
    assert not hasattr(out.lm_head, "weight_mask")


def test_an_untied_head_is_pruned():
    out, messages = _quiet(tedepr_fx.transform, llama(tie=False), POLICY)
    assert not [m for m in messages if "tied" in m]
    head, = [r for r in tedepr_fx.report(out).rows if r.name == "lm_head"]
    assert head.action == "prune" and head.kept < head.dense


# --- 5. the one-line call ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_one_line_call_works(family):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    out, messages = _quiet(tedepr_fx.transform, model, "rules/transformer.yaml" if Path("rules").is_dir()
                           else POLICY)
    assert [m for m in messages if "no data was given" in m]
    assert not [m for m in messages if "collapsed" in m], messages
    report = tedepr_fx.report(out)
    assert {r.rule for r in report.rows} >= {"attention", "mlp"}
    assert all(r.scored_by == "magnitude" and r.no_data_fallback for r in report.rows if r.action != "keep")
    assert report.totals["stored"] < report.totals["dense"]
    outputs = _tensors(_run(out.eval(), model_example(model)))
    assert outputs and all(torch.isfinite(t).all() for t in outputs if t.is_floating_point())


# --- 6. Hugging Face batches and words for regions ---------------------------------------------------


def _lm_batches():
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": (ids := torch.randint(0, V, (4, 16), generator=g)), "labels": ids}
            for _ in range(4)]


def test_dict_batches_with_labels_are_scored_with_the_models_own_loss():
    out, messages = _quiet(tedepr_fx.transform, llama().train(), POLICY, data=_lm_batches())
    assert not [m for m in messages if "no data" in m or "collapsed" in m]
    rows = [r for r in tedepr_fx.report(out).rows if r.action != "keep"]
    assert {(r.scored_by, r.no_data_fallback) for r in rows} == {("trainability", False)}
    batch = _lm_batches()[0]
    assert torch.isfinite(out(**batch).loss)

    # with loss_fn, the labels are its targets and the output is the logits
    seen = []

    def loss_fn(logits, labels):
        seen.append((logits.shape, labels.shape))
        return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())

    _quiet(tedepr_fx.transform, llama().train(), POLICY, data=_lm_batches(), loss_fn=loss_fn)
    assert seen and all(s == ((4, 16, V), (4, 16)) for s in seen)


def test_dict_batches_without_labels_are_refused():
    with pytest.raises(DataError, match="dict of inputs without 'labels'"):
        tedepr_fx.transform(llama(), POLICY, data=[{"input_ids": torch.zeros(2, 4, dtype=torch.long)}])


def test_regions_say_in_words_why_they_did_not_trace():
    out, _ = _quiet(tedepr_fx.transform, llama(), POLICY)
    swapped = [r for r in tedepr_fx.report(out).regions if r["mode"] == "swap"]
    assert swapped and not [r for r in swapped if "Error" in r["reason"]]
    assert any("**kwargs" in r["reason"] or "non-tensor arguments" in r["reason"] for r in swapped)
    assert all("detail" not in r or r["detail"] for r in swapped)


def test_model_examples_are_seeded_and_leave_the_callers_rng_alone():
    model = encoder()
    state = torch.random.get_rng_state()
    first = model_example(model)[0][0]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(model_example(model)[0][0], first)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generate_runs_on_a_compressed_decoder_with_its_kv_cache(family):
    model, _ = _quiet(tedepr_fx.transform, FAMILIES[family](), "rules/transformer.yaml")
    model.eval()
    assert tedepr_fx.report(model).totals["stored"] < tedepr_fx.report(model).totals["dense"]
    ids = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(3))
    cached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    recomputed = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (2, 11) and torch.equal(cached, recomputed)  # the cache changes nothing


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama", "t5"])
def test_every_rewritten_layer_is_the_one_forward_runs(family):
    # a layer traced through (inlined) instead of kept as a leaf would keep its dense weight in
    # the graph: then its masks would change nothing, silently (HF Conv1D did, in GPT-2's MLP)
    model, _ = _quiet(tedepr_fx.transform, FAMILIES[family](), "rules/transformer.yaml")
    model.eval()
    args, kwargs = model_example(model)
    with torch.no_grad():
        reference = [t.clone() for t in _tensors(model(*args, **kwargs))]
        masked = [m for m in model.modules() if getattr(m, "prunable", ())]
        assert masked
        for module in masked:
            saved = {n: module.get_mask(n).clone() for n in module.prunable}
            for name in module.prunable:
                module.get_mask(name).zero_()
            after = _tensors(model(*args, **kwargs))
            changed = any(not torch.equal(a, r) for a, r in zip(after, reference))
            for name, mask in saved.items():
                module.get_mask(name).copy_(mask)
            assert changed, f"{family}: masking {type(module).__name__} changed nothing"
