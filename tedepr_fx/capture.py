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

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from tedepr_fx.errors import CaptureError
from tedepr_fx.handlers import CONV2D, LINEAR, LayerKind, kind_of
from tedepr_fx.layers.attention import SplitMultiheadAttention
from tedepr_fx.layers.masked import MaskedMixin

_MAX_REASON = 160
_MISSING = object()
_PRESERVED = "_user_preserved_attributes"  # the key GraphModule.__deepcopy__ reads


class TedeprTracer(fx.Tracer):
    """An fx tracer that keeps every registered layer kind (and tedepr_fx's own layers) as a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if kind_of(m) is not None or isinstance(m, (MaskedMixin, nn.MultiheadAttention)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


@dataclass
class Region:
    """A part of the model and how it was captured: ``graph`` (fx) or ``swap`` (eager code)."""

    name: str  # module qualname, "" for the root
    mode: str  # "graph" | "swap"
    reason: str = ""  # why it did not trace, shortened

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name or "<root>", "mode": self.mode, "reason": self.reason}


@dataclass
class LayerSite:
    """One layer the rules can see, and how to read and replace it."""

    name: str
    kind: LayerKind
    region: str
    how: str  # "graph" (call_module / call_function node) | "swap" (module swap in eager code)
    get: Callable[[], nn.Module]
    set: Callable[[nn.Module], None]
    node: fx.Node | None = None
    functional: bool = False
    shared_with: tuple[str, ...] = ()  # other sites holding the same weight tensor
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Captured:
    module: nn.Module
    regions: list[Region]
    sites: list[LayerSite]
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # site name -> input shape


def shorten(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


# --- tracing a module into a GraphModule that keeps everything the original had ------------------


def _graph_module(original: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    """A GraphModule for ``original`` that still holds all its children, parameters, buffers and
    plain attributes (fx keeps only what the graph uses), so names and glue code keep working.

    What the graph does not reference is also listed in ``meta["_user_preserved_attributes"]``,
    which ``GraphModule.__deepcopy__`` restores: without it a deepcopy would drop it.
    """
    for node in graph.nodes:
        if isinstance(node.type, str):  # a postponed annotation: GraphModule cannot pickle it
            node.type = None
    gm = fx.GraphModule(original, graph, class_name=type(original).__name__)
    for name, child in original.named_children():
        preserve(gm, name, child)
    for name, param in original.named_parameters(recurse=False):
        preserve(gm, name, param)
    for name, buf in original.named_buffers(recurse=False):
        gm.register_buffer(name, buf, persistent=name not in original._non_persistent_buffers_set)
    for key, value in vars(original).items():
        if not key.startswith("_") and key not in vars(gm) and key not in ("training", "meta"):
            preserve(gm, key, value)
    gm.train(original.training)
    return gm


def preserve(module: nn.Module, name: str, value: Any) -> None:
    """``setattr`` that survives ``deepcopy`` of a GraphModule (see :func:`_graph_module`)."""
    setattr(module, name, value)
    if isinstance(module, fx.GraphModule):
        module.meta.setdefault(_PRESERVED, {})[name] = value


def unpreserve(module: nn.Module, name: str) -> None:
    if isinstance(module, fx.GraphModule):
        module.meta.get(_PRESERVED, {}).pop(name, None)


def _concrete_args(module: nn.Module, call: tuple[tuple, dict] | None) -> dict[str, Any] | None:
    """Concrete (None) values for the arguments the recorded call left at None or did not pass.

    Returns None when the call passed a non-tensor value other than None (a flag, a config...):
    tracing would bake that value in, so such a module is not traced.
    """
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    if call is None:
        return {}
    args, kwargs = call
    concrete: dict[str, Any] = {}
    for i, p in enumerate(params):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if i < len(args):
            value = args[i]
        elif p.name in kwargs:
            value = kwargs[p.name]
        elif p.default is not inspect.Parameter.empty:
            value = p.default
        else:
            return None
        if value is None:
            concrete[p.name] = None
        elif not isinstance(value, torch.Tensor):
            return None
    if any(k not in {p.name for p in params} for k in kwargs):
        return None
    return concrete


def _try_trace(module: nn.Module, call: tuple[tuple, dict] | None) -> fx.GraphModule | str:
    concrete = _concrete_args(module, call)
    if concrete is None:
        return "called with non-tensor arguments that tracing would freeze"
    try:
        graph = TedeprTracer().trace(module, concrete_args=concrete or None)
    except Exception as error:  # noqa: BLE001 - any tracing failure means "not traceable"
        return shorten(error)
    return _graph_module(module, graph)


def _same_output(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_output(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_output(a[k], b[k]) for k in a)
    if hasattr(a, "to_tuple") and hasattr(b, "to_tuple"):
        return _same_output(a.to_tuple(), b.to_tuple())
    return type(a) is type(b)


# --- recording how each module is called on the example inputs ----------------------------------


def record_calls(model: nn.Module, example_inputs: tuple) -> tuple[dict[str, tuple], Any]:
    """Run ``model(*example_inputs)`` once and record each module's first call ``(args, kwargs)``.

    Raises :class:`CaptureError` naming the innermost module that failed when the
    example inputs do not fit the model.
    """
    calls: dict[str, tuple] = {}
    stack: list[str] = []
    handles = []
    names = {id(m): n for n, m in model.named_modules()}

    def pre_hook(mod, args, kwargs):
        name = names.get(id(mod), "?")
        stack.append(name)
        calls.setdefault(name, (args, kwargs))

    def post_hook(mod, args, kwargs, output):
        if stack:
            stack.pop()

    for mod in model.modules():
        handles.append(mod.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(mod.register_forward_hook(post_hook, with_kwargs=True))
    try:
        output = _run(model, example_inputs, {})
    except Exception as error:
        where = stack[-1] if stack else ""
        layer = f"layer {where!r}" if where else "the model's own forward"
        shapes = [tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)]
        raise CaptureError(
            f"example_inputs with shapes {shapes} do not fit the model: {layer} failed with "
            f"{shorten(error)}"
        ) from error
    finally:
        for h in handles:
            h.remove()
    return calls, output


def _input_shape(call: tuple[tuple, dict] | None) -> tuple[int, ...] | None:
    if call is None:
        return None
    args, kwargs = call
    first = args[0] if args else next(iter(kwargs.values()), None)
    return tuple(first.shape) if isinstance(first, torch.Tensor) else None


# --- finding layer sites -------------------------------------------------------------------------


def _module_site(name: str, owner: nn.Module, attr: str, kind: LayerKind, region: str, how: str,
                 node: fx.Node | None = None) -> LayerSite:
    return LayerSite(
        name=name, kind=kind, region=region, how=how, node=node,
        get=lambda: getattr(owner, attr), set=lambda new: preserve(owner, attr, new),
    )


def _mha_sites(name: str, owner: nn.Module, attr: str, region: str, how: str) -> list[LayerSite]:
    """q/k/v/out projections of a ``nn.MultiheadAttention``; the first ``get`` splits it in place."""

    def split() -> SplitMultiheadAttention:
        current = getattr(owner, attr)
        if not isinstance(current, SplitMultiheadAttention):
            current = SplitMultiheadAttention.from_mha(current)
            preserve(owner, attr, current)
        return current

    mha = getattr(owner, attr)
    sites = []
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        if proj == "out_proj":
            view = mha.out_proj
        else:
            in_dim = {"q_proj": mha.embed_dim, "k_proj": mha.kdim, "v_proj": mha.vdim}[proj]
            view = nn.Linear(in_dim, mha.embed_dim, bias=mha.in_proj_bias is not None, device="meta")
        sites.append(LayerSite(
            name=_join(name, proj), kind=LINEAR, region=region, how=how,
            get=lambda p=proj: getattr(split(), p),
            set=lambda new, p=proj: setattr(split(), p, new),
            meta={"view": view},
        ))
    return sites


def _walk_eager(module: nn.Module, prefix: str, region: str, how: str) -> list[LayerSite]:
    """Sites found by walking the module tree (eager code, or inside a leaf of a graph)."""
    sites: list[LayerSite] = []
    for attr, child in module.named_children():
        name = _join(prefix, attr)
        if isinstance(child, nn.MultiheadAttention):
            sites.extend(_mha_sites(name, module, attr, region, how))
            continue
        kind = kind_of(child)
        if kind is not None:
            sites.append(_module_site(name, module, attr, kind, region, how))
        elif not isinstance(child, MaskedMixin):
            sites.extend(_walk_eager(child, name, region, how))
    return sites


_FUNCTIONAL = {F.linear: LINEAR, F.conv2d: CONV2D}


def _functional_site(gm: fx.GraphModule, node: fx.Node, prefix: str, region: str) -> LayerSite | None:
    """A site for ``F.linear`` / ``F.conv2d`` whose weight is a parameter of the model."""
    kind = _FUNCTIONAL.get(node.target)
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    if kind is None or not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return None
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    if bias is not None and (not isinstance(bias, fx.Node) or bias.op != "get_attr"):
        return None
    if kind is CONV2D and any(not isinstance(a, (int, tuple, list, str)) for a in node.args[3:]):
        return None
    w = gm.get_parameter(weight.target) if _is_param(gm, weight.target) else None
    if w is None or len(weight.users) > 1:  # one weight read by several calls: keep it dense
        return None
    b = gm.get_parameter(bias.target) if bias is not None else None
    name = _join(prefix, weight.target)

    def view() -> nn.Module:
        if kind is LINEAR:
            layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        else:
            opts = dict(zip(("stride", "padding", "dilation", "groups"), node.args[3:]))
            opts.update({k: v for k, v in node.kwargs.items() if k not in ("input", "weight", "bias")})
            layer = nn.Conv2d(w.shape[1] * opts.get("groups", 1), w.shape[0], tuple(w.shape[2:]),
                              bias=b is not None, device="meta", **opts)
        layer.weight = w
        layer.bias = b
        return layer

    def replace(new: nn.Module) -> None:
        target = "tedepr_" + weight.target.replace(".", "_")
        gm.add_submodule(target, new)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(target, (node.args[0] if node.args else node.kwargs["input"],))
        call.meta.update(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        for attr_node in (weight, bias):
            if attr_node is not None and not attr_node.users:
                gm.graph.erase_node(attr_node)
                _delete_attr(gm, attr_node.target)
        site.node = call
        cached[:] = [new]  # from now on the site holds the new module

    cached: list[nn.Module] = []

    def get() -> nn.Module:
        if not cached:
            cached.append(view())
        return cached[0]

    site = LayerSite(name=name, kind=kind, region=region, how="graph", get=get, set=replace,
                     node=node, functional=True)
    return site


def _is_param(gm: nn.Module, target: str) -> bool:
    try:
        gm.get_parameter(target)
    except AttributeError:
        return False
    return True


def _delete_attr(root: nn.Module, target: str) -> None:
    owner_name, _, attr = target.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    if attr in owner._parameters:
        del owner._parameters[attr]
        unpreserve(owner, attr)


def _graph_sites(gm: fx.GraphModule, prefix: str, region: str) -> list[LayerSite]:
    sites: list[LayerSite] = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            owner_name, _, attr = node.target.rpartition(".")
            owner = gm.get_submodule(owner_name) if owner_name else gm
            name = _join(prefix, node.target)
            if isinstance(mod, nn.MultiheadAttention):
                for site in _mha_sites(name, owner, attr, region, "graph"):
                    site.node = node
                    sites.append(site)
            elif (kind := kind_of(mod)) is not None:
                sites.append(_module_site(name, owner, attr, kind, region, "graph", node))
            elif not isinstance(mod, MaskedMixin):
                # a non-traced leaf (e.g. torch's TransformerEncoderLayer): swap inside it
                sites.extend(_walk_eager(mod, name, region, "swap"))
        elif node.op == "call_function":
            site = _functional_site(gm, node, prefix, region)
            if site is not None:
                sites.append(site)
    # layers held by the module but not called in the graph are still layers of the model
    called = {s.name for s in sites}
    for site in _walk_eager(gm, prefix, region, "swap"):
        if site.name not in called and not any(site.name.startswith(c + ".") for c in called):
            sites.append(site)
    return sites


def _worth_tracing(module: nn.Module) -> bool:
    """Whether a module can hold a layer: a registered kind below it, or its own parameters in
    code that may call ``F.linear`` / ``F.conv2d`` (torch's own modules never do)."""
    for m in module.modules():
        if kind_of(m) is not None or isinstance(m, nn.MultiheadAttention):
            return True
        own = next(m.parameters(recurse=False), None) is not None
        if own and not type(m).__module__.startswith("torch."):
            return True
    return False


def capture(model: nn.Module, example_inputs: tuple | None = None, *, verify: bool = True) -> Captured:
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
    """
    # The root first: when it traces and reproduces the model on a two-sample slice of the
    # example, input shapes come from a run on the meta device and no full forward is needed.
    calls: dict[str, tuple] = {}
    regions: list[Region] = []
    traced = _try_trace(model, (example_inputs, {}) if example_inputs is not None else None)
    if (isinstance(traced, fx.GraphModule) and verify and example_inputs is not None
            and not _verify(model, traced, (_batch_slice(example_inputs), {}))):
        traced = "traced graph did not reproduce the model's outputs"
    if isinstance(traced, fx.GraphModule):
        root: nn.Module = traced
        regions.append(Region("", "graph"))
        sites = _graph_sites(traced, "", "")
        if example_inputs is not None:
            calls = _record_on_meta(model, example_inputs)
    else:
        root = model
        regions.append(Region("", "swap", traced))
        reference = None
        if example_inputs is not None:
            calls, reference = record_calls(model, example_inputs)
        sites = (_descend(model, "", calls, regions, verify) if calls
                 else _walk_eager(model, "", "", "swap"))
        if verify and calls and any(r.mode == "graph" for r in regions):
            if not _same_output(reference, _run(root, example_inputs, {})):
                raise CaptureError("captured graph does not reproduce the model's outputs; "
                                   "please report this model")

    _mark_shared(sites)
    shapes = {}
    for site in sites:
        shape = _input_shape(calls.get(site.name)) if calls else None
        if shape is not None:
            shapes[site.name] = shape
    if calls:
        shapes.update(_functional_shapes(root, sites, calls))
    return Captured(module=root, regions=regions, sites=sites, input_shapes=shapes)


def _batch_slice(example_inputs: tuple) -> tuple:
    """The first two samples of every batched tensor input (enough for batch norm)."""
    return tuple(t[:2] if isinstance(t, torch.Tensor) and t.dim() > 0 else t for t in example_inputs)


def _record_on_meta(model: nn.Module, example_inputs: tuple) -> dict[str, tuple]:
    """Recorded calls (for their shapes) from a run on the meta device; a real run if meta fails."""
    from tedepr_fx.utils import meta_copy

    meta_inputs = tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in example_inputs)
    try:
        return record_calls(meta_copy(model), meta_inputs)[0]
    except CaptureError:
        return record_calls(model, example_inputs)[0]


def _descend(module: nn.Module, prefix: str, calls: dict[str, tuple], regions: list[Region],
             verify: bool) -> list[LayerSite]:
    """Trace the largest sub-modules of an untraceable ``module``; swap layers in the rest."""
    sites: list[LayerSite] = []
    for attr, child in module.named_children():
        name = _join(prefix, attr)
        if isinstance(child, nn.MultiheadAttention):
            sites.extend(_mha_sites(name, module, attr, prefix, "swap"))
            continue
        kind = kind_of(child)
        if kind is not None:
            sites.append(_module_site(name, module, attr, kind, prefix, "swap"))
            continue
        if isinstance(child, MaskedMixin) or not _worth_tracing(child):
            continue
        call = calls.get(name)
        if call is None and isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            sites.extend(_descend(child, name, calls, regions, verify))  # containers are never called
            continue
        traced = _try_trace(child, call) if call is not None else "not called on the example inputs"
        if isinstance(traced, fx.GraphModule) and (not verify or _verify(child, traced, call)):
            preserve(module, attr, traced)
            regions.append(Region(name, "graph"))
            sites.extend(_graph_sites(traced, name, name))
            continue
        if isinstance(traced, fx.GraphModule):
            traced = "traced graph did not reproduce the recorded call"
        regions.append(Region(name, "swap", traced))
        sites.extend(_descend(child, name, calls, regions, verify))
    return sites


def _run(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """One forward under a fixed RNG seed, so that dropout draws the same masks every time."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        return module(*args, **kwargs)


def _verify(original: nn.Module, traced: nn.Module, call: tuple, expected: Any = _MISSING) -> bool:
    """The traced module reproduces the original in its current mode and in eval mode.

    Tracing bakes Python-level values such as ``self.training`` into the graph; the eval
    check catches a graph that would keep dropout (or any train-only branch) on in eval.
    ``expected`` is the original's output on ``call`` when already known (saves a forward);
    the eval pair is skipped when no module is in training mode (it would repeat the first).
    """
    args, kwargs = call
    modes = [(m, m.training) for m in list(original.modules()) + list(traced.modules())]
    try:
        if expected is _MISSING:
            expected = _run(original, args, kwargs)
        if not _same_output(expected, _run(traced, args, kwargs)):
            return False
        if not any(training for _, training in modes):
            return True
        original.eval()
        traced.eval()
        return _same_output(_run(original, args, kwargs), _run(traced, args, kwargs))
    except Exception:  # noqa: BLE001 - a graph that cannot replay the call is not used
        return False
    finally:
        for m, mode in modes:
            m.training = mode


def _functional_shapes(root: nn.Module, sites: list[LayerSite], calls: dict[str, tuple]) -> dict:
    """Input shapes of functional layers, by shape propagation through their region's graph."""
    from torch.fx.passes.shape_prop import ShapeProp

    shapes = {}
    for region in sorted({s.region for s in sites if s.functional}):
        gm = root.get_submodule(region) if region else root
        args, kwargs = calls.get(region, ((), {}))
        if kwargs or not isinstance(gm, fx.GraphModule):
            continue
        if any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args):
            from tedepr_fx.utils import meta_copy

            gm = meta_copy(gm)
            site_nodes = {n.name: n for n in gm.graph.nodes}
        else:
            site_nodes = None
        with torch.no_grad():
            ShapeProp(gm).propagate(*args)
        for site in sites:
            if site.functional and site.region == region:
                node = site_nodes[site.node.name] if site_nodes is not None else site.node
                source = node.args[0] if node.args else node.kwargs.get("input")
                meta = getattr(source, "meta", {}).get("tensor_meta")
                if meta is not None:
                    shapes[site.name] = tuple(meta.shape)
    return shapes


def _mark_shared(sites: list[LayerSite]) -> None:
    """Record which sites hold the same weight tensor (tied weights cannot be factorized apart)."""
    import networkx as nx

    graph = nx.Graph()
    for site in sites:
        module = site.meta["view"] if "view" in site.meta else site.get()
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
            graph.add_edge(("site", site.name), ("tensor", id(weight)))
    for component in nx.connected_components(graph):
        names = sorted(n for kind, n in component if kind == "site")
        if len(names) > 1:
            for site in sites:
                if site.name in names:
                    site.shared_with = tuple(n for n in names if n != site.name)
