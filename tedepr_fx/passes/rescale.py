"""The rescale pass (``scoring.rescale: dense``): give every masked layer the dense signal scale.

At extreme sparsity a layer keeps a few entries of a weight (or of its factors) drawn at the
dense initialisation's scale, so its output is far smaller than the dense layer's, and the
shrinkage compounds through the network: on LeNet-5 at sparsity 0.999 (61 of 61,470 weights)
the logits of some seeds varied with the input by about 1e-5, and those runs trained to
chance (docs/scoring.md). This pass multiplies each masked layer's prunable tensors by one
factor, chosen so that the layer's output varies with the input as much as the dense layer's
did on the same inputs (:func:`signal_scale`), layer after layer in execution order (each layer is measured with the
layers before it already rescaled). It is data-dependent rescaling in the manner of LSUV
(Mishkin and Matas, "All you need is a good init", ICLR 2016), with the dense network's own
per-layer scales as the target instead of unit variance. Masks, and so the kept counts, do
not change.

Layers are measured with forward hooks, in eval mode and without gradients, on one batch.
A layer the dense forward does not call as a module (a captured ``F.linear``, a projection
packed inside ``nn.MultiheadAttention``) has no dense measurement and is left as it is, and
so is a layer whose masked output is constant (a collapsed layer, which the report flags)
or whose dense output is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tedepr_fx.layers.masked import MaskedMixin

#: a signal scale below this is treated as no signal (the layer is left as it is)
CONSTANT = 1e-12


def output_scales(layers: dict[str, nn.Module], run: Callable[[], Any]) -> dict[str, float]:
    """:func:`signal_scale` of each layer's output (its first tensor output) during ``run()``.

    A layer called more than once reports its first call; the result lists the layers in
    the order ``run()`` first called them.
    """
    seen: dict[str, float] = {}
    hooks = []
    for name, module in layers.items():
        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            tensor = _first_tensor(out)
            if tensor is not None and name not in seen:
                seen[name] = signal_scale(tensor)
        hooks.append(module.register_forward_hook(hook))
    try:
        run()
    finally:
        for handle in hooks:
            handle.remove()
    return seen


def signal_scale(output: Tensor) -> float:
    """Root mean square of ``output`` about its mean over the batch (dim 0).

    Centering over the batch removes what does not depend on the input (the bias, a dead
    layer's constant), so a layer whose signal vanished measures near zero even when its
    bias does not. A batch of one sample has no spread and measures 0.
    """
    if output.dim() == 0 or output.shape[0] < 2:
        return 0.0
    values = output.detach().float()
    return float((values - values.mean(0, keepdim=True)).pow(2).mean().sqrt())


@torch.no_grad()
def rescale_to(layers: dict[str, nn.Module], reference: dict[str, float],
               run: Callable[[], Any]) -> dict[str, float]:
    """Scale each masked layer of ``layers`` so that its output's signal scale matches ``reference``.

    Returns the factor applied to each layer's effective weight (1.0 where it was left as is).
    """
    factors = {name: 1.0 for name in layers}
    for name in output_scales(layers, run):  # in execution order
        module = layers[name]
        if not isinstance(module, MaskedMixin) or not module.prunable:
            continue
        target = reference.get(name, 0.0)
        now = output_scales({name: module}, run).get(name, 0.0)
        if target <= CONSTANT or now <= CONSTANT or not math.isfinite(target / now):
            continue
        factor = target / now
        per_tensor = factor ** (1.0 / len(module.prunable))
        for tensor_name in module.prunable:
            getattr(module, tensor_name).mul_(per_tensor)
        factors[name] = factor
    return factors


def _first_tensor(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    return None


def forward_fn(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[], Any]:
    """A no-grad, eval-mode forward of ``model`` on the inputs, restoring train/eval modes after."""
    def run() -> Any:
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            with torch.no_grad():
                return model(*args, **kwargs)
        finally:
            for m, mode in modes.items():
                m.train(mode)
    return run
