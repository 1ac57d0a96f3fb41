"""Models capture cannot take, refused before any work with a message that says what to do.

Each check names the layer at fault: a ScriptModule (fx traces Python code, not
TorchScript), parameters on the meta device (``transform`` needs values; ``plan`` does
not), lazy modules whose shapes are not known yet, and the legacy
``torch.nn.utils.weight_norm`` (its hook holds a non-leaf tensor that cannot be copied).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.nn.utils.weight_norm import WeightNorm

from tedepr_fx.errors import CaptureError


def check_capturable(model: nn.Module, *, need_values: bool) -> None:
    """Raise :class:`CaptureError` for a model that capture cannot take (see the module doc)."""
    if isinstance(model, torch.jit.ScriptModule):
        raise CaptureError(
            f"the model is a TorchScript module ({type(model).__name__}); torch.fx captures Python "
            "code: pass the nn.Module before torch.jit.script / torch.jit.trace")
    for name, module in model.named_modules():
        where = f"layer {name!r} ({type(module).__name__})" if name else f"the model ({type(module).__name__})"
        if isinstance(module, torch.jit.ScriptModule):
            raise CaptureError(f"{where} is a TorchScript module; torch.fx captures Python code: "
                               "use the nn.Module it was scripted from")
        own = list(module.named_parameters(recurse=False))
        lazy = [n for n, p in own if is_lazy(p)]
        if lazy:
            raise CaptureError(
                f"{where} has uninitialized lazy parameters ({', '.join(lazy)}): their shapes are not "
                "known yet; run the model once on a real batch (model(x)) before transforming it")
        meta = [n for n, p in own if p.device.type == "meta"]
        if meta and need_values:
            raise CaptureError(
                f"{where} has parameters on the meta device ({', '.join(meta)}), which hold no values; "
                "load real weights first (model.to_empty(device='cpu') then load_state_dict), or use "
                "tedepr_fx.plan, which needs no weights")
        if any(isinstance(hook, WeightNorm) for hook in module._forward_pre_hooks.values()):
            raise CaptureError(
                f"{where} uses the legacy torch.nn.utils.weight_norm, whose hook cannot be copied; use "
                "torch.nn.utils.parametrizations.weight_norm, or torch.nn.utils.remove_weight_norm first")
