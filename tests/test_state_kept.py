"""``transform`` leaves no trace of its forwards (issue 15): BatchNorm statistics and modes as given."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tedepr_fx

RULES = {"version": 1, "defaults": {"scorer": "snip", "budget": {"sparsity": 0.5}},
         "rules": [{"name": "convs", "match": {"type": "Conv2d", "name": "2"}, "action": "factorize",
                    "factorize": {"format": "tucker", "rank": "full"}},
                   {"name": "rest", "match": {"type": ["Conv2d", "Linear"]}, "action": "prune"}]}


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4), nn.Dropout(0.5))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 8, 8, generator=g) * 3 + 1, torch.randint(0, 4, (4,), generator=g)) for _ in range(2)]


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n}


@pytest.mark.parametrize("with_data", [False, True])
def test_batchnorm_statistics_are_those_of_the_model_given(with_data):
    model = cnn().train()
    before = bn_state(model)
    kwargs = {"data": batches()} if with_data else {"example_inputs": (batches()[0][0],)}
    rules = RULES if with_data else {**RULES, "scoring": {"without_data": "magnitude"}}
    out = tedepr_fx.transform(model, rules, **kwargs)
    after = bn_state(out)
    assert before.keys() == after.keys() and after
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(before[k], v) for k, v in bn_state(model).items())  # the given model too


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_module_comes_back_in_the_mode_of_what_it_replaces(mode):
    model = cnn().train(mode == "train")
    out = tedepr_fx.transform(model, RULES, data=batches())
    assert {m.training for m in out.modules()} == {mode == "train"}
    if mode == "eval":  # dropout off: two calls agree
        x = batches()[0][0]
        assert torch.equal(out(x), out(x))


def test_a_non_finite_value_in_a_pruned_entry_never_reaches_the_output():
    out = tedepr_fx.transform(cnn().eval(), RULES, data=batches())
    x = batches()[0][0]
    reference = out(x)
    with torch.no_grad():
        for module in out.modules():
            for name in getattr(module, "prunable", ()):
                mask = module.get_mask(name)
                if not bool(mask.all()):
                    getattr(module, name)[~mask] = float("inf")
                    getattr(module, name)[~mask.logical_not().cumsum(-1).bool() & ~mask] = float("nan")
    assert torch.isfinite(out(x)).all() and torch.equal(out(x), reference)


@pytest.mark.parametrize("scorer", ["trainability", "snip", "grasp", "force"])
def test_scores_from_a_loss_that_does_not_see_the_weights_are_a_data_error(scorer):
    rules = {**RULES, "defaults": {"scorer": scorer, "budget": {"sparsity": 0.5}}}
    constant = lambda outputs, targets: outputs.sum() * 0 + 1.0  # noqa: E731 - no gradient reaches a weight
    with pytest.raises(tedepr_fx.DataError, match="score of zero|meta-gradient of zero"):
        tedepr_fx.transform(cnn(), rules, data=batches(), loss_fn=constant)


def test_a_batch_with_no_samples_is_a_data_error():
    empty = [(torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long))]
    with pytest.raises(tedepr_fx.DataError, match="data batch 0 holds no samples"):
        tedepr_fx.transform(cnn(), RULES, data=empty, example_inputs=(batches()[0][0],))
