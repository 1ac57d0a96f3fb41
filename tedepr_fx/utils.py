"""Small helpers shared by the passes."""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def meta_copy(module: ModuleT) -> ModuleT:
    """A deep copy of ``module`` whose parameters and buffers live on the meta device.

    Nothing of the weights is copied: each tensor is replaced by a meta tensor of the
    same shape and dtype before ``deepcopy`` reaches it.
    """
    memo: dict[int, object] = {}
    for tensor in list(module.parameters()) + list(module.buffers()):
        meta = torch.empty_like(tensor, device="meta")
        if isinstance(tensor, nn.Parameter):
            meta = nn.Parameter(meta, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = meta
    return copy.deepcopy(module, memo)


def as_tuple(example_inputs: object) -> tuple[object, ...] | None:
    """Accept one tensor or a tuple/list of positional inputs."""
    if example_inputs is None:
        return None
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    return (example_inputs,)
