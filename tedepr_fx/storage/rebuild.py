"""Loading: re-apply the recorded rewrite to a base model, check it, then load the tensors."""

from __future__ import annotations

import dataclasses
import importlib
import math
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tedepr_fx.capture import preserve
from tedepr_fx.errors import StorageError
from tedepr_fx.layers.masked import iter_masked
from tedepr_fx.record import RECORD_ATTR, LayerRecord, Rewrite
from tedepr_fx.storage.format import (
    MAX_HEADER,
    in_zoo,
    legacy_prefix,
    rewrite_of,
    tensors_sha256,
    unpack_bits,
    weights_file,
)
from tedepr_fx.storage.graphdata import build_base
from tedepr_fx.storage.read import read_metadata, stored_rewrite

# record fields that the rewrite's structure decides; the others (kept counts, the scorer,
# notes) depend on the scores, which the file's masks replace
STRUCTURAL_FIELDS = ("name", "rule", "action", "how", "old_type", "new_type", "format", "init",
                     "rank_spec", "auto_rank", "in_modes", "out_modes", "ranks", "padding",
                     "dense_shape", "dense", "stored", "path")
_REBUILD_SCORER = "magnitude"  # data-free and cheap; the file's masks overwrite its choice


def load(path: str | Path, model: nn.Module | None = None, *, example_inputs: Any = None,
         trust_pickle: bool = False) -> nn.Module:
    """Rebuild the model saved in ``path`` by :func:`save`; ``model`` is never modified.

    The recorded rewrite is re-applied to ``model``, a fresh module of the original class
    (``MyNet()``, ``AutoModelForCausalLM.from_config(cfg)``...), with the recorded rules,
    options and example input shapes, and a data-free scorer whose masks the file's
    replace; its layer records must equal the stored ones, then the tensors load. The
    module's structure is code, not data, so ``model`` is required, except for the
    classes of :mod:`tedepr_fx.models`, which are built with their default arguments.
    ``example_inputs`` overrides the recorded example input specs (needed when the
    recorded inputs held values other than tensors and plain scalars).

    ``trust_pickle=True`` loads a legacy file written with ``torch.save`` (it runs the
    code the file holds: only for files you trust).

    Raises :class:`StorageError` naming the file and the first tensor, layer or field
    that does not match.
    """
    path = weights_file(path)
    if trust_pickle and _is_pickle(path):
        legacy = torch.load(path, weights_only=False)
        if not isinstance(legacy, nn.Module):
            raise StorageError(f"{path}: the pickle holds a {type(legacy).__name__}, not a model")
        return legacy
    meta = read_metadata(path)
    if model is None and "graph" in meta and not in_zoo(meta["model_class"]):
        base: nn.Module = build_base(meta["graph"], str(path))  # the file's structure, checked below
    else:
        base = model if model is not None else _zoo_model(path, meta["model_class"])
        _check_class(path, base, meta["model_class"])
    rebuilt = _rebuild(path, base, meta, example_inputs)
    stored = stored_rewrite(path, meta)
    _replay_compaction(rebuilt, stored.records)
    _compare_records(path, stored.records, rewrite_of(rebuilt).records)
    _compare_graphs(path, stored, rewrite_of(rebuilt))
    _check_kept(path, stored.records, meta["layout"])
    _load_tensors(path, rebuilt, meta)
    _set_modes(rebuilt, meta["modes"])
    preserve(rebuilt, RECORD_ATTR, stored)
    return rebuilt


def _is_pickle(path: Path) -> bool:
    """Whether ``path`` is a ``torch.save`` file (zip or bare pickle), not a safetensors one."""
    try:
        with path.open("rb") as f:
            prefix, first = f.read(8), f.read(1)
    except OSError:
        return False
    length = int.from_bytes(prefix, "little")
    return legacy_prefix(prefix) and not (len(prefix) == 8 and 0 < length <= MAX_HEADER and first == b"{")


def _zoo_model(path: Path, model_class: str) -> nn.Module:
    """A default-built model of the zoo (:mod:`tedepr_fx.models`); others need ``model=``."""
    module_name, _, name = model_class.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name, None) if in_zoo(model_class) else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise StorageError(f"{path}: holds a rewrite of {model_class}; pass a fresh model of that class, "
                           f"tedepr_fx.load(path, model=...) (a module's structure is code, which a safe "
                           "file does not hold)")
    try:
        return cls()
    except TypeError as error:
        raise StorageError(f"{path}: cannot build {model_class}() with default arguments ({error}); "
                           "pass model=") from None


def _check_class(path: Path, model: nn.Module, model_class: str) -> None:
    cls = type(model)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if name != model_class:
        raise StorageError(f"{path}: the file holds a rewrite of {model_class}, but model= is a {name}")


def _rebuild(path: Path, base: nn.Module, meta: dict[str, Any], example_inputs: Any) -> nn.Module:
    """``base`` transformed again as recorded, scored by a cheap data-free scorer."""
    from tedepr_fx.api import transform
    from tedepr_fx.errors import TedeprError
    from tedepr_fx.passes.factorize import DEFAULT_AUTO_RANK_MULTIPLE
    from tedepr_fx.rules import load_rules

    options = meta["source"].get("options", {})
    device = next((p.device for p in base.parameters()), torch.device("cpu"))
    example = (example_inputs if example_inputs is not None
               else _example_from(path, meta["source"].get("inputs"), device))
    try:
        rules = load_rules(meta["rules"]).with_scorer(_REBUILD_SCORER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the rebuild's notes (collapse, fallbacks) are not news
            return transform(base, rules, example_inputs=example, seed=int(options.get("seed", 0)),
                             init=options.get("init"), verbose=False,
                             auto_rank_multiple=float(options.get("auto_rank_multiple", DEFAULT_AUTO_RANK_MULTIPLE)))
    except TedeprError as error:
        raise StorageError(f"{path}: re-applying the recorded rewrite to the given "
                           f"{type(base).__qualname__} failed: {error}") from error


def _replay_compaction(model: nn.Module, stored: list[LayerRecord]) -> None:
    """Give each layer the file saved after :func:`tedepr_fx.compact` its compacted ranks: an
    empty layer of the same class with the stored ranks takes its place (the file's tensors
    fill it), and its record takes the stored structure (then compared as for any layer)."""
    from tedepr_fx.compaction import NOTE, _builder
    from tedepr_fx.deploy import replace_module

    rewrite = rewrite_of(model)
    for i, (saved, record) in enumerate(zip(stored, rewrite.records)):
        if not saved.note.startswith(NOTE) or saved.ranks == record.ranks or not record.path:
            continue
        layer = model.get_submodule(record.path)
        build = _builder(layer)
        if build is None or saved.ranks is None or len(saved.ranks) != len(record.ranks or []):
            continue  # left to _compare_records, which names the layer and the field
        new = build(layer, list(saved.ranks))
        new.train(layer.training)
        replace_module(model, record.path, new)
        rewrite.records[i] = dataclasses.replace(record, ranks=list(saved.ranks), stored=saved.stored,
                                                 flops_after=saved.flops_after, note=saved.note)


def _compare_records(path: Path, stored: list[LayerRecord], rebuilt: list[LayerRecord]) -> None:
    """One error naming the first layer and field where the rebuilt model differs."""
    for i, (a, b) in enumerate(zip(stored, rebuilt)):
        for name in STRUCTURAL_FIELDS:
            if getattr(a, name) != getattr(b, name):
                raise StorageError(f"{path}: the given model does not match the file: layer {a.name!r} "
                                   f"(record {i}): {name} is {getattr(a, name)!r} in the file, "
                                   f"{getattr(b, name)!r} on the given model")
    if len(stored) != len(rebuilt):
        longer, which = (stored, "file") if len(stored) > len(rebuilt) else (rebuilt, "given model")
        raise StorageError(f"{path}: the given model does not match the file: {len(stored)} weight-bearing "
                           f"layers in the file, {len(rebuilt)} on the given model (first extra one, in "
                           f"the {which}: {longer[min(len(stored), len(rebuilt))].name!r})")


def _compare_graphs(path: Path, stored: Rewrite, rebuilt: Rewrite) -> None:
    """One error naming the first capture region or line of captured code that differs
    (layers without weights, such as an activation, appear only there)."""
    regions = [(r.get("name"), r.get("mode")) for r in stored.regions]
    again = [(r.get("name"), r.get("mode")) for r in rebuilt.regions]
    if regions != again:
        first = next((a, b) for a, b in zip([*regions, None], [*again, None]) if a != b)
        raise StorageError(f"{path}: the given model does not match the file: capture region {first[0]} in the "
                           f"file, {first[1]} on the given model")
    code, code_again = stored.code_before.splitlines(), rebuilt.code_before.splitlines()
    if code != code_again:
        i = next(i for i, (a, b) in enumerate(zip([*code, ""], [*code_again, ""])) if a != b)
        raise StorageError(f"{path}: the given model does not match the file: its captured code differs at "
                           f"line {i + 1}: {(code + [''])[i].strip()!r} in the file, "
                           f"{(code_again + [''])[i].strip()!r} on the given model")


def _check_kept(path: Path, records: list[LayerRecord], layout: Mapping[str, Any]) -> None:
    """Each masked layer's kept count in its record equals what its packed masks keep."""
    kept: dict[str, int] = {}
    for key, entry in layout.items():
        if isinstance(entry, Mapping) and entry.get("kind") == "masked":
            owner = key.rpartition(".")[0]
            kept[owner] = kept.get(owner, 0) + int(entry.get("kept", 0))
    for record in records:
        if record.path in kept and kept[record.path] != record.kept:
            raise StorageError(f"{path}: tensors do not match the record: layer {record.name!r} keeps "
                               f"{record.kept} entries in its record, {kept[record.path]} in its masks")


def _load_tensors(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Unpack the file's tensors into ``model`` (dtypes follow the file), checking every one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except SafetensorError as error:
        raise StorageError(f"{path}: corrupted tensors ({error})") from None
    if meta["sha256"] != tensors_sha256(tensors):
        raise StorageError(f"{path}: corrupted (the tensors' sha256 differs from the one recorded)")
    try:
        state = dict(_unpack(path, tensors, meta["layout"]))
    except StorageError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise StorageError(f"{path}: corrupted metadata: the tensor layout is unreadable "
                           f"({type(error).__name__}: {error})") from None
    expected = model.state_dict()
    for key in expected:
        if key not in state:
            raise StorageError(f"{path}: tensors do not match the record: {key!r} is missing from the file")
    for key, value in state.items():
        if key not in expected:
            raise StorageError(f"{path}: tensors do not match the record: {key!r} is in the file, "
                               "not in the rebuilt model")
        if value.shape != expected[key].shape:
            raise StorageError(f"{path}: tensors do not match the record: {key!r} has shape "
                               f"{list(value.shape)} in the file, {list(expected[key].shape)} in the model")
    _follow_dtypes(model, state)
    with torch.no_grad():  # the rebuild's masks go: nothing the file's masks keep is "revived"
        for _, module, name in iter_masked(model):
            getattr(module, f"{name}_mask").fill_(True)
    model.load_state_dict(state, strict=True)


def _unpack(path: Path, tensors: dict[str, torch.Tensor],
            layout: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    def bad(key: str, what: str) -> StorageError:
        return StorageError(f"{path}: tensors do not match the record: {key!r} {what}")

    used = set()
    for key, entry in layout.items():
        kind = entry.get("kind")
        if kind == "alias":
            if entry.get("of") not in tensors:
                raise bad(key, f"is tied to {entry.get('of')!r}, which the file lacks")
            yield key, tensors[entry["of"]]
            continue
        if key not in tensors:
            raise bad(key, "is missing from the file")
        used.add(key)
        if kind == "plain":
            yield key, tensors[key]
        elif kind == "masked":
            used.add(key + "_mask")
            value, mask = _unpack_masked(key, tensors, entry, bad)
            yield key, value
            yield key + "_mask", mask
        else:
            raise bad(key, f"has an unknown storage kind {kind!r}")
    extra = sorted(set(tensors) - used)
    if extra:
        raise bad(extra[0], "is in the file but not in its layout")


def _unpack_masked(key: str, tensors: dict[str, torch.Tensor], entry: dict[str, Any],
                   bad: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense tensor (zeros where pruned) and its bool mask from kept values and packed mask."""
    shape, kept, values = list(entry["shape"]), int(entry["kept"]), tensors[key]
    numel = math.prod(shape)
    if values.dim() != 1 or values.numel() != kept:
        raise bad(key, f"holds {values.numel()} kept values; its record says {kept}")
    how = entry.get("mask")
    if how == "all":
        flat = torch.ones(numel, dtype=torch.bool)
    else:
        packed = tensors.get(key + "_mask")
        if packed is None:
            raise bad(key + "_mask", "is missing from the file")
        if how == "bits":
            if packed.dtype != torch.uint8 or packed.numel() != math.ceil(numel / 8):
                raise bad(key + "_mask", f"is not {math.ceil(numel / 8)} bytes of mask bits")
            flat = unpack_bits(packed, numel)
        elif how == "indices":
            index = packed.to(torch.int64)
            if index.numel() and (index[0] < 0 or index[-1] >= numel or bool((index.diff() <= 0).any())):
                raise bad(key + "_mask", f"holds indices that are not increasing within [0, {numel})")
            flat = torch.zeros(numel, dtype=torch.bool)
            flat[index] = True
        else:
            raise bad(key + "_mask", f"has an unknown mask packing {how!r}")
    if int(flat.sum()) != kept:
        raise bad(key + "_mask", f"keeps {int(flat.sum())} entries; its record says {kept}")
    dense = values.new_zeros(numel)
    dense[flat] = values
    return dense.reshape(shape), flat.reshape(shape)


def _follow_dtypes(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Give each parameter and buffer the file's dtype (a model saved in bfloat16 stays so);
    in place, so tied parameters stay one object."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        value = state.get(name)
        if value is not None and value.dtype != tensor.dtype:
            tensor.data = tensor.data.to(value.dtype)


def _set_modes(model: nn.Module, modes: Mapping[str, Any]) -> None:
    model.train(bool(modes.get("training", True)))
    flipped = set(modes.get("flipped", []))
    for name, module in model.named_modules():
        if name in flipped:
            module.training = not model.training


def _example_from(path: Path, inputs: Any, device: torch.device) -> Any:
    """Example inputs of the recorded shapes: ones for integer and bool tensors (valid token ids
    and attention masks), seeded normal values for floating ones."""
    if inputs is None:
        return None
    if not inputs.get("complete", False):
        raise StorageError(f"{path}: the recorded example inputs held values other than tensors and "
                           "scalars; pass example_inputs= of the shapes used in transform")
    generator = torch.Generator().manual_seed(0)

    def build(spec: Mapping[str, Any]) -> Any:
        if "value" in spec:
            return spec["value"]
        dtype = getattr(torch, str(spec["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise StorageError(f"{path}: corrupted metadata: unknown input dtype {spec['dtype']!r}")
        if dtype.is_floating_point:
            return torch.randn(spec["shape"], generator=generator).to(device, dtype)
        return torch.ones(spec["shape"], dtype=dtype, device=device)

    args, kwargs = inputs["args"], inputs["kwargs"]
    if args and kwargs:
        raise StorageError(f"{path}: the recorded example inputs mix positional and keyword inputs; "
                           "pass example_inputs=")
    return {k: build(s) for k, s in kwargs.items()} if kwargs else tuple(build(s) for s in args)


