"""The last stages of a transformed model: :func:`bake` the masks, :func:`densify` the layers.

(The module is not called ``bake``: importing ``tedepr_fx.bake`` would then replace the
function ``tedepr_fx.bake`` by the module of that name.)

Like ``torch.ao.pruning``'s ``squash_mask`` then ``convert``, these are explicit stages:

* :func:`bake` writes every mask into its tensor (a pruned entry becomes exactly 0, even
  one that held ``inf`` or ``NaN``) and removes the mask buffers. The layers stay
  factorized, the outputs stay identical, the record stays (``report`` then counts a
  kept entry as a nonzero one). For inference, export and compact files; training a
  baked model moves its zeros again, since nothing masks them any more.
* :func:`densify` replaces every factorized or masked layer by the dense torch layer it
  computes (``nn.Linear``, ``nn.Conv2d``, ``nn.LSTM``, ``nn.Embedding``) holding its
  effective weight, for runtimes that only know dense layers. Outputs agree within float
  rounding (the factor chain and one dense product add in different orders).

Example
-------
>>> import torch, tedepr_fx
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
>>> rules = {"version": 1, "defaults": {"budget": {"sparsity": 0.9}, "scorer": "magnitude"},
...          "rules": [{"name": "hidden", "match": {"name": "0"}, "action": "factorize",
...                     "factorize": {"format": "tt", "rank": 2, "modes": {"in": [8, 8], "out": [4, 8]}}}]}
>>> x = torch.randn(2, 64)
>>> small = tedepr_fx.transform(model, rules, example_inputs=(x,), verbose=False)
>>> baked, dense = tedepr_fx.bake(small), tedepr_fx.densify(small)
>>> bool(torch.allclose(baked(x), small(x), atol=1e-6)), any(n.endswith("_mask") for n, _ in baked.named_buffers())
(True, False)
>>> type(dense.get_submodule("0")).__name__, bool(torch.allclose(dense(x), small(x), atol=1e-6))
('Linear', True)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TypeVar, cast

import torch
from torch import fx, nn
from torch.fx.graph_module import _USER_PRESERVED_ATTRIBUTES_KEY

from tedepr_fx.capture.trace import preserve, unpreserve
from tedepr_fx.errors import LayerError
from tedepr_fx.layers.embedding import MaskedEmbedding, TTMatrixEmbedding
from tedepr_fx.layers.masked import (
    MaskedConv2d,
    MaskedLinear,
    MaskedMixin,
    MaskedTransposedLinear,
    Pair,
)
from tedepr_fx.layers.masked_lstm import MaskedLSTM
from tedepr_fx.layers.tt import TTMatrixConv2d, TTMatrixLinear
from tedepr_fx.layers.tt_lstm import TTLSTM
from tedepr_fx.layers.tucker import Tucker2Conv2d, TuckerLinear
from tedepr_fx.record import RECORD_ATTR

M = TypeVar("M", bound=nn.Module)

__all__ = ["bake", "densify"]


def bake(model: M, *, inplace: bool = False, sparse: str | None = None, batch_size: int = 1) -> M:
    """``model`` with every mask folded into its tensor and the mask buffers removed.

    Pruned entries become exactly 0 (selected, not multiplied: an ``inf`` or ``NaN`` stored
    in one goes too) and each masked layer reads its tensors as they are: the same products
    of the same values (only a GEMM's last bit may differ, MKL rounding by buffer alignment),
    and no ``*_mask`` buffers in the state_dict. The record stays; ``report``
    counts a layer's nonzero entries as kept. Returns a copy unless ``inplace=True``.

    ``sparse="auto"`` then gives each linear layer its fastest inference kernel for
    ``batch_size`` rows, measured: the factor chain, its effective weight rebuilt once, or a
    CSR copy of it (:func:`tedepr_fx.kernels.choose_kernels`; same outputs within float
    rounding); ``sparse="density"`` takes CSR wherever the weight's density is below the
    modelled crossover, without timing. The chosen kernels are for inference only.

    Raises
    ------
    LayerError
        A mask is not boolean (a scorer's differentiable mask left in place), naming the layer.
    """
    if sparse not in (None, "auto", "density"):
        raise ValueError(f"sparse must be None, 'auto' or 'density'; got {sparse!r}")
    out = model if inplace else copy.deepcopy(model)
    for name, module in out.named_modules():
        if isinstance(module, MaskedMixin):
            try:
                module.bake_masks()
            except ValueError as err:
                raise LayerError(name or "(root)", str(err)) from None
    if sparse is not None:
        from tedepr_fx.kernels import choose_kernels

        choose_kernels(out, batch_size, how="measure" if sparse == "auto" else "density")
    return out


def densify(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` with every factorized or masked layer replaced by its dense torch layer.

    TT, TR and Tucker linear layers and the masked linear layers become ``nn.Linear`` (a
    Hugging Face ``Conv1D`` layout too: the weight is transposed to ``(out, in)``); the
    convolutions ``nn.Conv2d``; the TT-LSTM and the masked LSTM ``nn.LSTM`` (a TT-LSTM's one
    bias goes to ``bias_ih``, ``bias_hh`` is zero); the TT, TR and masked embeddings
    ``nn.Embedding``. Each holds its layer's effective weight (pruned entries 0), takes its
    mode, and is shared where the layer was. The transform's record is dropped: it
    describes factors and masks the dense model no longer has, and ``report`` on the result
    says it is not a transformed model (it can be transformed again). Returns a new model
    unless ``inplace=True``; ``model`` may itself be one such layer.

    Raises
    ------
    LayerError
        A masked layer with no dense equivalent, naming it.
    """
    out = model if inplace else copy.deepcopy(model)
    dense: dict[int, nn.Module] = {}
    for name, module in list(out.named_modules(remove_duplicate=False)):
        masked = isinstance(module, MaskedMixin)  # a bool, so module stays typed as an nn.Module
        if not masked:
            continue
        if id(module) not in dense:
            dense[id(module)] = _dense_layer(name or "(root)", module)
        if not name:
            return dense[id(module)]
        replace_module(out, name, dense[id(module)])
    if hasattr(out, RECORD_ATTR):
        unpreserve(out, RECORD_ATTR)
        delattr(out, RECORD_ATTR)
    return out


def replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at ``path`` (a dotted module name, not empty) in ``root``, as :func:`_set_child` does."""
    parent, _, attr = path.rpartition(".")
    _set_child(root.get_submodule(parent) if parent else root, attr, new)


def _set_child(parent: nn.Module, attr: str, child: nn.Module) -> None:
    """``setattr``, and where ``parent`` is a GraphModule that keeps ``attr`` across ``deepcopy``
    (:func:`tedepr_fx.capture.trace.preserve`), the kept reference too: else a copy of the
    model would bring the replaced layer back."""
    if isinstance(parent, fx.GraphModule) and attr in parent.meta.get(_USER_PRESERVED_ATTRIBUTES_KEY, {}):
        preserve(parent, attr, child)
    else:
        setattr(parent, attr, child)


def _dense_layer(name: str, module: nn.Module) -> nn.Module:
    for kinds, build in _DENSE:
        if isinstance(module, kinds):
            with torch.no_grad():
                layer = build(module)
            layer.train(module.training)
            return layer
    raise LayerError(name, f"{type(module).__name__} has no dense equivalent that densify knows; "
                           "bake it instead (tedepr_fx.bake keeps its structure and removes its masks)")


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous())


def _bias(module: nn.Module) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


def _linear(module: nn.Module) -> nn.Module:
    weight = cast(torch.Tensor, module.to_dense())  # type: ignore[operator]
    if getattr(module, "weight_layout", "linear") == "conv1d":
        weight = weight.t()
    bias = _bias(module)
    return _filled(nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                             device=weight.device, dtype=weight.dtype), weight, bias)


def _conv(module: nn.Module) -> nn.Module:
    weight = cast(torch.Tensor, module.to_dense())  # type: ignore[operator]
    bias = _bias(module)
    conv = cast(nn.Conv2d, module)  # the geometry attributes every convolution here shares
    # torch types a Conv2d's geometry as tuple[int, ...]; a 2-d convolution's has two entries
    layer = nn.Conv2d(conv.in_channels, conv.out_channels, cast(Pair, conv.kernel_size),
                      stride=cast(Pair, conv.stride), padding=cast("Pair | str", conv.padding),
                      dilation=cast(Pair, conv.dilation), groups=getattr(module, "groups", 1),
                      bias=bias is not None, padding_mode=conv.padding_mode,
                      device=weight.device, dtype=weight.dtype)
    return _filled(layer, weight, bias)


def _filled(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """``layer`` holding copies of ``weight`` and ``bias`` as its parameters."""
    layer.weight = _param(weight)
    if bias is not None:
        layer.bias = _param(bias)
    return layer


def _embedding(module: nn.Module) -> nn.Module:
    table = cast(torch.Tensor, module.to_dense())  # type: ignore[operator]
    emb = cast(nn.Embedding, module)
    layer = nn.Embedding(table.shape[0], table.shape[1], padding_idx=emb.padding_idx,
                         norm_type=getattr(module, "norm_type", 2.0),
                         scale_grad_by_freq=getattr(module, "scale_grad_by_freq", False),
                         sparse=getattr(module, "sparse", False), device=table.device, dtype=table.dtype)
    layer.weight = _param(table)
    return layer


def _lstm(module: nn.Module) -> nn.Module:
    src = cast(nn.LSTM, module)
    ref = next(iter(module.parameters()))
    layer = nn.LSTM(src.input_size, src.hidden_size, num_layers=src.num_layers, bias=src.bias,
                    batch_first=src.batch_first, dropout=src.dropout, bidirectional=src.bidirectional,
                    proj_size=src.proj_size, device=ref.device, dtype=ref.dtype)
    for flat in layer._flat_weights_names:
        setattr(layer, flat, _param(_lstm_weight(module, flat)))
    return layer


def _lstm_weight(module: nn.Module, flat: str) -> torch.Tensor:
    """The effective ``nn.LSTM`` parameter ``flat`` of a masked LSTM or a TT-LSTM."""
    if isinstance(module, MaskedLSTM):
        return module.masked(flat) if flat in module.prunable else cast(torch.Tensor, getattr(module, flat))
    tt = cast(TTLSTM, module)
    kind, _, layer = flat.partition("_l")  # weight_ih / weight_hh / bias_ih / bias_hh, layer index
    if kind.startswith("weight_"):
        return tt.dense_map(f"{kind.removeprefix('weight_')}_l{layer}")
    bias: torch.Tensor = getattr(tt, f"bias_l{layer}")
    return bias if kind == "bias_ih" else torch.zeros_like(bias)


_DENSE: list[tuple[tuple[type, ...], Callable[[nn.Module], nn.Module]]] = [
    ((TTMatrixLinear, TuckerLinear, MaskedLinear, MaskedTransposedLinear), _linear),
    ((TTMatrixConv2d, Tucker2Conv2d, MaskedConv2d), _conv),
    ((TTMatrixEmbedding, MaskedEmbedding), _embedding),
    ((TTLSTM, MaskedLSTM), _lstm),
]
