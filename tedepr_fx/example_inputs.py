"""Example inputs a model can say for itself, for ``transform`` and ``plan`` called without any.

Capture needs one forward call to trace the parts of a model that do not trace as a
whole, to verify what it traced and to count FLOPs; data-free scorers (synflow) need
one to know the input shape. When the caller gives neither ``example_inputs`` nor
``data``, :func:`model_example` asks the model:

* a model of the project's zoo (:mod:`tedepr_fx.models`): its ``example_input()``;
* a Hugging Face model: its ``dummy_inputs`` (keyword inputs); a model whose main input
  is ``pixel_values`` (ViT...) gets a random image batch of its config's size, and an
  encoder-decoder (T5...) gets ``decoder_input_ids`` when its dummy inputs lack them;
* torch's ``nn.Transformer``, ``nn.TransformerEncoder`` / ``Decoder`` and their layers:
  random ``(batch, seq, d_model)`` inputs (``(seq, batch, d_model)`` unless
  ``batch_first``), ``src`` and ``tgt`` (or ``tgt`` and ``memory``) where two are needed.

An example is a pair ``(args, kwargs)``: positional and keyword inputs of one call.

>>> from tedepr_fx.models import vit
>>> args, kwargs = model_example(vit())
>>> [tuple(a.shape) for a in args], kwargs
([(2, 3, 32, 32)], {})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tedepr_fx.errors import CaptureError
from tedepr_fx.seeding import seeded

Example = tuple[tuple[Any, ...], dict[str, Any]]  # (args, kwargs) of one forward call

BATCH = 2  # samples of a made-up example
SEQ = 8  # tokens of a made-up sequence example


def split_example(example_inputs: Any) -> Example | None:
    """``example_inputs`` as ``(args, kwargs)``: a tensor or a tuple / list is positional,
    a mapping (a dict, a Hugging Face ``BatchEncoding``) is keyword inputs."""
    if example_inputs is None:
        return None
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def as_scorer_inputs(example: Example | None) -> Any:
    """The form the scorers take: a tuple of positional inputs, or a dict of keyword inputs."""
    if example is None:
        return None
    args, kwargs = example
    if kwargs and args:
        raise CaptureError("example inputs mixing positional and keyword inputs are not supported; "
                           "pass them all by keyword (a dict)")
    return dict(kwargs) if kwargs else args


def model_example(model: nn.Module) -> Example | None:
    """Example inputs the model can say for itself (see the module docstring), else None.

    Random values are drawn under a fixed seed with the caller's RNG state left as it was,
    so the same model always gets the same example.
    """
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with seeded(0, cuda):
        zoo = getattr(model, "example_input", None)
        if callable(zoo):
            return (zoo(),), {}
        if _is_hugging_face(model):
            return _hugging_face_example(model)
        return _torch_transformer_example(model)


def require_example(model: nn.Module, why: str) -> Example:
    """:func:`model_example`, or a :class:`CaptureError` saying to pass ``example_inputs``."""
    example = model_example(model)
    if example is None:
        raise CaptureError(
            f"{why}, and {type(model).__name__} cannot say its own example inputs (it has no "
            "example_input(), no Hugging Face dummy_inputs and is not one of torch's Transformer "
            "modules); pass example_inputs=(x,) (or a dict of keyword inputs) or data=..."
        )
    return example


# --- Hugging Face ---------------------------------------------------------------------------------


def _is_hugging_face(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(type(model), "dummy_inputs")


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _hugging_face_example(model: nn.Module) -> Example | None:
    config = model.config
    main = getattr(model, "main_input_name", "input_ids")
    if main == "pixel_values":
        size = getattr(config, "image_size", 224)
        size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        channels = int(getattr(config, "num_channels", 3))
        return (), {"pixel_values": torch.randn(BATCH, channels, *size, device=_device(model))}
    try:
        dummy = model.dummy_inputs
    except Exception:  # noqa: BLE001 - a model whose dummy inputs cannot be built says nothing
        return None
    if not isinstance(dummy, Mapping) or main not in dummy:
        return None
    kwargs = {k: v.to(_device(model)) if isinstance(v, torch.Tensor) else v for k, v in dummy.items()}
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" not in kwargs:
        ids = kwargs.get("input_ids")
        if isinstance(ids, torch.Tensor):
            kwargs["decoder_input_ids"] = ids.clone()
    return (), kwargs


# --- torch's Transformer modules -------------------------------------------------------------------


def _tokens(d_model: int, batch_first: bool, device: torch.device, seq: int = SEQ) -> torch.Tensor:
    shape = (BATCH, seq, d_model) if batch_first else (seq, BATCH, d_model)
    return torch.randn(*shape, device=device)


def _layer_shape(layer: nn.Module) -> tuple[int, bool] | None:
    """``(d_model, batch_first)`` of a torch encoder or decoder layer."""
    attn = getattr(layer, "self_attn", None)
    if not isinstance(attn, nn.MultiheadAttention):
        return None
    return attn.embed_dim, attn.batch_first


def _torch_transformer_example(model: nn.Module) -> Example | None:
    device = _device(model)
    if isinstance(model, nn.Transformer):
        src = _tokens(model.d_model, model.batch_first, device)
        return (src, _tokens(model.d_model, model.batch_first, device, seq=SEQ - 2)), {}
    if isinstance(model, (nn.TransformerEncoder, nn.TransformerDecoder)):
        shape = _layer_shape(model.layers[0]) if len(model.layers) else None
        two = isinstance(model, nn.TransformerDecoder)
    elif isinstance(model, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        shape = _layer_shape(model)
        two = isinstance(model, nn.TransformerDecoderLayer)
    else:
        return None
    if shape is None:
        return None
    x = _tokens(*shape, device)
    return ((x, _tokens(*shape, device)) if two else (x,)), {}
