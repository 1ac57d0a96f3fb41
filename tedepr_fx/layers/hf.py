"""Hugging Face ``Conv1D`` and the one spelling of its transposed weight layout.

``transformers.pytorch_utils.Conv1D`` is a linear layer that stores its weight as
``(in, out)``; ``nn.Linear`` stores ``(out, in)``. Every layer tedepr_fx builds for a
linear map records which of the two it replaces in ``weight_layout`` (``"linear"`` or
``"conv1d"``), and returns its effective weight (``to_dense``) in that layout. The
detection is duck-typed, so transformers is never imported here.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

WeightLayout = Literal["linear", "conv1d"]  # (out, in) like nn.Linear, or (in, out) like HF Conv1D
LAYOUTS: tuple[WeightLayout, ...] = ("linear", "conv1d")


def is_hf_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is Hugging Face's ``Conv1D`` (a linear map with weight ``(in, out)``)."""
    cls = type(module)
    # the class test comes first: reading module.weight while fx traces (is_leaf_module runs
    # then) would record a get_attr node for every layer of the graph
    if cls.__name__ != "Conv1D" or not cls.__module__.startswith("transformers"):
        return False
    # read the parameter from the module's own table: while fx traces, attribute access on a
    # module returns a Proxy, which is no Tensor, and the layer would be traced through
    # (inlined) instead of kept as a leaf that the rewrite can swap
    weight = module._parameters.get("weight")
    return "nf" in module.__dict__ and isinstance(weight, torch.Tensor) and weight.dim() == 2


def check_layout(layout: object) -> WeightLayout:
    if layout not in LAYOUTS:
        raise ValueError(f"weight_layout must be 'linear' or 'conv1d'; got {layout!r}")
    return layout


def linear_layout(module: nn.Module, who: str) -> tuple[WeightLayout, int, int]:
    """``(weight_layout, in_features, out_features)`` of an ``nn.Linear`` or HF ``Conv1D``.

    Raises
    ------
    TypeError
        For any other module; ``who`` names the constructor in the message.
    """
    if isinstance(module, nn.Linear):
        return "linear", module.in_features, module.out_features
    if is_hf_conv1d(module):
        in_f, out_f = _weight(module).shape
        return "conv1d", int(in_f), int(out_f)
    raise TypeError(f"{who} needs an nn.Linear or a Hugging Face Conv1D; got {type(module).__name__}")


def weight_in_out(module: nn.Module) -> torch.Tensor:
    """The weight of an ``nn.Linear`` or HF ``Conv1D`` as ``(in, out)`` (a view, detached)."""
    weight = _weight(module).detach()
    return weight if is_hf_conv1d(module) else weight.t()


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is not a tensor")
    return weight


def to_layout(w_io: torch.Tensor, layout: WeightLayout) -> torch.Tensor:
    """A weight given as ``(in, out)`` in ``layout`` (a contiguous tensor)."""
    return w_io.contiguous() if layout == "conv1d" else w_io.t().contiguous()
