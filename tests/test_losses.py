"""Loss presets (``scoring.loss`` / ``loss_fn="..."``) against hand-written references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tedepr_fx
from tedepr_fx.errors import DataError, RuleError
from tedepr_fx.losses import LOSSES, causal_lm, masked_lm
from tedepr_fx.names import LOSS_NAMES
from tedepr_fx.rules import load_rules

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

V, SEQ, BATCH = 50, 12, 4


def _reference_causal(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    terms = [F.cross_entropy(logits[b, t][None], labels[b, t + 1][None])
             for b in range(labels.shape[0]) for t in range(labels.shape[1] - 1) if labels[b, t + 1] != -100]
    return torch.stack(terms).mean()


def test_causal_lm_predicts_the_next_token_and_skips_ignored_labels():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(BATCH, SEQ, V, generator=g), torch.randint(0, V, (BATCH, SEQ), generator=g)
    labels[0, 3:] = -100
    assert torch.allclose(causal_lm(logits, labels), _reference_causal(logits, labels))


def test_masked_lm_counts_only_labelled_positions():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(BATCH, SEQ, V, generator=g), torch.full((BATCH, SEQ), -100)
    labels[1, 2], labels[3, 7] = 5, 9
    expected = (F.cross_entropy(logits[1, 2][None], labels[1, 2][None])
                + F.cross_entropy(logits[3, 7][None], labels[3, 7][None])) / 2
    assert torch.allclose(masked_lm(logits, labels), expected)


def test_a_sequence_loss_on_a_classifier_output_is_a_data_error():
    with pytest.raises(DataError, match=r"causal_lm' takes \(batch, seq, vocab\) logits"):
        causal_lm(torch.zeros(4, 10), torch.zeros(4, dtype=torch.long))


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights on every call
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=1, n_head=2, vocab_size=V, n_positions=SEQ, bos_token_id=0, eos_token_id=0))


def _pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    ids = [torch.randint(0, V, (BATCH, SEQ), generator=g) for _ in range(2)]
    return [(x, x) for x in ids]  # a language model's targets are its inputs


RULES = {"version": 1, "defaults": {"scorer": "snip", "budget": {"sparsity": 0.5}},
         "rules": [{"name": "mlp", "match": {"regex": r".*mlp\.c_(fc|proj)"}, "action": "prune"}]}


def test_the_default_loss_on_a_language_model_says_which_preset_to_use():
    with pytest.raises(DataError, match="scoring.loss: causal_lm, masked_lm or classification"):
        tedepr_fx.transform(_gpt2(), RULES, data=_pairs())


@pytest.mark.parametrize("where", ["rules", "argument"])
def test_causal_lm_preset_scores_pairs_on_a_language_model(where):
    rules = {**RULES, "scoring": {"loss": "causal_lm"}} if where == "rules" else RULES
    kwargs = {"loss_fn": "causal_lm"} if where == "argument" else {}
    out = tedepr_fx.transform(_gpt2(), rules, data=_pairs(), **kwargs)
    rows = tedepr_fx.report(out).rows
    assert {r.scored_by for r in rows if r.action == "prune"} == {"snip"}
    # the same scores as SNIP with the hand-written next-token loss as a callable
    by_hand = tedepr_fx.transform(_gpt2(), RULES, data=_pairs(), loss_fn=_reference_causal)
    masks = {k: v for k, v in out.state_dict().items() if k.endswith("_mask")}
    assert masks and all(0.1 < v.float().mean() < 0.9 for v in masks.values())  # real scores, not ties
    # the same choice up to float rounding of nearly equal scores (a mean over positions in both)
    agree = [float((v == by_hand.state_dict()[k]).float().mean()) for k, v in masks.items()]
    assert min(agree) > 0.99, agree


def test_unknown_loss_names_are_refused():
    with pytest.raises(RuleError, match="scoring.loss"):
        load_rules({**RULES, "scoring": {"loss": "ctc"}})
    with pytest.raises(DataError, match="unknown loss 'ctc'; presets: classification, causal_lm, masked_lm"):
        tedepr_fx.transform(_gpt2(), RULES, data=_pairs(), loss_fn="ctc")
    assert tuple(LOSSES) == LOSS_NAMES  # the torch-free names the rules and the CLI offer
    assert load_rules({**RULES, "scoring": {"loss": "masked_lm"}}).scoring.loss == "masked_lm"
