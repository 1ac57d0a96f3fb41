"""Under DDP every rank ends with the same masks (2 CPU processes, gloo backend)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tedepr_fx.budget import Group, broadcast_masks, prune
from tedepr_fx.layers.masked import MaskedLinear
from tedepr_fx.scoring import collect_targets

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def _flat_masks(model: nn.Module) -> torch.Tensor:
    return torch.cat([t.mask().reshape(-1).to(torch.uint8) for t in collect_targets(model)])


def _worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same initial weights on every rank, as DDP requires
        model = nn.Sequential(MaskedLinear(8, 16), nn.ReLU(), MaskedLinear(16, 4))
        g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
        data = [(torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g))]
        groups = [Group(q, collect_targets(model, [q]), n, 0.1, min_density=0.0)
                  for q, n in (("0", 128), ("2", 64))]
        prune(model, groups, "snip", data, seed=0)
        before = [torch.zeros(192, dtype=torch.uint8) for _ in range(world)]
        dist.all_gather(before, _flat_masks(model))
        # the data differ, so the local masks differ: the broadcast has work to do
        assert not torch.equal(before[0], before[1])

        broadcast_masks(model, src=0)
        after = [torch.zeros(192, dtype=torch.uint8) for _ in range(world)]
        dist.all_gather(after, _flat_masks(model))
        assert torch.equal(after[0], after[1])
        assert torch.equal(after[rank], before[0])
        assert int(after[rank].sum()) == round(0.1 * 128) + round(0.1 * 64)
    finally:
        dist.destroy_process_group()


def test_broadcast_masks_makes_ranks_agree(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


def test_broadcast_masks_is_a_no_op_without_process_group():
    model = nn.Sequential(MaskedLinear(3, 2))
    model[0].set_mask("weight", torch.tensor([[True, False, True], [False, False, True]]))
    broadcast_masks(model)
    assert model[0].weight_mask.sum() == 3
