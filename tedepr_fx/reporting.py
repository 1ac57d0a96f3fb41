"""Rows, tables and JSON for a plan (dry run) or a report (transformed model).

Everything printed here is deterministic: rows in model order, integers printed
in full, no timings, no addresses. That is what makes a rewrite reviewable in
a pull request.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tedepr_fx.record import LayerRecord

if TYPE_CHECKING:
    from tedepr_fx.graphview import GraphView

# the version of the JSON document (docs/report.schema.json); raise it when a field changes meaning
SCHEMA_VERSION = 1

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
    code_before: str = ""  # the annotated code of the model as captured (graph_diff's old side)
    view: GraphView | None = field(default=None, repr=False, compare=False)  # the rewritten graph

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

    @property
    def records(self) -> list[LayerRecord]:
        """Every weight-bearing layer, rewritten or not, in the model's layer order."""
        records = self.rows + self.unmatched
        order = {name: i for i, name in enumerate(self.identity.get("order", []))}
        return sorted(records, key=lambda r: order.get(r.name, len(order))) if order else records

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``docs/report.schema.json``, version :data:`SCHEMA_VERSION`)."""
        identity = {k: v for k, v in self.identity.items() if k != "order"}
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "report" if isinstance(self, Report) else "plan",
            "title": self.title,
            "identity": {**_versions(), **identity},
            "rows": [r.as_dict() for r in self.rows],
            "unmatched": [r.as_dict() for r in self.unmatched],
            "regions": self.regions,
            "totals": self.totals,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_csv(self) -> str:
        """One row per layer (rewritten and unmatched, model order), the table's columns plus
        format, kept source and collapse; integers in full, no locale."""
        keys = [key for key, _ in COLUMNS] + ["format", "kept_source", "collapse"]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(keys)
        for r in self.records:
            writer.writerow(["" if getattr(r, k) is None else getattr(r, k) for k in keys])
        return buffer.getvalue()

    # -- the rewritten graph ----------------------------------------------------------------------

    def _view(self) -> GraphView:
        if self.view is None:
            raise ValueError("this table carries no graph (it was not made by tedepr_fx.plan or report)")
        return self.view

    def graph(self) -> str:
        """The rewritten graph's code, each layer call annotated with what the rewrite made of it
        (see :mod:`tedepr_fx.graphview`); eager regions list what was swapped in them."""
        return self._view().code(self.records)

    def graph_diff(self, context: int = 1) -> str:
        """Unified diff of the annotated code before (as captured) and after the rewrite."""
        import difflib

        old = (self.code_before or self._view().code(self.records, before=True)).splitlines()
        new = self.graph().splitlines()
        lines = difflib.unified_diff(old, new, "before", "after", n=context, lineterm="")
        return "".join(line + "\n" for line in lines)

    def to_dot(self) -> str:
        """The rewritten graph in Graphviz DOT, rewritten layers coloured by format."""
        return self._view().dot(self.records, title=self.title)

    def write_dot(self, path: str | Path) -> Path:
        """Write :meth:`to_dot` to ``path``: ``.dot`` as text, ``.svg`` / ``.png`` / ``.pdf``
        rendered by Graphviz's ``dot`` (a ``ValueError`` saying so when it is not installed)."""
        from tedepr_fx.graphview import render_dot

        return render_dot(self.to_dot(), path)

    def write_chart(self, path: str | Path) -> Path:
        """A PNG chart (matplotlib, the ``plot`` extra): dense vs stored vs kept weights and
        FLOPs before vs after, per layer."""
        from tedepr_fx.charts import layer_chart

        return layer_chart(self, path)

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
                      + ", ".join(f"`{r.name}` ({_unmatched_text(r)})" for r in self.unmatched)]
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
                         + ", ".join(f"{r.name} ({_unmatched_text(r)})" for r in self.unmatched))
        lines.append("regions: " + "; ".join(_region_text(r) for r in self.regions))
        return "\n".join(lines)


def report_schema() -> dict[str, Any]:
    """The JSON Schema of :meth:`Plan.to_dict` (committed as ``docs/report.schema.json``;
    regenerate with ``python -m tedepr_fx.reporting > docs/report.schema.json``)."""
    from dataclasses import fields

    from pydantic import TypeAdapter

    record = TypeAdapter(LayerRecord).json_schema(mode="serialization")
    record.pop("description", None)
    record["additionalProperties"] = False
    record["required"] = [f.name for f in fields(LayerRecord)]  # as_dict writes every field
    props = record["properties"]
    props["action"]["enum"] = ["factorize", "prune", "keep", "unmatched"]
    props["how"]["enum"] = ["graph", "swap"]
    props["kept_source"]["enum"] = ["dense", "budget", "predicted", "actual"]
    count = {"type": "integer", "minimum": 0}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "tedepr_fx plan / report",
        "description": "What tedepr_fx.plan predicts or tedepr_fx.report reads back from a transformed "
                       "model: one record per weight-bearing layer (`tedepr-fx plan --json`).",
        "type": "object",
        "additionalProperties": False,
        "required": ["schema_version", "kind", "title", "identity", "rows", "unmatched", "regions", "totals"],
        "properties": {
            "schema_version": {"const": SCHEMA_VERSION},
            "kind": {"enum": ["plan", "report"]},
            "title": {"type": "string"},
            "identity": {
                "type": "object", "additionalProperties": {"type": "string"},
                "required": ["tool", "torch"],
                "description": "tool and torch versions; the model's class, input shapes and the "
                               "sha256 of the resolved rules where known",
            },
            "rows": {"type": "array", "items": {"$ref": "#/$defs/record"}},
            "unmatched": {"type": "array", "items": {"$ref": "#/$defs/record"}},
            "regions": {"type": "array", "items": {
                "type": "object", "required": ["name", "mode"], "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "mode": {"enum": ["graph", "swap"]},
                               "reason": {"type": "string"}, "detail": {"type": "string"}}}},
            "totals": {
                "type": "object", "additionalProperties": False,
                "required": ["layers", "dense", "stored", "kept", "density_vs_dense", "unmatched_layers",
                             "unmatched_dense"],
                "properties": {"layers": count, "dense": count, "stored": count, "kept": count,
                               "density_vs_dense": {"type": ["number", "null"]},
                               "unmatched_layers": count, "unmatched_dense": count,
                               "flops_before": count, "flops_after": count},
            },
        },
        "$defs": {"record": record},
    }


class Report(Plan):
    """The same table, read back from a transformed model (kept counts are the real masks)."""


def _versions() -> dict[str, str]:
    from tedepr_fx.lock import versions

    return versions()


def _unmatched_text(r: LayerRecord) -> str:
    kind = ", unsupported layer kind" if r.note.startswith("unsupported layer kind") else ""
    return f"{r.old_type}, {r.dense}{kind}"


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


if __name__ == "__main__":  # python -m tedepr_fx.reporting > docs/report.schema.json
    print(json.dumps(report_schema(), indent=2, sort_keys=True))
