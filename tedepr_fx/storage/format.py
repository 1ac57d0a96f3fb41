"""What writing and reading share: the format's constants, mask bit packing, the checksum."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from tedepr_fx.errors import StorageError
from tedepr_fx.record import RECORD_ATTR, Rewrite

FORMAT = "tedepr_fx"
FORMAT_VERSION = 1
HF_WEIGHTS = "tedepr_fx.safetensors"  # not a name plain transformers loads (see save_pretrained)
MAX_HEADER = 100 * 2**20  # a larger header length is not a safetensors file at all


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A flat bool tensor as uint8 bytes, 8 entries a byte, first entry in the high bit."""
    padded = torch.zeros(math.ceil(mask.numel() / 8) * 8, dtype=torch.uint8)
    padded[: mask.numel()] = mask.to(torch.uint8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return (padded.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The inverse of :func:`pack_bits`."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8)
    return ((packed.reshape(-1, 1) >> shifts) & 1).reshape(-1)[:numel].to(torch.bool)


def index_dtype(numel: int) -> torch.dtype:
    return torch.int16 if numel <= 2**15 else torch.int32 if numel <= 2**31 else torch.int64


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}|{t.dtype}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def weights_file(path: str | Path) -> Path:
    """``path``, or the tensors file of a directory written by :func:`save_pretrained`."""
    path = Path(path)
    return path / HF_WEIGHTS if path.is_dir() and (path / HF_WEIGHTS).is_file() else path


def rewrite_of(model: nn.Module) -> Rewrite:
    """The record ``transform`` left on ``model``; a :class:`StorageError` when there is none."""
    rewrite = getattr(model, RECORD_ATTR, None)
    if not isinstance(rewrite, Rewrite):
        raise StorageError(f"this {type(model).__name__} was not produced by tedepr_fx.transform "
                           f"(no {RECORD_ATTR}); save a plain model with safetensors.torch.save_model")
    return rewrite


def in_zoo(model_class: str) -> bool:
    """Whether ``model_class`` (``module.QualName``) is defined in one of :mod:`tedepr_fx.models`'
    modules: those rebuild with default arguments, no structure needs storing."""
    import pkgutil

    import tedepr_fx.models as zoo

    zoo_modules = {f"{zoo.__name__}.{m.name}" for m in pkgutil.iter_modules(zoo.__path__)}
    return model_class.rpartition(".")[0] in zoo_modules


def legacy_prefix(prefix: bytes) -> bool:
    """A zip archive (``torch.save``'s default) or a pickle of protocol 2 to 5."""
    return prefix.startswith(b"PK\x03\x04") or (prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03",
                                                                                          b"\x04", b"\x05"))
