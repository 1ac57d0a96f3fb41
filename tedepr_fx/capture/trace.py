"""Tracing one module into a GraphModule that keeps everything the original had.

:class:`TedeprTracer` keeps every layer kind of the registry as a leaf;
:func:`try_trace` returns the traced module or the reason it did not trace, and
:func:`preserve` sets attributes that survive ``deepcopy`` of a GraphModule.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from tedepr_fx.handlers import kind_of
from tedepr_fx.layers.masked import MaskedMixin

_MAX_REASON = 160


Args = tuple[Any, ...]  # positional inputs of one call
Call = tuple[Args, dict[str, Any]]  # (args, kwargs) of one recorded call

_PRESERVED = "_user_preserved_attributes"  # the key GraphModule.__deepcopy__ reads



class TedeprTracer(fx.Tracer):
    """An fx tracer that keeps every registered layer kind (and tedepr_fx's own layers) as a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if kind_of(m) is not None or isinstance(m, (MaskedMixin, nn.MultiheadAttention)):
            return True
        return super().is_leaf_module(m, module_qualified_name)



def shorten(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."



def join_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name



def graph_module(original: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    """A GraphModule for ``original`` that still holds all its children, parameters, buffers and
    plain attributes (fx keeps only what the graph uses), so names and glue code keep working.

    What the graph does not reference is also listed in ``meta["_user_preserved_attributes"]``,
    which ``GraphModule.__deepcopy__`` restores: without it a deepcopy would drop it.
    """
    for node in graph.nodes:
        if isinstance(node.type, str):  # a postponed annotation: GraphModule cannot pickle it
            node.type = None
    gm = fx.GraphModule(original, graph, class_name=type(original).__name__)
    for name, child in original._modules.items():  # every name, aliases included
        if child is not None:
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
    """``setattr`` that survives ``deepcopy`` of a GraphModule (see :func:`graph_module`)."""
    setattr(module, name, value)
    if isinstance(module, fx.GraphModule):
        module.meta.setdefault(_PRESERVED, {})[name] = value



def unpreserve(module: nn.Module, name: str) -> None:
    if isinstance(module, fx.GraphModule):
        module.meta.get(_PRESERVED, {}).pop(name, None)



def _concrete_args(module: nn.Module, call: Call | None) -> dict[str, Any] | None:
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



class Untraced(str):
    """Why a module did not trace, in words; ``detail`` is the raw error text, if any."""

    detail: str

    def __new__(cls, words: str, detail: str = "") -> Untraced:
        obj = super().__new__(cls, words)
        obj.detail = detail
        return obj


# (a piece of the error text, the words a report shows for it)
_WHY = [
    ("cannot be used as inputs to control flow",
     "data-dependent control flow (the code branches on a tensor's value or shape)"),
    ("Proxy object cannot be iterated", "the code iterates over or unpacks a tensor (a loop, *args)"),
    ("co_varnames is too small", "its forward takes **kwargs, which torch.fx cannot trace"),
]


def why_untraced(error: BaseException) -> Untraced:
    """Words for a tracing failure (dynamic control flow, **kwargs, ...); the raw text as detail."""
    text = str(error)
    for piece, words in _WHY:
        if piece in text:
            return Untraced(words, shorten(error))
    return Untraced(f"the code does not trace symbolically ({type(error).__name__})", shorten(error))


def try_trace(module: nn.Module, call: Call | None) -> fx.GraphModule | Untraced:
    """The traced module, or why it did not trace (in words)."""
    concrete = _concrete_args(module, call)
    if concrete is None:
        return Untraced("called with non-tensor arguments (flags, caches, configs) that tracing would freeze")
    try:
        graph = TedeprTracer().trace(module, concrete_args=concrete or None)
    except Exception as error:  # noqa: BLE001 - any tracing failure means "not traceable"
        return why_untraced(error)
    return graph_module(module, graph)

