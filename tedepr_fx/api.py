"""The public surface: ``transform``, ``plan``, ``report``, ``save``, ``load``.

``transform`` is only the composition of the passes::

    capture -> match -> factorize -> prune (score + mask) -> recompile -> record

Example
-------
>>> import torch, tedepr_fx
>>> from torch import nn
>>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
>>> rules = '''
... version: 1
... rules:
...   - name: hidden
...     match: {name: "1"}
...     action: factorize
...     factorize: {format: tucker, rank: full}
... '''
>>> gm = tedepr_fx.transform(model, rules, example_inputs=(torch.randn(2, 64),), init="decompose")
>>> [r.new_type for r in tedepr_fx.report(gm).rows]
['TuckerLinear']
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tedepr_fx.capture import Captured, capture, preserve
from tedepr_fx.errors import DataError
from tedepr_fx.passes.factorize import DEFAULT_AUTO_RANK_MULTIPLE, factorize
from tedepr_fx.passes.match import Decision, match, site_module
from tedepr_fx.passes.prune import prune
from tedepr_fx.passes.recompile import recompile
from tedepr_fx.reporting import Plan, Report, Row, modes_text, ranks_text
from tedepr_fx.rules import load_rules
from tedepr_fx.utils import as_tuple, meta_copy

RECORD_ATTR = "tedepr_record"  # on the transformed root: regions, untouched layers, input shapes


def transform(
    model: nn.Module,
    rules,
    *,
    example_inputs=None,
    data=None,
    loss_fn=None,
    output_fn=None,
    seed: int = 0,
    inplace: bool = False,
    strict: bool = False,
    init: str | None = None,
    verbose: bool = True,
    auto_rank_multiple: float = DEFAULT_AUTO_RANK_MULTIPLE,
) -> nn.Module:
    """Factorize and prune ``model`` as ``rules`` say; return an ordinary trainable module.

    Parameters
    ----------
    model
        Any ``nn.Module``. Left untouched (bit-identical state_dict) unless ``inplace=True``.
    rules
        A path to a YAML rule file, YAML text, a dict, or a ``RuleSet``.
    example_inputs
        Positional inputs of one forward call (a tensor or a tuple). They guide capture of
        models that do not trace as a whole, verify the captured graph, and give FLOP counts.
        Defaults to the inputs of the first batch of ``data``.
    data
        Iterable of ``(inputs, targets)`` batches for data-driven scorers; the rules'
        ``scoring.batches`` batches are taken from it.
    loss_fn
        ``loss_fn(outputs, targets)``; cross-entropy by default.
    output_fn
        Maps the model's output to the tensor ``loss_fn`` takes (e.g. ``lambda o: o.logits``
        for Hugging Face models); identity by default.
    seed
        Seeds factor initialisation and scoring: same seed, same inputs -> identical result.
    inplace
        Swap the layers of ``model`` itself instead of a deep copy (saves memory).
    strict
        Make a rule that matches no layer an error instead of a warning.
    init
        Override every rule's ``init`` (``"scratch"`` or ``"decompose"``).
    verbose
        Progress bars for scoring that takes more than a second (only on a terminal).
    auto_rank_multiple
        For ``rank: auto``: factors hold at most this multiple of the budget before pruning.

    Raises
    ------
    RuleError, LayerError, CaptureError, BudgetError, DataError
    """
    ruleset = load_rules(rules)
    example = as_tuple(example_inputs)
    batches = _take_batches(data, ruleset.scoring) if data is not None else []
    if example is None and batches:
        example = as_tuple(batches[0][0])
    if not inplace:
        model = copy.deepcopy(model)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        captured = capture(model, example)
        decisions = match(captured, ruleset, strict=strict)
        dense_flops = _dense_flops(decisions, captured.input_shapes)
        if init is not None:
            for d in decisions:
                d.init = init
        factorize(decisions, auto_rank_multiple=auto_rank_multiple)
        result = captured.module
        allocation = prune(
            result, decisions, ruleset.scoring, batches=batches, loss_fn=loss_fn,
            output_fn=output_fn, example_inputs=example, seed=seed, verbose=verbose,
        )
        recompile(result)
    if inplace and result is not model:
        # the root traced into a new GraphModule: mirror its swapped layers into the given model
        for name, child in result.named_children():
            if name in model._modules:
                setattr(model, name, child)

    if allocation is not None:
        qualnames = {id(m): n for n, m in result.named_modules()}
        for d in decisions:
            info = getattr(d.site.get(), "tedepr_info", None)
            layer = allocation.per_layer.get(qualnames.get(id(d.site.get()), ""))
            if info is not None and layer is not None:
                info["allocation"] = _allocation_note(layer)
    _attach_record(result, captured, decisions, dense_flops)
    return result


def plan(model: nn.Module, rules, example_inputs=None, *, strict: bool = False,
         auto_rank_multiple: float = DEFAULT_AUTO_RANK_MULTIPLE) -> Plan:
    """Dry run: what ``transform`` would do, touching no weights and allocating no factors.

    The model is copied onto the meta device (no weight is copied) and the rewrite is
    carried out there; rows show dense, stored and budgeted counts and FLOPs for
    ``example_inputs``.
    """
    ruleset = load_rules(rules)
    example = as_tuple(example_inputs)
    meta_model = meta_copy(model)
    meta_inputs = None
    if example is not None:
        meta_inputs = tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in example)
    captured = capture(meta_model, meta_inputs, verify=False)
    decisions = match(captured, ruleset, strict=strict)
    dense_flops = _dense_flops(decisions, captured.input_shapes)
    factorize(decisions, auto_rank_multiple=auto_rank_multiple)
    rows, unmatched = [], []
    for d in decisions:
        new = d.site.get() if d.action in ("factorize", "prune") else None
        row = _row(d, new, captured.input_shapes.get(d.name), dense_flops[d.name], planned=True)
        (unmatched if d.action == "unmatched" else rows).append(row)
    return Plan(rows, unmatched, [r.as_dict() for r in captured.regions])


def report(model: nn.Module) -> Report:
    """The table of a transformed model, read from the model itself (kept = real mask counts)."""
    record = getattr(model, RECORD_ATTR, None)
    if record is None:
        raise ValueError("this model was not produced by tedepr_fx.transform (no tedepr_record)")
    rows: dict[str, Row] = {}
    for _, module in model.named_modules():
        info = getattr(module, "tedepr_info", None)
        if info is None or "name" not in info:
            continue
        shape = record["input_shapes"].get(info["name"])
        shape = tuple(shape) if shape is not None else None
        rows[info["name"]] = Row(
            name=info["name"], rule=info["rule"], action=info["action"], how=info["how"],
            old_type=info["old_type"], new_type=type(module).__name__,
            modes=modes_text(info), ranks=ranks_text(info),
            dense=int(module.dense_params), stored=int(module.stored_params()),
            kept=int(module.kept_params()),
            flops_before=info.get("dense_flops"), flops_after=_flops(module, shape),
            note=info.get("allocation", ""),
        )
    for row in record["untouched"]:
        rows[row["name"]] = Row(**row)
    ordered = [rows[name] for name in record["order"] if name in rows]
    matched = [r for r in ordered if r.action != "unmatched"]
    unmatched = [r for r in ordered if r.action == "unmatched"]
    return Report(matched, unmatched, record["regions"], title="tedepr_fx report")


def save(model: nn.Module, path: str | Path) -> None:
    """Save a transformed model whole (structure and weights) with ``torch.save``."""
    torch.save(model, path)


def load(path: str | Path, map_location=None) -> nn.Module:
    """Load a model saved by :func:`save`. Like any pickle, only load files you trust."""
    return torch.load(path, map_location=map_location, weights_only=False)


# --- helpers -------------------------------------------------------------------------------------


def _take_batches(data, scoring) -> list[tuple[Any, Any]]:
    batches = []
    for i, batch in enumerate(itertools.islice(iter(data), scoring.batches)):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise DataError(f"data batch {i} must be a pair (inputs, targets); got {type(batch).__name__}"
                            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
        inputs, targets = batch
        if scoring.batch_size is not None:
            inputs, targets = _head(inputs, scoring.batch_size), _head(targets, scoring.batch_size)
        batches.append((inputs, targets))
    if not batches:
        raise DataError("data yielded no batches")
    return batches


def _head(value, n: int):
    if isinstance(value, torch.Tensor):
        return value[:n]
    if isinstance(value, (tuple, list)):
        return type(value)(_head(v, n) for v in value)
    if isinstance(value, dict):
        return {k: _head(v, n) for k, v in value.items()}
    return value


def _flops(module: nn.Module, shape) -> int | None:
    if shape is None or not hasattr(module, "flops"):
        return None
    return int(module.flops(tuple(shape)))


def _dense_flops(decisions: list[Decision], shapes) -> dict[str, int | None]:
    """FLOPs of each layer as it is before the rewrite, for its recorded input shape."""
    return {
        d.name: d.site.kind.dense_flops(site_module(d.site), shapes[d.name]) if d.name in shapes else None
        for d in decisions
    }


def _row(d: Decision, new: nn.Module | None, shape, dense_flops: int | None, *, planned: bool) -> Row:
    row = Row(name=d.name, rule=d.rule_name, action=d.action, how=d.site.how, old_type=d.old_type,
              new_type=d.old_type, dense=d.dense_params, stored=d.dense_params, kept=d.dense_params,
              flops_before=dense_flops, flops_after=dense_flops)
    if new is None:
        return row
    info = getattr(new, "tedepr_info", {})
    info["dense_flops"] = dense_flops
    row.new_type = type(new).__name__
    row.modes, row.ranks = modes_text(info), ranks_text(info)
    row.stored = int(new.stored_params())
    row.flops_after = _flops(new, shape)
    row.kept = row.stored
    if planned and d.budget is not None:
        counted = d.dense_params if d.budget.of == "dense" else row.stored
        floors = sum(max(1, math.ceil(d.budget.min_density * getattr(new, n).numel()))
                     for n in new.prunable)
        row.kept = min(row.stored, max(floors, round(d.budget.target_density * counted)))
        row.note = "whole (stores less than its budget)" if row.kept == row.stored else (
            f"budget {d.budget.allocation}" if d.budget.allocation != "uniform" else "")
    return row


def _allocation_note(layer) -> str:
    notes = []
    if getattr(layer, "whole", False):
        notes.append("whole (stores less than its budget)")
    at_floor = getattr(layer, "at_floor", None)
    if at_floor:
        notes.append("at floor: " + ",".join(sorted(t.rsplit(".", 1)[-1] for t in at_floor)))
    return "; ".join(notes)


def _attach_record(result: nn.Module, captured: Captured, decisions: list[Decision],
                   dense_flops: dict[str, int | None]) -> None:
    shapes = captured.input_shapes
    untouched = []
    for d in decisions:
        if d.action in ("keep", "unmatched"):
            untouched.append(vars(_row(d, None, shapes.get(d.name), dense_flops[d.name], planned=False)))
        else:
            d.site.get().tedepr_info["dense_flops"] = dense_flops[d.name]
    record = {
        "regions": [r.as_dict() for r in captured.regions],
        "untouched": untouched,
        "order": [d.name for d in decisions],
        "input_shapes": {k: list(v) for k, v in shapes.items()},
    }
    preserve(result, RECORD_ATTR, record)
