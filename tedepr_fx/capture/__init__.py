"""Capture: find every weight-bearing layer of a model, with torch.fx where the model traces.

The root is traced with :class:`TedeprTracer`, whose leaf policy keeps every
layer kind of the registry (:mod:`tedepr_fx.handlers`) as one ``call_module``
node. Where the root does not trace (Hugging Face models, data-dependent
control flow...), the largest sub-modules that do trace become graph regions
and the rest stays eager code in which layers are swapped in place. A region's
graph replaces the sub-module only after it reproduced the sub-module's output
on the recorded example call, so capture never changes what the model computes.

The result lists :class:`LayerSite` objects: one per layer the rules can see,
each able to read the layer (``get``) and put a replacement in its place (``set``).

Example
-------
>>> import torch
>>> from torch import nn
>>> cap = capture(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
>>> [(s.name, s.kind.name, s.how) for s in cap.sites]
[('0', 'linear', 'graph'), ('2', 'linear', 'graph')]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from tedepr_fx.capture.run import (
    batch_slice,
    functional_shapes,
    input_shape,
    record_calls,
    record_on_meta,
    run_seeded,
    same_output,
    verify_region,
)
from tedepr_fx.capture.sites import (
    LayerSite,
    graph_sites,
    mark_shared,
    merge_aliases,
    mha_sites,
    module_site,
    walk_eager,
    worth_tracing,
)
from tedepr_fx.capture.trace import (
    Args,
    Call,
    TedeprTracer,
    Untraced,
    join_name,
    preserve,
    try_trace,
)
from tedepr_fx.errors import CaptureError
from tedepr_fx.handlers import kind_of
from tedepr_fx.layers.masked import MaskedMixin

__all__ = ["Captured", "LayerSite", "Region", "TedeprTracer", "capture", "preserve", "record_calls"]


@dataclass
class Region:
    """A part of the model and how it was captured: ``graph`` (fx) or ``swap`` (eager code)."""

    name: str  # module qualname, "" for the root
    mode: str  # "graph" | "swap"
    reason: str = ""  # why it did not trace, in words
    detail: str = ""  # the raw error text behind the reason, shortened (for verbose output)

    def __post_init__(self) -> None:
        self.detail = self.detail or getattr(self.reason, "detail", "")
        self.reason = str(self.reason)

    def as_dict(self) -> dict[str, str]:
        out = {"name": self.name or "<root>", "mode": self.mode, "reason": self.reason}
        return {**out, "detail": self.detail} if self.detail else out



@dataclass
class Captured:
    module: nn.Module
    regions: list[Region]
    sites: list[LayerSite]
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # site name -> input shape

    def region_dicts(self) -> list[dict[str, str]]:
        """The regions as the plan and the report print them."""
        return [r.as_dict() for r in self.regions]


def capture(model: nn.Module, example_inputs: Args | None = None, *, verify: bool = True,
            example_kwargs: dict[str, Any] | None = None) -> Captured:
    """Trace ``model`` (in place: its sub-modules may become GraphModules) and list its layers.

    Parameters
    ----------
    model
        The module to capture. It is modified in place; pass a copy to keep the original.
    example_inputs
        Positional inputs of one forward call. They let capture fall back to tracing
        sub-modules (using the recorded calls) and verify each traced region, and give
        each layer its input shape for FLOP counts.
    verify
        Check that traced regions reproduce the recorded outputs (off for meta-device dry runs).
    example_kwargs
        Keyword inputs of the same forward call (Hugging Face models take ``input_ids=...``);
        with them, ``example_inputs`` may be empty.
    """
    # The root first: when it traces and reproduces the model on a two-sample slice of the
    # example, input shapes come from a run on the meta device and no full forward is needed.
    calls: dict[str, Call] = {}
    regions: list[Region] = []
    kwargs = dict(example_kwargs or {})
    if example_inputs is None and kwargs:
        example_inputs = ()
    traced = try_trace(model, (example_inputs, kwargs) if example_inputs is not None else None)
    if (isinstance(traced, fx.GraphModule) and verify and example_inputs is not None
            and not verify_region(model, traced, batch_slice(example_inputs, kwargs))):
        traced = Untraced("traced graph did not reproduce the model's outputs")
    if isinstance(traced, fx.GraphModule):
        root: nn.Module = traced
        regions.append(Region("", "graph"))
        sites = graph_sites(traced, "", "")
        if example_inputs is not None:
            calls = record_on_meta(model, example_inputs, kwargs)
    else:
        root = model
        regions.append(Region("", "swap", traced))
        reference = None
        if example_inputs is not None:
            calls, reference = record_calls(model, example_inputs, kwargs)
        sites = (_descend(model, "", calls, regions, verify) if calls
                 else walk_eager(model, "", "", "swap"))
        if verify and example_inputs is not None and any(r.mode == "graph" for r in regions):
            if not same_output(reference, run_seeded(root, example_inputs, kwargs)):
                raise CaptureError("captured graph does not reproduce the model's outputs; "
                                   "please report this model")

    sites = merge_aliases(root, sites)
    mark_shared(root, sites)
    shapes: dict[str, tuple[int, ...]] = {}
    for site in sites:
        shape = input_shape(calls.get(site.name)) if calls else None
        if shape is not None:
            shapes[site.name] = shape
    if calls:
        shapes.update(functional_shapes(root, sites, calls))
        shapes.update(_projection_shapes(root, sites, calls, shapes))
    return Captured(module=root, regions=regions, sites=sites, input_shapes=shapes)


_MHA_INPUTS = {"q_proj": (0, "query"), "k_proj": (1, "key"), "v_proj": (2, "value"), "out_proj": (0, "query")}


def _projection_shapes(root: nn.Module, sites: list[LayerSite], calls: dict[str, Call],
                       known: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Input shapes of the projections of an ``nn.MultiheadAttention``, from the attention's
    recorded call: it reads its packed weights itself, so its projections are never called."""
    shapes: dict[str, tuple[int, ...]] = {}
    for site in sites:
        parent, _, proj = site.name.rpartition(".")
        if site.name in known or proj not in _MHA_INPUTS or parent not in calls:
            continue
        try:
            mha = root.get_submodule(parent)
        except AttributeError:
            continue
        if not isinstance(mha, nn.MultiheadAttention):
            continue
        args, kwargs = calls[parent]
        index, key = _MHA_INPUTS[proj]
        value = args[index] if index < len(args) else kwargs.get(key)
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            shape = tuple(value.shape)
            shapes[site.name] = shape[:-1] + (mha.embed_dim,) if proj == "out_proj" else shape
    return shapes


def _descend(module: nn.Module, prefix: str, calls: dict[str, Call], regions: list[Region],
             verify: bool) -> list[LayerSite]:
    """Trace the largest sub-modules of an untraceable ``module``; swap layers in the rest."""
    sites: list[LayerSite] = []
    for attr, child in module.named_children():
        name = join_name(prefix, attr)
        if isinstance(child, nn.MultiheadAttention):
            sites.extend(mha_sites(name, module, attr, prefix, "swap"))
            continue
        kind = kind_of(child)
        if kind is not None:
            sites.append(module_site(name, module, attr, kind, prefix, "swap"))
            continue
        if isinstance(child, MaskedMixin) or not worth_tracing(child):
            continue
        call = calls.get(name)
        if call is None and isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            sites.extend(_descend(child, name, calls, regions, verify))  # containers are never called
            continue
        if call is None:
            regions.append(Region(name, "swap", "not called on the example inputs"))
            sites.extend(_descend(child, name, calls, regions, verify))
            continue
        traced = try_trace(child, call)
        if isinstance(traced, fx.GraphModule) and (not verify or verify_region(child, traced, call)):
            preserve(module, attr, traced)
            regions.append(Region(name, "graph"))
            sites.extend(graph_sites(traced, name, name))
            continue
        if isinstance(traced, fx.GraphModule):
            traced = Untraced("traced graph did not reproduce the recorded call")
        regions.append(Region(name, "swap", traced))
        sites.extend(_descend(child, name, calls, regions, verify))
    return sites

