"""The on-disk cache of the suite: one JSON record per cell, named by a hash of its configuration.

``<out>/records/<model>/<method>_<sparsity>_seed<seed>_<key>.json`` where ``key`` is
the first 16 hex digits of the sha256 of the cell's configuration
(:func:`tedepr_fx.bench.cell.cell_config`) written as canonical JSON. A cell whose
record exists with ``status: "ok"`` is finished and is skipped; a failed cell
leaves a record with ``status: "error"`` and is run again next time. Records are
written atomically (a temporary file renamed into place), so an interrupted suite
leaves only finished records and resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

RECORDS = "records"


def config_key(config: dict[str, Any]) -> str:
    """First 16 hex digits of the sha256 of ``config`` as canonical JSON."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path(out: Path, config: dict[str, Any]) -> Path:
    """Where the record of the cell with ``config`` lives under ``out``."""
    sparsity = "dense" if config["sparsity"] is None else f"{config['sparsity']:g}"
    name = f"{config['method']}_{sparsity}_seed{config['seed']}_{config_key(config)}.json"
    return out / RECORDS / str(config["model"]) / name


def load_record(path: Path) -> dict[str, Any] | None:
    """The finished record at ``path``, or None (missing, unreadable, or not ``status: ok``)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != "ok":
        return None
    return record


def save_record(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
