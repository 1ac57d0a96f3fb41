"""One record per layer: what the rewrite decided and did, written once by the passes.

A :class:`LayerRecord` is built by :func:`layer_record` from the match pass's
decision, the module the factorize pass put in the layer's place and the budget
the prune pass allocated. ``plan`` returns these records (kept counts predicted),
``transform`` stores them on the model it returns (:data:`RECORD_ATTR`, a
:class:`Rewrite`), and ``report`` reads them back, counting kept entries from the
masks. Everything in a record is plain data (ints, strings, lists), so it
serializes to JSON and pickles with the model.

Example
-------
>>> import torch, tedepr_fx
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
>>> rules = {"version": 1, "rules": [{"name": "hidden", "match": {"name": "0"}, "action": "factorize",
...          "factorize": {"format": "tt", "rank": 2, "modes": {"in": [8, 8], "out": [4, 8]}}}]}
>>> rec = tedepr_fx.plan(model, rules, example_inputs=(torch.randn(2, 64),)).rows[0]
>>> (rec.name, rec.rule, rec.new_type, rec.ranks, rec.dense, rec.stored)
('0', 'hidden', 'TTLinear', [1, 2, 1], 2048, 192)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RECORD_ATTR = "tedepr_rewrite"  # the Rewrite on a transformed root
COST_WORDS = "x the dense FLOPs"  # how a record's note on a layer costlier than dense ends


@dataclass
class LayerRecord:
    """One weight-bearing layer and what the rewrite did (or, in a plan, would do) to it.

    ``kept_source`` says where ``kept`` comes from: ``"dense"`` (untouched layer),
    ``"budget"`` (the exact count the budget gives: uniform allocation, or a layer
    kept whole), ``"predicted"`` (``plan`` under a global / ERK allocation, where
    scores move entries between layers) or ``"actual"`` (counted from the masks).

    ``scorer`` is the scorer the layer's rule asks for; ``scored_by`` the one that scored
    it in ``transform``: the same, or the rules' ``scoring.without_data`` scorer when the
    rule's scorer needs data and none was given (then ``no_data_fallback`` is true and the
    note says so). A layer whose weight is tied to another holder is kept dense and its
    note names the tied group.
    """

    name: str
    rule: str
    action: str  # "factorize" | "prune" | "keep" | "unmatched"
    how: str  # "graph" | "swap"
    old_type: str
    new_type: str
    format: str | None = None  # a registered format, "dense" for action: prune
    init: str | None = None
    scorer: str | None = None  # the scorer the rule asks for
    scored_by: str | None = None  # the scorer that scored the layer (transform only)
    no_data_fallback: bool = False  # scored_by is the rules' scoring.without_data: no data was given
    rank_spec: Any = None  # the rule's rank: int, list, float share, "full" or "auto"
    auto_rank: int | None = None  # what rank: auto resolved to
    in_modes: list[int] | None = None
    out_modes: list[int] | None = None
    ranks: list[int] | None = None
    padding: dict[str, int] = field(default_factory=dict)  # e.g. {"in": 4} zero features added
    dense_shape: list[int] = field(default_factory=list)
    dense: int = 0
    stored: int = 0
    kept: int = 0
    kept_source: str = "dense"
    flops_before: int | None = None
    flops_after: int | None = None
    input_shape: list[int] | None = None
    path: str = ""  # qualified name of the layer's module in the rewritten model
    region: str = ""  # the capture region that holds the layer ("" for the root)
    node: str = ""  # the fx node that calls the layer in its region's code (how == "graph")
    collapse: str = ""  # "collapsed: ..." when the masked layer is dead or rank 1 (transform only)
    note: str = ""

    @property
    def modes_text(self) -> str:
        if self.in_modes is None or self.out_modes is None:
            return ""
        return f"{_ints(self.in_modes)}->{_ints(self.out_modes)}"

    @property
    def cost_note(self) -> str:
        """``"1.20x the dense FLOPs"`` when the rewritten layer costs more FLOPs than the dense one
        at the example input, else ``""``."""
        if self.flops_before and self.flops_after is not None and self.flops_after > self.flops_before:
            return f"{self.flops_after / self.flops_before:.2f}{COST_WORDS}"
        return ""

    @property
    def ranks_text(self) -> str:
        return _ints(self.ranks) if self.ranks else ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Rewrite:
    """What ``transform`` did to a model: one record per layer (model order) and the regions."""

    records: list[LayerRecord]
    regions: list[dict[str, str]]
    code_before: str = ""  # the annotated code of the model as captured (``Plan.graph_diff``)
    identity: dict[str, Any] = field(default_factory=dict)  # model class, inputs, rules hash, layer order
    # what transform was given, as JSON data (model class, rules, example input specs, options),
    # so that tedepr_fx.storage can re-apply the rewrite to a fresh model
    source: dict[str, Any] = field(default_factory=dict)


def _ints(values: list[int]) -> str:
    return "[" + ",".join(str(int(v)) for v in values) + "]"


def format_fields(module: Any) -> dict[str, Any]:
    """The format-specific fields of a record, read from a built layer's description."""
    info = getattr(module, "tedepr_info", {})
    padding = {side: int(info[f"{side}_padding"]) for side in ("in", "out")
               if info.get(f"{side}_padding")}
    return {
        "in_modes": _int_list(info.get("in_modes")),
        "out_modes": _int_list(info.get("out_modes")),
        "ranks": _int_list(info.get("ranks")),
        "padding": padding,
    }


def _int_list(values: Any) -> list[int] | None:
    return [int(v) for v in values] if values is not None else None
