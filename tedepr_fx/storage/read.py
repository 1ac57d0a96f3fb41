"""Reading a file's header and metadata: JSON only, every way a file can be wrong named."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tedepr_fx.errors import StorageError
from tedepr_fx.record import LayerRecord, Rewrite
from tedepr_fx.reporting import Report
from tedepr_fx.storage.format import FORMAT, FORMAT_VERSION, MAX_HEADER, legacy_prefix, weights_file


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a file written by :func:`save`, JSON values decoded; reads no tensor.

    Raises :class:`StorageError` for a missing, empty, truncated, corrupted, foreign,
    legacy pickled or newer-format file, naming the file and what is wrong.
    """
    path = weights_file(path)
    header = _header(path)
    raw = header.get("__metadata__")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise StorageError(f"{path}: a safetensors file, but not one written by tedepr_fx.save "
                           "(no 'format: tedepr_fx' in its metadata)")
    try:
        version = int(raw["format_version"])
    except (KeyError, ValueError):
        raise StorageError(f"{path}: corrupted metadata: format_version is "
                           f"{raw.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise StorageError(f"{path}: written in tedepr_fx file format {version} ({raw.get('tool', '?')}); "
                           f"this tedepr_fx reads format {FORMAT_VERSION} and older: upgrade tedepr_fx")
    meta: dict[str, Any] = {"format_version": version, "tool": raw.get("tool", ""),
                            "model_class": raw.get("model_class", ""), "sha256": raw.get("sha256", "")}
    for key in ("rules", "source", "rewrite", "layout", "modes"):
        try:
            meta[key] = json.loads(raw[key])
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise StorageError(f"{path}: corrupted metadata: {key!r} is missing or not JSON "
                               f"({type(error).__name__})") from None
    if "graph" in raw:  # a fully graph-captured model's structure (storage.graphdata)
        try:
            meta["graph"] = json.loads(raw["graph"])
        except (TypeError, json.JSONDecodeError):
            raise StorageError(f"{path}: corrupted metadata: 'graph' is not JSON") from None
    meta["tensors"] = {k: v for k, v in header.items() if k != "__metadata__"}
    return meta


def read_report(path: str | Path) -> Report:
    """The :class:`tedepr_fx.Report` of a saved model, from its metadata alone (no model code)."""
    rewrite = stored_rewrite(weights_file(path), read_metadata(path))
    return Report([r for r in rewrite.records if r.action != "unmatched"],
                  [r for r in rewrite.records if r.action == "unmatched"], rewrite.regions,
                  title="tedepr_fx report", code_before=rewrite.code_before, identity=dict(rewrite.identity))


def stored_rewrite(path: Path, meta: dict[str, Any]) -> Rewrite:
    """The :class:`Rewrite` the file records (its records as the report read them)."""
    data = meta["rewrite"]
    known = {f.name for f in dataclasses.fields(Rewrite)} - {"records", "source"}
    try:
        return Rewrite(records=[record_from(r) for r in data["records"]],
                       source={**meta["source"], "model_class": meta["model_class"], "rules": meta["rules"]},
                       **{k: v for k, v in data.items() if k in known})
    except (KeyError, TypeError) as error:
        raise StorageError(f"{path}: corrupted metadata: the layer records are unreadable ({error})") from None


def _header(path: Path) -> dict[str, Any]:
    """The safetensors header of ``path``, checked against the file's size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            body = f.read(length) if 0 < length <= MAX_HEADER else b""
    except FileNotFoundError:
        raise StorageError(f"{path}: no such file") from None
    except OSError as error:
        raise StorageError(f"{path}: cannot read it ({error.strerror or error})") from None
    if size == 0:
        raise StorageError(f"{path}: the file is empty")
    plausible = 0 < length <= MAX_HEADER
    if not (plausible and body[:1] == b"{") and legacy_prefix(prefix):
        raise StorageError(f"{path}: a legacy pickled file (torch.save); loading it runs code stored in it. "
                           "If you trust its source: tedepr_fx.load(path, trust_pickle=True), then "
                           "tedepr_fx.save it again to convert it to the safe format")
    if length < 0 or (plausible and not body):
        raise StorageError(f"{path}: truncated ({size} bytes, no complete safetensors header)")
    if not plausible or body[:1] != b"{":
        raise StorageError(f"{path}: not a tedepr_fx file (no safetensors header; a text file?)")
    if len(body) < length:
        raise StorageError(f"{path}: truncated (its header says {length} bytes, the file has {size - 8})")
    try:
        header = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StorageError(f"{path}: corrupted header (not JSON: {error})") from None
    if not isinstance(header, dict):
        raise StorageError(f"{path}: corrupted header (not a JSON object)")
    ends = [_end(path, k, v) for k, v in header.items() if k != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        raise StorageError(f"{path}: truncated ({size} bytes, its header describes {expected})")
    if size > expected:
        raise StorageError(f"{path}: corrupted ({size - expected} bytes after the last tensor)")
    return header


def _end(path: Path, key: str, entry: Any) -> int:
    try:
        begin, end = entry["data_offsets"]
        return int(end)
    except (TypeError, KeyError, ValueError):
        raise StorageError(f"{path}: corrupted header (tensor {key!r} has no data_offsets)") from None


def record_from(data: Mapping[str, Any]) -> LayerRecord:
    """A record from its JSON; fields this version does not know are dropped."""
    known = {f.name for f in dataclasses.fields(LayerRecord)}
    return LayerRecord(**{k: v for k, v in data.items() if k in known})


