"""Rows, tables and JSON for a plan (dry run) or a report (transformed model).

Everything printed here is deterministic: rows in model order, integers printed
in full, no timings, no addresses. That is what makes a rewrite reviewable in
a pull request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tedepr_fx.record import LayerRecord

COLUMNS = [
    ("name", "layer"), ("rule", "rule"), ("action", "action"), ("how", "how"),
    ("old_type", "old type"), ("new_type", "new type"), ("modes_text", "modes"), ("ranks_text", "ranks"),
    ("dense", "dense"), ("stored", "stored"), ("kept", "kept"),
    ("flops_before", "FLOPs before"), ("flops_after", "FLOPs after"), ("note", "note"),
]


@dataclass
class Plan:
    """What ``transform`` would do (``tedepr_fx.plan``) or did (``tedepr_fx.report``).

    ``rows`` hold the layers a rule matched, ``unmatched`` the weight-bearing layers
    no rule matched, ``regions`` how each part of the model was captured.
    """

    rows: list[LayerRecord]
    unmatched: list[LayerRecord] = field(default_factory=list)
    regions: list[dict[str, str]] = field(default_factory=list)
    title: str = "tedepr_fx plan"
    # model class, input shapes, rules hash and layer order, for the lock file (set by ``plan``)
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, Any]:
        rows = self.rows
        dense = sum(r.dense for r in rows)
        kept = sum(r.kept for r in rows)
        totals: dict[str, Any] = {
            "layers": len(rows),
            "dense": dense,
            "stored": sum(r.stored for r in rows),
            "kept": kept,
            "density_vs_dense": round(kept / dense, 6) if dense else None,
            "unmatched_layers": len(self.unmatched),
            "unmatched_dense": sum(r.dense for r in self.unmatched),
        }
        if all(r.flops_before is not None for r in rows) and rows:
            totals["flops_before"] = sum(r.flops_before for r in rows)
            totals["flops_after"] = sum(r.flops_after or 0 for r in rows)
        return totals

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "rows": [r.as_dict() for r in self.rows],
            "unmatched": [r.as_dict() for r in self.unmatched],
            "regions": self.regions,
            "totals": self.totals,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def lock_text(self) -> str:
        """The lock file's text: versions, rules hash, model and inputs, one line per layer, totals.

        Byte-identical for the same model and rules on any machine (see :mod:`tedepr_fx.lock`).
        """
        from tedepr_fx.lock import lock_text

        return lock_text(self)

    def write_lock(self, path: str | Path) -> Path:
        """Write :meth:`lock_text` to ``path``; check it later with :func:`tedepr_fx.lock.check_lock`."""
        from tedepr_fx.lock import write_lock

        return write_lock(self, path)

    def _table(self) -> tuple[list[str], list[list[str]]]:
        headers = [h for _, h in COLUMNS]
        body = [[_cell(getattr(r, key)) for key, _ in COLUMNS] for r in self.rows]
        return headers, body

    def to_markdown(self) -> str:
        headers, body = self._table()
        lines = [f"## {self.title}", "", "| " + " | ".join(headers) + " |",
                 "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        lines += ["", _totals_text(self.totals)]
        if self.unmatched:
            lines += ["", "Unmatched layers (kept dense): "
                      + ", ".join(f"`{r.name}` ({r.old_type}, {r.dense})" for r in self.unmatched)]
        lines += ["", "Regions: " + "; ".join(_region_text(r) for r in self.regions)]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        headers, body = self._table()
        widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h)
                  for i, h in enumerate(headers)]
        numeric = {i for i, (key, _) in enumerate(COLUMNS)
                   if key in ("dense", "stored", "kept", "flops_before", "flops_after")}

        def fmt(cells: list[str]) -> str:
            return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        lines = [self.title, fmt(headers), fmt(["-" * w for w in widths])]
        lines += [fmt(row) for row in body]
        lines.append(_totals_text(self.totals))
        if self.unmatched:
            lines.append("unmatched (kept dense): "
                         + ", ".join(f"{r.name} ({r.old_type}, {r.dense})" for r in self.unmatched))
        lines.append("regions: " + "; ".join(_region_text(r) for r in self.regions))
        return "\n".join(lines)


class Report(Plan):
    """The same table, read back from a transformed model (kept counts are the real masks)."""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return str(value)


def _totals_text(t: dict[str, Any]) -> str:
    text = (f"total: {t['layers']} layers, dense {t['dense']}, stored {t['stored']}, kept {t['kept']}"
            + (f" (density {t['density_vs_dense']:.6f} of dense)" if t["density_vs_dense"] is not None else ""))
    if "flops_before" in t:
        text += f", FLOPs {t['flops_before']} -> {t['flops_after']}"
    if t["unmatched_layers"]:
        text += f"; {t['unmatched_layers']} unmatched layers with {t['unmatched_dense']} dense weights"
    return text


def _region_text(region: dict[str, str]) -> str:
    text = f"{region['name']}: {region['mode']}"
    return text + (f" ({region['reason']})" if region.get("reason") else "")
