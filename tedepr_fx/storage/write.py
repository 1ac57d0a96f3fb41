"""Saving: kept values, packed masks, untouched tensors, and the rewrite as JSON metadata."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from tedepr_fx.errors import StorageError
from tedepr_fx.layers.masked import MaskedMixin, iter_masked
from tedepr_fx.record import LayerRecord, Rewrite
from tedepr_fx.storage.format import (
    FORMAT,
    FORMAT_VERSION,
    in_zoo,
    index_dtype,
    pack_bits,
    rewrite_of,
    tensors_sha256,
)
from tedepr_fx.storage.graphdata import graph_spec


def transform_source(model: nn.Module, rules: Any, example: Any, **options: Any) -> dict[str, Any]:
    """What ``transform`` was given, as JSON data: model class, rules, input specs, options."""
    cls = type(model)
    return {"model_class": f"{cls.__module__}.{cls.__qualname__}",
            "rules": rules.model_dump(mode="json", by_alias=True, exclude_none=True),
            "inputs": _input_specs(example), "options": options}


def save(model: nn.Module, path: str | Path) -> Path:
    """Write a model returned by :func:`tedepr_fx.transform` to ``path`` (safetensors).

    Kept values only, masks packed (bits or indices, the smaller), untouched tensors as
    they are, metadata as JSON. The write is atomic: a crash leaves no half-written file.
    Masks must be boolean (a model in the middle of scoring cannot be saved).
    """
    rewrite = rewrite_of(model)
    tensors, layout = _pack(model)
    stored = {f.name: getattr(rewrite, f.name) for f in dataclasses.fields(Rewrite)
              if f.name not in ("records", "source")}
    stored["records"] = [_compact(r) for r in _report_records(model, rewrite)]
    metadata = {
        "format": FORMAT, "format_version": str(FORMAT_VERSION),
        "tool": _tool_versions(), "model_class": str(rewrite.source.get("model_class", "")),
        "rules": _json(rewrite.source.get("rules")),
        "source": _json({k: v for k, v in rewrite.source.items() if k not in ("rules", "model_class")}),
        "rewrite": _json(stored), "layout": _json(layout), "modes": _json(_modes(model)),
        "sha256": tensors_sha256(tensors),
    }
    model_class = str(rewrite.source.get("model_class", ""))
    spec = None if in_zoo(model_class) else graph_spec(  # the zoo builds itself
        model, rewrite.records, rewrite.regions, model_class)
    if spec is not None:  # the structure as data: load needs no model= (storage.graphdata)
        metadata["graph"] = _json(spec)
    path = Path(path)
    _atomic_write(path, tensors, metadata)
    return path


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _report_records(model: nn.Module, rewrite: Rewrite) -> list[LayerRecord]:
    """The records as :func:`tedepr_fx.report` reads them from the model (kept = the masks)."""
    from tedepr_fx.api import report

    table = report(model)
    by_name = {r.name: r for r in [*table.rows, *table.unmatched]}
    return [by_name.get(r.name, r) for r in rewrite.records]


def _compact(record: LayerRecord) -> dict[str, Any]:
    """A record's fields that differ from their defaults (the others are filled in on reading)."""
    defaults = LayerRecord(name="", rule="", action="", how="", old_type="", new_type="")
    return {k: v for k, v in record.as_dict().items()
            if k in ("name", "rule", "action", "how", "old_type", "new_type") or v != getattr(defaults, k)}


def _pack(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The file's tensors and, per state key, how it is stored."""
    state = model.state_dict()
    # a baked layer has no mask buffers any more: its mask is its nonzero entries (get_mask),
    # so a baked model saves (and loads back, unbaked) like the model it was baked from
    masks = {f"{q}.{n}" if q else n: cast(MaskedMixin, m).get_mask(n) for q, m, n in iter_masked(model)}
    masked = set(masks)
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for key, value in state.items():
        if key.removesuffix("_mask") in masked and key.endswith("_mask"):
            continue  # stored with its tensor
        if key in masked:
            mask_key = key + "_mask"
            tensors[key], packed, layout[key] = _pack_masked(key, value.detach().cpu(), masks[key].detach().cpu())
            if packed is not None:
                tensors[mask_key] = packed
            continue
        view = (value.device, value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                value.stride(), value.dtype) if value.numel() else None
        if view is not None and view in seen:
            layout[key] = {"kind": "alias", "of": seen[view]}  # a tied weight: stored once
            continue
        if view is not None:
            seen[view] = key
        tensors[key] = _own_copy(value.detach())
        layout[key] = {"kind": "plain"}
    return tensors, layout


def _own_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor sharing no memory with the model (safetensors refuses shared
    memory, and a partial view of another tensor would be)."""
    copy = tensor.cpu().contiguous()
    return copy.clone() if copy.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr() else copy


def _pack_masked(key: str, value: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """Kept values, the packed mask (None when all entries are kept) and the layout entry."""
    if mask.dtype != torch.bool:
        raise StorageError(f"mask of {key!r} is {mask.dtype}, not bool: the model is in the middle of "
                           "scoring; save it after transform returns")
    flat = mask.reshape(-1)
    kept, numel = int(flat.sum()), flat.numel()
    entry: dict[str, Any] = {"kind": "masked", "shape": list(value.shape), "kept": kept}
    values = value.reshape(-1)[flat].clone()
    indices_dtype = index_dtype(numel)
    index_bytes = kept * torch.empty((), dtype=indices_dtype).element_size()
    if kept == numel:
        entry["mask"], packed = "all", None
    elif index_bytes < math.ceil(numel / 8):
        entry["mask"], packed = "indices", flat.nonzero().reshape(-1).to(indices_dtype)
    else:
        entry["mask"], packed = "bits", pack_bits(flat)
    return values, packed, entry


def _atomic_write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _modes(model: nn.Module) -> dict[str, Any]:
    """The root's train/eval mode and the modules whose mode differs from it."""
    return {"training": model.training,
            "flipped": [n for n, m in model.named_modules() if n and m.training != model.training]}


def _input_specs(example: Any) -> dict[str, Any] | None:
    """Shapes and dtypes of the example's tensors; plain scalars by value; None if neither."""
    if example is None:
        return None
    args, kwargs = example
    arg_specs = [_spec(a) for a in args]
    kwarg_specs = {k: _spec(v) for k, v in kwargs.items()}
    complete = not any("type" in s for s in [*arg_specs, *kwarg_specs.values()])
    return {"args": arg_specs, "kwargs": kwarg_specs, "complete": complete}


def _spec(value: Any) -> dict[str, Any]:
    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    return {"type": type(value).__name__}


def _tool_versions() -> str:
    import tedepr_fx

    return f"tedepr_fx {tedepr_fx.__version__}, torch {torch.__version__}"


