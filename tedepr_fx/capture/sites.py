"""Layer sites: every layer the rules can see, how to read it and how to replace it.

A :class:`LayerSite` is a module-held layer (in a graph or in eager code), one
projection of a ``nn.MultiheadAttention``, or a functional ``F.linear`` /
``F.conv2d`` call on the model's own parameters. Reading a site (``get``) never
changes the model; ``set`` puts the replacement in its place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from tedepr_fx.capture.trace import join_name, preserve, unpreserve
from tedepr_fx.handlers import CONV2D, LINEAR, LayerKind, kind_of
from tedepr_fx.layers.attention import SplitMultiheadAttention
from tedepr_fx.layers.masked import MaskedMixin


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
    aliases: tuple[str, ...] = ()  # other names of the same module object (replaced with it)


def module_site(name: str, owner: nn.Module, attr: str, kind: LayerKind, region: str, how: str,
                 node: fx.Node | None = None) -> LayerSite:
    return LayerSite(
        name=name, kind=kind, region=region, how=how, node=node,
        get=lambda: getattr(owner, attr), set=lambda new: preserve(owner, attr, new),
    )


def _projection_view(mha: nn.MultiheadAttention, proj: str) -> nn.Linear:
    """The ``proj`` projection of ``mha`` as a stand-alone ``nn.Linear`` (copied weights).

    ``out_proj`` is already a linear layer of its own and is returned as it is.
    """
    if proj == "out_proj":
        return mha.out_proj
    index = ("q_proj", "k_proj", "v_proj").index(proj)
    e = mha.embed_dim
    if mha._qkv_same_embed_dim:
        weight = mha.in_proj_weight[index * e:(index + 1) * e]
    else:
        weight = getattr(mha, f"{proj[0]}_proj_weight")
    bias = mha.in_proj_bias[index * e:(index + 1) * e] if mha.in_proj_bias is not None else None
    view = nn.Linear(weight.shape[1], e, bias=bias is not None, device="meta", dtype=weight.dtype)
    with torch.no_grad():
        view.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
        if bias is not None:
            view.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
    view.train(mha.training)
    return view


def _set_projection(split: Callable[[], SplitMultiheadAttention], proj: str, new: nn.Module) -> None:
    setattr(split(), proj, new)


def mha_sites(name: str, owner: nn.Module, attr: str, region: str, how: str) -> list[LayerSite]:
    """q/k/v/out projections of a ``nn.MultiheadAttention``.

    Reading a projection has no side effect (a copy of its slice of the packed weight);
    the attention is split into four linears (:class:`SplitMultiheadAttention`) only when
    a projection is replaced, so rules that keep every projection leave it as it was.
    """

    def split() -> SplitMultiheadAttention:
        current = getattr(owner, attr)
        if not isinstance(current, SplitMultiheadAttention):
            current = SplitMultiheadAttention.from_mha(current)
            preserve(owner, attr, current)
        return current

    views: dict[str, nn.Linear] = {}

    def get(proj: str) -> nn.Module:
        current = getattr(owner, attr)
        if isinstance(current, SplitMultiheadAttention):
            layer: nn.Module = getattr(current, proj)
            return layer
        if proj not in views:
            views[proj] = _projection_view(current, proj)
        return views[proj]

    return [
        LayerSite(
            name=join_name(name, proj), kind=LINEAR, region=region, how=how,
            get=functools.partial(get, proj), set=functools.partial(_set_projection, split, proj),
        )
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj")
    ]


def walk_eager(module: nn.Module, prefix: str, region: str, how: str) -> list[LayerSite]:
    """Sites found by walking the module tree (eager code, or inside a leaf of a graph)."""
    sites: list[LayerSite] = []
    for attr, child in module.named_children():
        name = join_name(prefix, attr)
        if isinstance(child, nn.MultiheadAttention):
            sites.extend(mha_sites(name, module, attr, region, how))
            continue
        kind = kind_of(child)
        if kind is not None:
            sites.append(module_site(name, module, attr, kind, region, how))
        elif not isinstance(child, MaskedMixin):
            sites.extend(walk_eager(child, name, region, how))
    return sites


_FUNCTIONAL: dict[Callable[..., Any], LayerKind] = {F.linear: LINEAR, F.conv2d: CONV2D}


def _attr_target(node: fx.Node) -> str:
    """The attribute path a ``get_attr`` / ``call_module`` node reads."""
    if not isinstance(node.target, str):
        raise TypeError(f"node {node.name} has a non-string target {node.target!r}")
    return node.target


def _functional_view(kind: LayerKind, node: fx.Node, w: nn.Parameter,
                     b: nn.Parameter | None) -> nn.Module:
    """An ``nn.Linear`` / ``nn.Conv2d`` holding the parameters a functional call reads."""
    layer: nn.Linear | nn.Conv2d
    if kind is LINEAR:
        layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    else:
        opts: dict[str, Any] = dict(zip(("stride", "padding", "dilation", "groups"), node.args[3:]))
        opts.update({k: v for k, v in node.kwargs.items() if k not in ("input", "weight", "bias")})
        groups = int(opts.get("groups", 1))
        layer = nn.Conv2d(w.shape[1] * groups, w.shape[0], (w.shape[2], w.shape[3]),
                          bias=b is not None, device="meta", **opts)
    layer.weight = w
    if b is not None:
        layer.bias = b
    return layer


def _functional_site(gm: fx.GraphModule, node: fx.Node, prefix: str, region: str) -> LayerSite | None:
    """A site for ``F.linear`` / ``F.conv2d`` whose weight is a parameter of the model."""
    kind = _FUNCTIONAL.get(node.target) if callable(node.target) else None
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    if kind is None or not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return None
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    if bias is not None and (not isinstance(bias, fx.Node) or bias.op != "get_attr"):
        return None
    if kind is CONV2D and any(not isinstance(a, (int, tuple, list, str)) for a in node.args[3:]):
        return None
    if not _is_param(gm, _attr_target(weight)) or len(weight.users) > 1:
        return None  # a buffer, or one weight read by several calls: keep it dense
    w = gm.get_parameter(_attr_target(weight))
    b = gm.get_parameter(_attr_target(bias)) if bias is not None else None
    cached: list[nn.Module] = []

    def get() -> nn.Module:
        if not cached:
            cached.append(_functional_view(kind, node, w, b))
        return cached[0]

    def replace(new: nn.Module) -> None:
        site.node = rewrite_functional_call(gm, node, weight, bias, new)
        cached[:] = [new]  # from now on the site holds the new module

    site = LayerSite(name=join_name(prefix, _attr_target(weight)), kind=kind, region=region,
                     how="graph", get=get, set=replace, node=node, functional=True)
    return site


def rewrite_functional_call(gm: fx.GraphModule, node: fx.Node, weight: fx.Node, bias: fx.Node | None,
                            new: nn.Module) -> fx.Node:
    """Replace the ``F.linear`` / ``F.conv2d`` call ``node`` by a call of the module ``new``.

    ``new`` becomes the submodule ``tedepr_<weight target>``; the weight and bias
    parameters it replaces leave the graph module when nothing else reads them.
    Returns the new ``call_module`` node.
    """
    target = "tedepr_" + _attr_target(weight).replace(".", "_")
    gm.add_submodule(target, new)
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(target, (node.args[0] if node.args else node.kwargs["input"],))
    call.meta.update(node.meta)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)
    for attr_node in (weight, bias):
        if attr_node is not None and not attr_node.users:
            gm.graph.erase_node(attr_node)
            _delete_attr(gm, _attr_target(attr_node))
    gm.recompile()  # the generated forward still reads the deleted parameters until regenerated
    return call


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


def graph_sites(gm: fx.GraphModule, prefix: str, region: str) -> list[LayerSite]:
    sites: list[LayerSite] = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            owner_name, _, attr = node.target.rpartition(".")
            owner = gm.get_submodule(owner_name) if owner_name else gm
            name = join_name(prefix, node.target)
            if isinstance(mod, nn.MultiheadAttention):
                for site in mha_sites(name, owner, attr, region, "graph"):
                    site.node = node
                    sites.append(site)
            elif (kind := kind_of(mod)) is not None:
                sites.append(module_site(name, owner, attr, kind, region, "graph", node))
            elif not isinstance(mod, MaskedMixin):
                # a non-traced leaf (e.g. torch's TransformerEncoderLayer): swap inside it
                sites.extend(walk_eager(mod, name, region, "swap"))
        elif node.op == "call_function":
            functional = _functional_site(gm, node, prefix, region)
            if functional is not None:
                sites.append(functional)
    # layers held by the module but not called in the graph are still layers of the model
    called = {s.name for s in sites}
    for site in walk_eager(gm, prefix, region, "swap"):
        if site.name not in called and not any(site.name.startswith(c + ".") for c in called):
            sites.append(site)
    return sites


def worth_tracing(module: nn.Module) -> bool:
    """Whether a module can hold a layer: a registered kind below it, or its own parameters in
    code that may call ``F.linear`` / ``F.conv2d`` (torch's own modules never do)."""
    for m in module.modules():
        if kind_of(m) is not None or isinstance(m, nn.MultiheadAttention):
            return True
        own = next(m.parameters(recurse=False), None) is not None
        if own and not type(m).__module__.startswith("torch."):
            return True
    return False


def merge_aliases(root: nn.Module, sites: list[LayerSite]) -> list[LayerSite]:
    """One site per layer object: a module called twice in the graph, or held under several
    names (``self.b = self.a``), is one layer, replaced under every name it has.

    The first site of a layer is kept; its ``aliases`` lists the module's other qualified
    names in ``root``, and its ``set`` puts the replacement under all of them, so no path
    keeps the dense weight.
    """
    paths: dict[int, list[str]] = {}
    for path, module in root.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(path)
    merged: list[LayerSite] = []
    seen: set[int] = set()
    for site in sites:
        if site.functional:
            merged.append(site)
            continue
        module = site.get()
        if id(module) in seen:
            continue
        seen.add(id(module))
        others = tuple(p for p in paths.get(id(module), []) if p != site.name)
        if others:
            site.aliases = others
            site.set = functools.partial(_set_everywhere, root, site.set, others)
        merged.append(site)
    return merged


def _set_everywhere(root: nn.Module, set_first: Callable[[nn.Module], None], others: tuple[str, ...],
                    new: nn.Module) -> None:
    set_first(new)
    for path in others:
        owner_name, _, attr = path.rpartition(".")
        preserve(root.get_submodule(owner_name) if owner_name else root, attr, new)


def unsupported_layers(root: nn.Module, sites: list[LayerSite]) -> list[tuple[str, nn.Module]]:
    """Modules with a weight matrix or kernel that no registered layer kind handles (Conv1d,
    Conv3d, ConvTranspose2d, Bilinear...): rules cannot rewrite them, and say so when they
    match one instead of reporting that they matched nothing."""
    covered = [name for site in sites for name in (site.name, *site.aliases)]
    weights = {id(getattr(site.get(), "weight", None)) for site in sites}  # functional sites' too
    found = []
    for name, module in root.named_modules():
        if not name or isinstance(module, (MaskedMixin, nn.MultiheadAttention)) or kind_of(module) is not None:
            continue
        if any(name == c or name.startswith(c + ".") for c in covered):
            continue
        weight = module._parameters.get("weight")
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2 and id(weight) not in weights:
            found.append((name, module))
    return found


def mark_shared(root: nn.Module, sites: list[LayerSite]) -> None:
    """Record, for every site, the other holders of its weight tensor anywhere in the model.

    A weight tied to an embedding, to another layer or to a plain parameter cannot be
    factorized or pruned on one side only: the match pass keeps such a layer dense, with a
    warning naming the tied group. Works on the meta device too: ties survive
    :func:`~tedepr_fx.utils.meta_copy`, so ``plan`` keeps dense what ``transform`` keeps dense.
    """
    holders: dict[int, list[str]] = {}
    for path, param in root.named_parameters(remove_duplicate=False):
        holders.setdefault(id(param), []).append(path)
    for site in sites:
        weight = getattr(site.get(), "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        own = {n for name in (site.name, *site.aliases) for n in (name, join_name(name, "weight"))}
        others = sorted({p.removesuffix(".weight") for p in holders.get(id(weight), []) if p not in own})
        site.shared_with = tuple(others)

