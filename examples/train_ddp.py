"""Train a TEDEPR-transformed model on several processes with DistributedDataParallel or FSDP2.

    torchrun --nproc_per_node 2 examples/train_ddp.py --steps 50 --out runs/ddp
    torchrun --nproc_per_node 2 examples/train_ddp.py --steps 80 --out runs/ddp --resume
    torchrun --nproc_per_node 2 examples/train_ddp.py --steps 50 --out runs/fsdp --fsdp

Every rank builds the same dense model (same seed) and transforms it once with its own
scoring batches: ``transform`` averages the scores over the ranks before allocating, so
every rank ends with the same masks. Training runs under ``DistributedDataParallel``
(gloo on CPUs, nccl on GPUs), each rank on its shard of the data. Rank 0 writes compact
checkpoints (``tedepr_fx.save``: kept values and packed masks, no pickle) plus the
optimizer's state; ``--resume`` rebuilds the model from the checkpoint onto a fresh dense
model (``tedepr_fx.load(path, model=...)``) and goes on from the saved step, at the
same place in the same epoch, so that a resumed run ends where an uninterrupted one does.

With ``--fsdp`` the model is sharded with FSDP2 (``fully_shard`` on every TEDEPR layer, then on
the root) instead of DDP: parameters (the factors) are sharded, the boolean masks are buffers
and stay whole on every rank, and the forward all-gathers each layer's factors before its
masks select from them. Rank 0's checkpoint is written from an unsharded copy built the same
way, into which every rank's ``full_tensor()`` of each parameter is gathered.

At the end each rank writes ``rank<N>.json`` to ``--out``: a hash of its masks and of its
parameters, and how many pruned entries are nonzero in the effective weights (always 0),
so that a test can check that the ranks agree.

Data: scikit-learn's 8x8 digits (in its wheel, no download); model: LeNet-300-100 on 64
inputs; policy: ``rules/lenet.yaml`` at ``--sparsity``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import tedepr_fx
from tedepr_fx.data import load_dataset
from tedepr_fx.layers.masked import MaskedMixin
from tedepr_fx.models import LeNet300100
from tedepr_fx.policies import path as policy_path
from tedepr_fx.rules import load_rules

CHECKPOINT = "checkpoint.safetensors"
OPTIMIZER = "optimizer.pt"


def dense_model() -> nn.Module:
    torch.manual_seed(0)  # the same dense weights on every rank, as DDP requires
    return LeNet300100(in_features=64, num_classes=10)


def masked_layers(model: nn.Module) -> list[tuple[str, MaskedMixin]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MaskedMixin)]


def digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def effective_parameters(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter as the forward uses it: a prunable one with its pruned entries zeroed
    (their stored values are not part of the model: a checkpoint does not even keep them)."""
    out = []
    for module in model.modules():
        prunable = module.prunable if isinstance(module, MaskedMixin) else ()
        for name, param in module.named_parameters(recurse=False):
            value = full(param).detach()
            if name in prunable:
                value = torch.where(module.get_mask(name), value, value.new_zeros(()))  # type: ignore[union-attr]
            out.append(value)
    return out


def full(t: torch.Tensor) -> torch.Tensor:
    """A parameter as one whole tensor (an FSDP2 shard is gathered from every rank)."""
    gather = getattr(t, "full_tensor", None)
    return gather() if callable(gather) else t


def summary(model: nn.Module, step: int) -> dict[str, object]:
    """What the ranks must agree on: masks, parameters, and no pruned entry alive."""
    masks, alive = [], 0
    for _, layer in masked_layers(model):
        for name in layer.prunable:
            mask = layer.get_mask(name)
            masks.append(mask.to(torch.uint8))
            value = full(getattr(layer, name)).detach()
            alive += int((torch.where(mask, value, value.new_zeros(()))[~mask.bool()] != 0).sum())
    params = effective_parameters(model)
    return {"step": step, "masks": digest(masks), "params": digest(params),
            "abs_sum": round(float(sum(p.double().abs().sum() for p in params)), 6),
            "kept": sum(int(m.sum()) for m in masks), "pruned_nonzero": alive}


def checkpoint(model: nn.Module, plain: nn.Module | None, optimizer: torch.optim.Optimizer, step: int,
               out: Path, rank: int, fsdp: bool) -> None:
    """Rank 0 writes the compact model file and the optimizer state (under FSDP2 every rank takes
    part in gathering the parameters; the optimizer state is then not saved: it is sharded)."""
    if fsdp:
        whole = [full(p).detach() for p in model.parameters()]  # a collective: every rank calls it
        if rank == 0 and plain is not None:
            with torch.no_grad():
                for target, value in zip(plain.parameters(), whole):
                    target.copy_(value)
            tedepr_fx.save(plain, out / CHECKPOINT)
            torch.save({"step": step, "optimizer": None}, out / OPTIMIZER)
        return
    if rank == 0:
        tedepr_fx.save(model, out / CHECKPOINT)
        torch.save({"step": step, "optimizer": optimizer.state_dict()}, out / OPTIMIZER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="train until this global step")
    parser.add_argument("--out", default="runs/ddp", help="checkpoints and per-rank summaries")
    parser.add_argument("--resume", action="store_true", help=f"go on from --out/{CHECKPOINT}")
    parser.add_argument("--sparsity", type=float, default=0.99)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (fully_shard) instead of DDP")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(1)  # N processes share the CPU cores
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = load_dataset("digits")
    rules = load_rules(policy_path("lenet")).with_budget(sparsity=args.sparsity)
    step = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the policy's notes; the per-rank summary is the check
        if args.resume:
            model = tedepr_fx.load(out / CHECKPOINT, model=dense_model())
            state = torch.load(out / OPTIMIZER, weights_only=True)
            step = int(state["step"])
        else:
            g = torch.Generator().manual_seed(100 + rank)  # each rank scores on its own batches
            index = torch.randperm(len(data.train), generator=g)[:64]
            x, y = data.train[index]
            model = tedepr_fx.transform(dense_model(), rules, data=[(x, y)], seed=0, verbose=False)
    model.to(device)
    plain = copy.deepcopy(model) if args.fsdp and rank == 0 else None  # the checkpoint's unsharded twin
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for _, layer in masked_layers(model):
            fully_shard(cast(nn.Module, layer))
        fully_shard(model)
        ddp: nn.Module = model
    else:
        ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    if args.resume and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])

    sampler = DistributedSampler(data.train, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data.train, batch_size=args.batch_size, sampler=sampler)
    epoch, done = divmod(step, max(len(loader), 1))  # resume where the checkpoint left the epoch
    while step < args.steps:
        sampler.set_epoch(epoch)
        for i, (x, y) in enumerate(loader):
            if i < done:
                continue
            if step >= args.steps:
                break
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(ddp(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
            step += 1
            if step % args.save_every == 0 or step == args.steps:
                checkpoint(model, plain, optimizer, step, out, rank, args.fsdp)
        epoch, done = epoch + 1, 0
    (out / f"rank{rank}.json").write_text(json.dumps(summary(model, step), indent=2) + "\n")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
