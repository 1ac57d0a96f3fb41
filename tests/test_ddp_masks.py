"""Under torch.distributed, ``transform`` scores on every rank's data and ends with the same
masks on every rank (2 CPU processes, gloo backend)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import tedepr_fx
from tedepr_fx.budget import Group, allocate, broadcast_masks
from tedepr_fx.layers.masked import MaskedLinear
from tedepr_fx.scoring import collect_targets, get_scorer

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

RULES = {"version": 1, "defaults": {"scorer": "snip", "budget": {"sparsity": 0.9, "min_density": 0.0}},
         "rules": [{"name": "all", "match": {"type": "Linear"}, "action": "prune"}]}


def dense_model() -> nn.Module:
    torch.manual_seed(0)  # same initial weights on every rank, as DDP requires
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def rank_data(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    return [(torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g))]


def _flat_masks(model: nn.Module) -> torch.Tensor:
    return torch.cat([t.mask().reshape(-1).to(torch.uint8) for t in collect_targets(model)])


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = tedepr_fx.transform(dense_model(), RULES, data=rank_data(rank), seed=0, verbose=False)
        torch.save(_flat_masks(model), f"{out_dir}/masks{rank}.pt")
    finally:
        dist.destroy_process_group()


def expected_masks() -> torch.Tensor:
    """Masks from the mean of the two ranks' scores, computed in one process."""
    scores = []
    for rank in range(2):
        model = tedepr_fx.transform(dense_model(), {**RULES, "defaults": {
            "scorer": "snip", "budget": {"sparsity": 0.0}}}, data=rank_data(rank), verbose=False)
        targets = collect_targets(model)
        scores.append(get_scorer("snip").score(model, targets, rank_data(rank), None))
    mean = {k: (scores[0][k].double() + scores[1][k].double()).div(2).float() for k in scores[0]}
    groups = [Group(t.layer, [t], t.tensor().numel(), 0.1, min_density=0.0,
                    dense_shape=tuple(t.tensor().shape)) for t in targets]
    allocation = allocate(mean, groups)
    return torch.cat([allocation.masks[t.key].reshape(-1).to(torch.uint8) for t in targets])


def test_transform_under_torchrun_averages_scores_and_agrees_across_ranks(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    masks = [torch.load(tmp_path / f"masks{r}.pt") for r in range(2)]
    assert torch.equal(masks[0], masks[1])
    assert int(masks[0].sum()) == round(0.1 * 128) + round(0.1 * 64)
    # both ranks' data counted: not what either rank's data alone would give
    alone = [_flat_masks(tedepr_fx.transform(dense_model(), RULES, data=rank_data(r), verbose=False))
             for r in range(2)]
    assert not torch.equal(alone[0], alone[1])
    assert not torch.equal(masks[0], alone[0]) or not torch.equal(masks[0], alone[1])
    assert torch.equal(masks[0], expected_masks())


def test_broadcast_masks_is_a_no_op_without_process_group():
    model = nn.Sequential(MaskedLinear(3, 2))
    model[0].set_mask("weight", torch.tensor([[True, False, True], [False, False, True]]))
    broadcast_masks(model)
    assert model[0].weight_mask.sum() == 3
