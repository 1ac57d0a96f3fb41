"""The recompile pass: check and regenerate the code of every graph region after the rewrite."""

from __future__ import annotations

import torch.fx as fx
from torch import nn


def recompile(model: nn.Module) -> nn.Module:
    """``graph.lint()`` and ``recompile()`` every GraphModule in ``model`` (the root included)."""
    for module in model.modules():
        if isinstance(module, fx.GraphModule):
            module.graph.lint()
            module.recompile()
    return model
