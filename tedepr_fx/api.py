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
import dataclasses
import itertools
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from torch import nn

from tedepr_fx import storage
from tedepr_fx.budget import Allocation, predicted_kept
from tedepr_fx.capture import Captured, capture, preserve
from tedepr_fx.capture.checks import check_capturable
from tedepr_fx.capture.sites import unsupported_layers
from tedepr_fx.errors import CaptureError, CostWarning, DataError
from tedepr_fx.example_inputs import (
    Example,
    as_scorer_inputs,
    model_example,
    require_example,
    split_example,
)
from tedepr_fx.graphview import GraphView
from tedepr_fx.handlers import type_names
from tedepr_fx.layers.masked import Accounting, MaskedMixin
from tedepr_fx.lock import identity
from tedepr_fx.losses import resolve_loss
from tedepr_fx.passes.collapse import check_collapse
from tedepr_fx.passes.factorize import DEFAULT_AUTO_RANK_MULTIPLE, factorize
from tedepr_fx.passes.match import Decision, match, supported_kinds, tied_text
from tedepr_fx.passes.prune import groups_for, score_and_mask, scorer_used
from tedepr_fx.passes.recompile import recompile
from tedepr_fx.passes.rescale import forward_fn, output_scales, rescale_to
from tedepr_fx.record import RECORD_ATTR, LayerRecord, Rewrite, format_fields
from tedepr_fx.reporting import Plan, Report
from tedepr_fx.rules import RuleSet, Scoring, load_rules
from tedepr_fx.scoring import default_output_fn
from tedepr_fx.seeding import seeded
from tedepr_fx.utils import meta_copy


def transform(
    model: nn.Module,
    rules: Any,
    *,
    example_inputs: Any = None,
    data: Any = None,
    loss_fn: Any = None,
    output_fn: Any = None,
    seed: int = 0,
    strict: bool = False,
    init: str | None = None,
    verbose: bool = True,
    auto_rank_multiple: float = DEFAULT_AUTO_RANK_MULTIPLE,
) -> nn.Module:
    """Factorize and prune ``model`` as ``rules`` say; return an ordinary trainable module.

    Parameters
    ----------
    model
        Any ``nn.Module``. Never modified: the rewrite happens on a deep copy.
    rules
        A path to a YAML rule file, YAML text, a dict, or a ``RuleSet``.
    example_inputs
        Inputs of one forward call: a tensor or a tuple (positional), or a dict (keyword
        inputs, as Hugging Face models take). They guide capture of models that do not trace
        as a whole, verify the captured graph, and give FLOP counts. Defaults to the inputs
        of the first batch of ``data``, else to what the model says for itself
        (:func:`tedepr_fx.example_inputs.model_example`: the zoo's ``example_input()``,
        Hugging Face ``dummy_inputs``, torch's Transformer modules).
    data
        Iterable of batches for data-driven scorers: ``(inputs, targets)`` pairs, or dicts
        (a Hugging Face ``BatchEncoding``) of keyword inputs with ``labels`` inside, whose
        loss is the model's own ``.loss`` unless ``loss_fn`` is given. The rules'
        ``scoring.batches`` batches are taken from it. Under ``torch.distributed`` each
        rank passes its own batches: scores are averaged over ranks before allocation,
        so every rank's data counts and every rank ends with the same masks. Without data,
        a rule whose scorer needs data is scored by the rules' ``scoring.without_data``
        scorer (recorded in each layer's ``scored_by``, with a warning), or raises
        ``DataError`` when that is ``error`` (the default).
    loss_fn
        ``loss_fn(outputs, targets)``, or the name of a preset of :mod:`tedepr_fx.losses`
        (``"classification"``, ``"causal_lm"``, ``"masked_lm"``); default: the rules'
        ``scoring.loss``, else cross-entropy (for dict batches with ``labels``: the model's
        own loss, else ``loss_fn(output_fn(outputs), labels)``).
    output_fn
        Maps the model's output to the tensor ``loss_fn`` takes. By default a tensor is used
        as is, an output with ``logits`` (Hugging Face heads) gives its logits, a tuple its
        first element, and another Hugging Face output (``BaseModelOutput``...) its first
        tensor (``last_hidden_state``).
    seed
        Seeds factor initialisation and scoring: same seed, same inputs -> identical result.
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
    check_capturable(model, need_values=True)
    refuse_transformed(model)
    ruleset = load_rules(rules)
    example = split_example(example_inputs)
    batches, loss_fn, output_fn = _batches(data, ruleset.scoring, resolve_loss(loss_fn, ruleset.scoring.loss),
                                           output_fn)
    if example is None and batches:
        example = split_example(_without_labels(batches[0][0]))
    if example is None:
        example = model_example(model)
    source = storage.transform_source(model, ruleset, example, seed=seed, strict=strict, init=init,
                                      auto_rank_multiple=auto_rank_multiple)
    model = _copy(model)
    before = _State.of(model)  # capture and verification run forwards: they must not leave a trace

    with seeded(seed):  # local state, one transform at a time: same result in any thread
        captured = _capture(model, example)
        decisions = match(captured, ruleset, strict=strict)
        unsupported = unsupported_records(captured, ruleset)
        code_before = _code_before(captured, decisions, model, unsupported)
        if example is None:
            _check_example_not_needed(model, decisions, ruleset.scoring, bool(batches))
        dense_flops = _dense_flops(decisions, captured.input_shapes)
        if init is not None:
            for d in decisions:
                d.init = init
        rescale_inputs = _rescale_inputs(ruleset.scoring, batches, example)
        dense_scales = _layer_scales(captured.module, decisions, rescale_inputs) if rescale_inputs else {}
        factorize(decisions, auto_rank_multiple=auto_rank_multiple, input_shapes=captured.input_shapes)
        result = captured.module
        paths = _paths(result, decisions)
        pairs = groups_for(result, decisions, paths)
        allocated = {d.name for d, _ in pairs}
        allocation = score_and_mask(
            result, pairs, ruleset.scoring, batches=batches, loss_fn=loss_fn,
            output_fn=output_fn, example_inputs=as_scorer_inputs(example), seed=seed, verbose=verbose,
        )
        if rescale_inputs:
            rescale_to(_masked_layers(decisions), dense_scales, forward_fn(result, *rescale_inputs))
        recompile(result)
    before.restore(result)

    records = [
        layer_record(d, captured, dense_flops[d.name], paths.get(d.name, ""),
                     kept=_actual(result, paths.get(d.name), allocation))
        for d in decisions
    ]
    for record, d in zip(records, decisions):
        if d.name in allocated and d.scorer is not None:
            record.scored_by = scorer_used(d.scorer, ruleset.scoring, bool(batches))
            if record.scored_by != d.scorer:
                record.no_data_fallback = True
                record.note = "; ".join(n for n in (record.note, f"scored by {record.scored_by} (no data)") if n)
    _flag_costlier(records)
    for record, d in zip(records, decisions):
        if record.path and d.budget is not None and not _asks_rank_one(d):  # masked layers only
            record.collapse = check_collapse(result.get_submodule(record.path)) or ""
        if FLOORS_WIN in record.note:
            warnings.warn(f"layer {record.name!r} (rule {record.rule!r}): {FLOORS_WIN} ({record.kept} entries "
                          "kept); lower min_density / min_kept or raise the budget", UserWarning, stacklevel=2)
        if record.collapse:
            record.note = "; ".join(n for n in (record.collapse, record.note) if n)
            warnings.warn(f"layer {record.name!r} (rule {record.rule!r}): {record.collapse}; "
                          "its masks cannot recover in training (raise its budget, min_density or rank)",
                          UserWarning, stacklevel=2)
    records += unsupported
    preserve(result, RECORD_ATTR, Rewrite(
        records, captured.region_dicts(), code_before=code_before, source=source,
        identity=identity(model, ruleset, example, [r.name for r in records])))
    return result


def plan(model: nn.Module, rules: Any, example_inputs: Any = None, *, strict: bool = False,
         auto_rank_multiple: float = DEFAULT_AUTO_RANK_MULTIPLE) -> Plan:
    """Dry run: what ``transform`` would do, touching no weights and allocating no factors.

    The model is copied onto the meta device (no weight is copied) and the rewrite is
    carried out there by the same passes; rows show dense, stored and budgeted counts and
    FLOPs for ``example_inputs``. Kept counts that scores decide (global / ERK allocation)
    are labelled ``kept_source="predicted"``: the layer's own budget. ``example_inputs`` is
    read as in :func:`transform` (positional, or a dict of keyword inputs; by default what
    the model says for itself).
    """
    check_capturable(model, need_values=False)
    refuse_transformed(model)
    ruleset = load_rules(rules)
    captured, example = dry_capture(model, example_inputs)
    decisions = match(captured, ruleset, strict=strict)
    unsupported = unsupported_records(captured, ruleset)
    code_before = _code_before(captured, decisions, model, unsupported)
    dense_flops = _dense_flops(decisions, captured.input_shapes)
    factorize(decisions, auto_rank_multiple=auto_rank_multiple, input_shapes=captured.input_shapes)
    paths = _paths(captured.module, decisions)
    groups = {d.name: g for d, g in groups_for(captured.module, decisions, paths)}
    records = []
    for d in decisions:
        group = groups.get(d.name)
        kept = None
        if group is not None:
            if group.budget >= group.stored:
                kept = (group.stored, "budget", _WHOLE)
            elif group.allocation == "uniform":
                kept = (predicted_kept(group), "budget", "")
            else:
                kept = (predicted_kept(group), "predicted", f"kept predicted ({group.allocation} allocation)")
        records.append(layer_record(d, captured, dense_flops[d.name], paths.get(d.name, ""), kept=kept))
    _flag_costlier(records)
    records += unsupported
    result = _table(Plan, records, captured.region_dicts(), code_before=code_before,
                    view=GraphView.of_captured(captured, type(model).__name__))
    result.identity = identity(model, ruleset, example, [r.name for r in records])  # for the lock file
    return result


def report(model: nn.Module) -> Report:
    """The table of a transformed model, read from the model itself (kept = real mask counts)."""
    rewrite = getattr(model, RECORD_ATTR, None)
    if not isinstance(rewrite, Rewrite):
        raise ValueError(f"this model was not produced by tedepr_fx.transform (no {RECORD_ATTR})")
    records = []
    for record in rewrite.records:
        if record.path:
            module = model.get_submodule(record.path)
            shape = tuple(record.input_shape) if record.input_shape is not None else None
            record = dataclasses.replace(
                record, stored=int(_accounting(module).stored_params()),
                kept=int(_accounting(module).kept_params()),
                kept_source="actual", flops_after=_flops(module, shape))
        records.append(record)
    return _table(Report, records, rewrite.regions, title="tedepr_fx report", code_before=rewrite.code_before,
                  view=GraphView.of(model, rewrite.regions, type(model).__name__), identity=dict(rewrite.identity))


def layer_record(d: Decision, captured: Captured, dense_flops: int | None, path: str,
                 kept: tuple[int, str, str] | None) -> LayerRecord:
    """The record of one decision after the rewrite; ``kept`` is (count, source, note) for a
    masked layer."""
    shape = captured.input_shapes.get(d.name)
    record = LayerRecord(
        name=d.name, rule=d.rule_name, action=d.action, how=d.site.how, old_type=d.old_type,
        new_type=d.old_type, init=d.init if d.action == "factorize" else None, scorer=d.scorer,
        dense_shape=list(d.dense_shape), dense=d.dense_params, stored=d.dense_params,
        kept=d.dense_params, flops_before=dense_flops, flops_after=dense_flops,
        input_shape=list(shape) if shape is not None else None,
        region=d.site.region, node=_node_name(d),
        note="; ".join(n for n in (
            f"{tied_text(d.site)}: kept dense" if d.site.shared_with else "",
            f"also named {', '.join(d.site.aliases)} (one module, rewritten under every name)"
            if d.site.aliases else "") if n),
    )
    if d.action not in ("factorize", "prune"):
        return record
    new = d.site.get()
    record.new_type = type(new).__name__
    record.path = path
    record.format = d.format if d.action == "factorize" else "dense"
    record.rank_spec, record.auto_rank = d.rank, d.auto_rank
    if d.action == "factorize":
        for key, value in format_fields(new).items():
            setattr(record, key, value)
    record.stored = record.kept = int(_accounting(new).stored_params())
    record.kept_source = "budget"
    record.flops_after = _flops(new, shape)
    if kept is not None:
        record.kept, record.kept_source, note = kept
        record.note = "; ".join(n for n in (note, record.note) if n)
    return record


# --- helpers -------------------------------------------------------------------------------------


TableT = TypeVar("TableT", bound=Plan)


@dataclasses.dataclass
class _State:
    """The buffers (BatchNorm statistics, counters) and train/eval modes of a model, by name."""

    buffers: dict[str, torch.Tensor]
    modes: dict[str, bool]

    @classmethod
    def of(cls, model: nn.Module) -> _State:
        return cls({n: b.detach().clone() for n, b in model.named_buffers()},
                   {n: m.training for n, m in model.named_modules()})

    def restore(self, model: nn.Module) -> None:
        """Put back every buffer the rewrite kept (same name and shape; masks are new and stay),
        and every module's mode; a module the rewrite added takes its nearest named ancestor's."""
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                old = self.buffers.get(name)
                if old is not None and old.shape == buffer.shape and not name.endswith("_mask"):
                    buffer.copy_(old)
        for name, module in model.named_modules():
            owner = name
            while owner not in self.modes and owner:
                owner = owner.rpartition(".")[0]
            module.training = self.modes.get(owner, module.training)


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy of the user's model (transform never rewrites its input)."""
    try:
        out = copy.deepcopy(model)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise CaptureError(f"the model cannot be deep-copied, and transform never modifies its input: "
                           f"{type(error).__name__}: {str(error).splitlines()[0]}") from error
    if isinstance(model, torch.fx.GraphModule) and type(out).__name__ != type(model).__name__:
        type(out).__name__ = type(model).__name__  # torch's deepcopy of a GraphModule forgets it (own class)
    return out


def refuse_transformed(model: nn.Module) -> None:
    """A :class:`CaptureError` for a model ``transform`` already rewrote: its layers are masked
    factors whose budgets were counted against weights it no longer has, so a second rewrite
    would match none of them and report nothing."""
    rewritten = [f"{name or '<root>'} ({type(m).__name__})" for name, m in model.named_modules()
                 if isinstance(m, MaskedMixin)]
    if rewritten or isinstance(getattr(model, RECORD_ATTR, None), Rewrite):
        listed = ", ".join(rewritten[:3]) + (f" and {len(rewritten) - 3} more" if len(rewritten) > 3 else "")
        raise CaptureError(
            "this model was already transformed by tedepr_fx" + (f" (layers {listed})" if listed else "")
            + "; transforming it again is not supported: transform the original model with the new "
            "rules (e.g. a stricter budget) instead")


def dry_capture(model: nn.Module, example_inputs: Any = None) -> tuple[Captured, Example | None]:
    """Capture a meta-device copy of ``model`` (no weight copied, nothing run for real), with
    ``example_inputs`` read as in :func:`plan`; returns the capture and the meta example."""
    example = split_example(example_inputs)
    if example is None:
        example = model_example(model)
    if example is not None:
        args, kwargs = example
        example = (tuple(_to_meta(t) for t in args), {k: _to_meta(t) for k, t in kwargs.items()})
    return _capture(meta_copy(model), example, verify=False), example


def unsupported_records(captured: Captured, ruleset: RuleSet) -> list[LayerRecord]:
    """Weight-bearing layers of a kind no rule can rewrite (Conv1d, Conv3d, ConvTranspose2d...),
    as unmatched rows whose note says so (and names the rule that would have matched them)."""
    records = []
    for name, module in unsupported_layers(captured.module, captured.sites):
        weight = module._parameters["weight"]
        dense = weight.numel() if weight is not None else 0
        rule = ruleset.first_match(name, type_names(module), dense)
        note = f"unsupported layer kind (supported: {supported_kinds()})"
        if rule is not None:
            note += f"; rule {rule.name!r} matches it and leaves it as it is"
        records.append(LayerRecord(name=name, rule="", action="unmatched", how="swap",
                                   old_type=type(module).__name__, new_type=type(module).__name__,
                                   dense_shape=list(weight.shape) if weight is not None else [], dense=dense,
                                   stored=dense, kept=dense, note=note))
    return records


def _node_name(d: Decision) -> str:
    """The fx node that calls a layer in its region's code ("" for a layer swapped in eager code)."""
    return d.site.node.name if d.site.how == "graph" and d.site.node is not None else ""


def _flag_costlier(records: list[LayerRecord]) -> None:
    """Note on each record, and warn once, where the rewrite costs more FLOPs than the dense layer
    at the example input (a factor chain whose ranks are too high for its shape)."""
    costlier = []
    for r in records:
        words = r.cost_note
        if words:
            r.note = "; ".join(n for n in (r.note, words) if n)
            costlier.append(f"{r.name} ({words})")
    if costlier:
        warnings.warn(f"the rewrite makes {len(costlier)} layer(s) more expensive than dense: "
                      f"{', '.join(costlier)}; lower their rank, set budget.flops, or use another format", CostWarning,
                      stacklevel=3)


def _code_before(captured: Captured, decisions: list[Decision], model: nn.Module,
                 unsupported: list[LayerRecord]) -> str:
    """The annotated code of the model as captured, before any layer is rewritten."""
    records = [LayerRecord(name=d.name, rule=d.rule_name, action=d.action, how=d.site.how, old_type=d.old_type,
                           new_type=d.old_type, dense=d.dense_params, region=d.site.region, node=_node_name(d))
               for d in decisions]
    records += unsupported
    return GraphView.of_captured(captured, type(model).__name__).code(records, before=True)


def _capture(model: nn.Module, example: Example | None, verify: bool = True) -> Captured:
    if example is None:
        return capture(model, None, verify=verify)
    args, kwargs = example
    return capture(model, args, verify=verify, example_kwargs=kwargs)


def _to_meta(value: Any) -> Any:
    return value.to("meta") if isinstance(value, torch.Tensor) else value


def _table(cls: type[TableT], records: list[LayerRecord], regions: list[dict[str, str]],
           **kwargs: Any) -> TableT:
    rows = [r for r in records if r.action != "unmatched"]
    unmatched = [r for r in records if r.action == "unmatched"]
    return cls(rows, unmatched, regions, **kwargs)


def _asks_rank_one(d: Decision) -> bool:
    """A rule that asks for rank 1 itself gets no collapse warning for it."""
    return d.rank == 1 or (isinstance(d.rank, list) and all(r == 1 for r in d.rank))


def _paths(root: nn.Module, decisions: list[Decision]) -> dict[str, str]:
    """Qualified name in ``root`` of every rewritten layer's new module."""
    names: dict[int, str] = {}
    for n, m in root.named_modules(remove_duplicate=False):
        names.setdefault(id(m), n)  # an aliased layer is reported under its first name
    return {d.name: names[id(d.site.get())] for d in decisions if d.action in ("factorize", "prune")}


_WHOLE = "whole (stores less than its budget)"


def _actual(result: nn.Module, path: str | None,
            allocation: Allocation | None) -> tuple[int, str, str] | None:
    """Kept count of a masked layer after allocation, with the allocation's notes."""
    if path is None or allocation is None or path not in allocation.per_layer:
        return None
    layer = allocation.per_layer[path]
    notes = [_WHOLE] if layer.whole else []
    if layer.at_floor:
        notes.append("at floor: " + ",".join(sorted(t.rsplit(".", 1)[-1] for t in layer.at_floor)))
    if layer.floors_exceed_budget:
        notes.append(FLOORS_WIN)
    return layer.kept, "actual", "; ".join(notes)


# the documented rule when a layer's floors (min_density, min_kept) exceed its budget
FLOORS_WIN = "floors exceed the budget: min_density / min_kept win, kept > budget"


def save(model: nn.Module, path: str | Path) -> Path:
    """Save a transformed model compactly (safetensors); see :func:`tedepr_fx.storage.save`."""
    return storage.save(model, path)


def load(path: str | Path, model: nn.Module | None = None, **kwargs: Any) -> nn.Module:
    """Rebuild a model saved by :func:`save`; see :func:`tedepr_fx.storage.load`."""
    return storage.load(path, model, **kwargs)


_OWN_LOSS = object()  # the targets of a dict batch with ``labels`` inside


def _batches(data: Any, scoring: Scoring, loss_fn: Any, output_fn: Any) -> tuple[list[tuple[Any, Any]], Any, Any]:
    """The scoring batches, and the loss and output functions that read them.

    Dict batches with ``labels`` inside: without ``loss_fn`` the labels stay in the inputs
    and the loss is the model's own ``.loss``; with it, the labels are the targets.
    """
    batches = _take_batches(data, scoring) if data is not None else []
    if batches and batches[0][1] is _OWN_LOSS:
        if loss_fn is None:
            return [(x, None) for x, _ in batches], _loss_itself, _own_loss(output_fn)
        batches = [(_without_labels(x), x["labels"]) for x, _ in batches]
    return batches, loss_fn, output_fn or default_output_fn


def _check_example_not_needed(model: nn.Module, decisions: list[Decision], scoring: Scoring,
                              have_data: bool) -> None:
    """A clear error when a scorer that runs the model (synflow) has no inputs to run it on."""
    rules = sorted({d.rule_name for d in decisions if d.masked and d.scorer is not None
                    and scorer_used(d.scorer, scoring, have_data) == "synflow"})
    if rules:
        require_example(model, f"scorer 'synflow' of rule(s) {', '.join(map(repr, rules))} runs the model "
                               "on an input of the model's shape")


def _take_batches(data: Iterable[Any], scoring: Scoring) -> list[tuple[Any, Any]]:
    batches = []
    for i, batch in enumerate(itertools.islice(iter(data), scoring.batches)):
        if isinstance(batch, Mapping):
            if "labels" not in batch:
                raise DataError(f"data batch {i} is a dict of inputs without 'labels' (keys: "
                                f"{', '.join(map(str, batch))}); put the labels in it or pass "
                                "(inputs, targets) pairs")
            batch = (dict(batch), _OWN_LOSS)
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise DataError(f"data batch {i} must be a pair (inputs, targets) or a dict with 'labels'; "
                            f"got {type(batch).__name__}"
                            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
        inputs, targets = batch
        if scoring.batch_size is not None:
            inputs, targets = _head(inputs, scoring.batch_size), _head(targets, scoring.batch_size)
        if _samples(inputs) == 0:
            raise DataError(f"data batch {i} holds no samples (its inputs have batch size 0)")
        batches.append((inputs, targets))
    if len({t is _OWN_LOSS for _, t in batches}) > 1:
        raise DataError("data mixes dict batches with 'labels' and (inputs, targets) pairs; use one kind")
    if not batches:
        raise DataError("data yielded no batches")
    return batches


def _samples(inputs: Any) -> int | None:
    """The batch size of a batch's inputs (the first tensor's first dimension), if it has one."""
    values = inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (tuple, list)) else [inputs]
    first = next((v for v in values if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    return None if first is None else int(first.shape[0])


def _rescale_inputs(scoring: Scoring, batches: Sequence[Any], example: Example | None) -> Example | None:
    """The inputs ``scoring.rescale`` measures layers on: the first scoring batch, else the
    example inputs; None when rescaling is off."""
    if scoring.rescale == "none":
        return None
    if batches:
        return split_example(_without_labels(batches[0][0]))
    return example


def _masked_layers(decisions: Sequence[Decision]) -> dict[str, nn.Module]:
    """The current module of every layer that has a budget (masked), by layer name."""
    return {d.name: d.site.get() for d in decisions if d.masked}


def _layer_scales(root: nn.Module, decisions: Sequence[Decision], inputs: Example) -> dict[str, float]:
    """Signal scale of every masked layer of the dense ``root`` on ``inputs`` (before factorize)."""
    return output_scales(_masked_layers(decisions), forward_fn(root, *inputs))


def _without_labels(inputs: Any) -> Any:
    return {k: v for k, v in inputs.items() if k != "labels"} if isinstance(inputs, Mapping) else inputs


def _own_loss(output_fn: Any) -> Any:
    """For dict batches with ``labels``: the model's own ``.loss`` where it computed one
    (else ``output_fn``'s tensor, for data-free scorers that run without the labels)."""
    def read(outputs: Any) -> torch.Tensor:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
        if isinstance(loss, torch.Tensor):
            return loss
        return (output_fn or default_output_fn)(outputs)
    return read


def _loss_itself(loss: torch.Tensor, targets: Any) -> torch.Tensor:
    """The loss of a model that computed its own (the targets are inside its inputs)."""
    return loss


def _head(value: Any, n: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value[:n]
    if isinstance(value, (tuple, list)):
        return type(value)(_head(v, n) for v in value)
    if isinstance(value, dict):
        return {k: _head(v, n) for k, v in value.items()}
    return value


def _flops(module: nn.Module, shape: Sequence[int] | None) -> int | None:
    if shape is None or not hasattr(module, "flops"):
        return None
    return int(_accounting(module).flops(tuple(shape)))


def _accounting(module: nn.Module) -> Accounting:
    """A layer tedepr_fx built, seen through the counts every such layer reports."""
    return cast(Accounting, module)


def _dense_flops(decisions: list[Decision], shapes: dict[str, tuple[int, ...]]) -> dict[str, int | None]:
    """FLOPs of each layer as it is before the rewrite, for its recorded input shape."""
    return {
        d.name: d.site.kind.dense_flops(d.site.get(), shapes[d.name]) if d.name in shapes else None
        for d in decisions
    }


