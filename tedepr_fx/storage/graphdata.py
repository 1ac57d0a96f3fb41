"""A fully graph-captured model's structure as data, so that ``load`` needs no ``model=``.

When ``transform`` traced the whole model into one fx graph, that graph and the
constructor arguments of its leaf modules describe the dense model completely: the file
stores them (:func:`graph_spec`), and :func:`build_base` rebuilds the dense model from them
alone, onto which ``load`` re-applies the recorded rewrite as it does for a model the
caller passes.

Reading a file must run no code from it, so what a spec may name is closed:

* modules: the torch.nn classes of :data:`MODULES` (a rewritten layer is rebuilt as the dense
  class its record names: ``Linear``, ``Conv2d``, ``LSTM`` or ``Embedding``), built with
  keyword arguments that are plain JSON values;
* functions: the pure tensor functions of :data:`FUNCTIONS`, and ``getattr`` only for the
  attributes of :data:`ATTRIBUTES`;
* methods: the tensor methods of :data:`METHODS`;
* arguments: numbers, strings, booleans, None, lists, tuples, slices, dtypes and references
  to earlier nodes.

A model whose graph uses anything else is saved as before and needs ``model=`` to load;
a file whose spec names anything else is refused (:class:`~tedepr_fx.errors.StorageError`).
"""

from __future__ import annotations

import importlib
import inspect
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from tedepr_fx.errors import StorageError
from tedepr_fx.record import LayerRecord

SPEC_VERSION = 1

MODULES = frozenset({
    "Linear", "Conv1d", "Conv2d", "BatchNorm1d", "BatchNorm2d", "LayerNorm", "GroupNorm", "ReLU", "ReLU6",
    "GELU", "SiLU", "Tanh", "Sigmoid", "LeakyReLU", "ELU", "Softmax", "LogSoftmax", "Dropout", "Dropout2d",
    "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Flatten", "Unflatten", "Identity",
    "Embedding", "LSTM",
})
DENSE_OF_REWRITTEN = frozenset({"Linear", "Conv2d", "LSTM", "Embedding"})  # a record's old_type
FUNCTIONS: dict[str, Callable[..., Any]] = {
    **{f"torch.{n}": getattr(torch, n) for n in (
        "flatten", "relu", "tanh", "sigmoid", "cat", "stack", "add", "mul", "matmul", "mean", "sum",
        "reshape", "transpose", "permute", "softmax", "squeeze", "unsqueeze")},
    **{f"torch.nn.functional.{n}": getattr(torch.nn.functional, n) for n in (
        "relu", "gelu", "silu", "tanh", "sigmoid", "softmax", "log_softmax", "dropout", "max_pool2d",
        "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "layer_norm", "flatten")
        if hasattr(torch.nn.functional, n)},
    "torch._C._nn.gelu": torch._C._nn.gelu,
    **{f"operator.{n}": getattr(operator, n) for n in ("add", "sub", "mul", "truediv", "floordiv", "getitem",
                                                      "neg", "matmul")},
    "getattr": getattr,
}
ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "T"})
METHODS = frozenset({
    "view", "reshape", "flatten", "size", "dim", "mean", "sum", "permute", "transpose", "contiguous", "relu",
    "unsqueeze", "squeeze", "add", "mul", "softmax", "chunk", "split", "t", "expand", "float", "tanh",
    "sigmoid",
})
_FUNCTION_KEYS = {id(f): k for k, f in FUNCTIONS.items()}
_SKIPPED_PARAMS = {"self", "device", "dtype", "_weight", "_freeze"}


class NotData(Exception):
    """The graph uses something a spec cannot say (the model then needs ``model=`` to load)."""


def graph_spec(model: nn.Module, records: Sequence[LayerRecord], regions: Sequence[Mapping[str, str]],
               model_class: str) -> dict[str, Any] | None:
    """The spec of a fully graph-captured transformed model, or None when it has none."""
    if not isinstance(model, fx.GraphModule) or [r.get("mode") for r in regions] != ["graph"]:
        return None
    by_path = {r.path: r for r in records if r.path}
    if any(r.old_type.startswith("F.") for r in records):
        return None  # a functional layer's weight is a graph attribute, not a module
    try:
        modules = {}
        for node in model.graph.nodes:
            if node.op == "get_attr":
                raise NotData("a graph attribute")
            if node.op == "call_module" and node.target not in modules:
                modules[str(node.target)] = _module_spec(model.get_submodule(str(node.target)),
                                                         by_path.get(str(node.target)))
        nodes = [_node_spec(n) for n in model.graph.nodes]
    except NotData:
        return None
    return {"version": SPEC_VERSION, "class_name": model_class.rpartition(".")[2], "modules": modules,
            "nodes": nodes}


def build_base(spec: Mapping[str, Any], where: str) -> fx.GraphModule:
    """The dense model a spec describes; a :class:`StorageError` for anything outside the
    allowlists (nothing it names is imported or called before it is checked)."""
    try:
        if spec.get("version") != SPEC_VERSION:
            raise NotData(f"graph spec version {spec.get('version')!r}")
        modules = {name: _build_module(m) for name, m in spec["modules"].items()}
        graph = fx.Graph()
        env: dict[str, fx.Node] = {}
        for n in spec["nodes"]:
            op, name = n["op"], n["name"]
            args, kwargs = _decode(n["args"], env), _decode(n["kwargs"], env)
            if op == "placeholder":
                node = graph.create_node("placeholder", str(n["target"]), tuple(args), kwargs, name=name)
            elif op == "output":
                node = graph.output(args[0])
            elif op == "call_module":
                if n["target"] not in modules:
                    raise NotData(f"call of an undeclared module {n['target']!r}")
                node = graph.create_node("call_module", str(n["target"]), tuple(args), kwargs, name=name)
            elif op == "call_function":
                target = FUNCTIONS.get(n["target"])
                if target is None:
                    raise NotData(f"function {n['target']!r}")
                if target is getattr and (len(args) != 2 or args[1] not in ATTRIBUTES):
                    raise NotData(f"getattr of {args[1:]!r}")
                node = graph.create_node("call_function", target, tuple(args), kwargs, name=name)
            elif op == "call_method":
                if n["target"] not in METHODS:
                    raise NotData(f"method {n['target']!r}")
                node = graph.create_node("call_method", str(n["target"]), tuple(args), kwargs, name=name)
            else:
                raise NotData(f"node kind {op!r}")
            env[name] = node
        graph.lint()
        return fx.GraphModule(modules, graph, class_name=str(spec.get("class_name") or "Model"))
    except (NotData, KeyError, TypeError, ValueError) as error:
        raise StorageError(f"{where}: the stored graph cannot be rebuilt ({error}); pass model=") from None


# -- writing -------------------------------------------------------------------------------------


def _module_spec(module: nn.Module, record: LayerRecord | None) -> dict[str, Any]:
    """A leaf's class and constructor arguments; a rewritten layer's dense class."""
    if record is not None and record.action in ("factorize", "prune"):
        name = record.old_type
        if name not in DENSE_OF_REWRITTEN:
            raise NotData(f"rewritten {name}")
    else:
        cls = type(module)
        name = cls.__name__
        if name not in MODULES or getattr(nn, name, None) is not cls:
            raise NotData(f"module class {cls.__module__}.{cls.__qualname__}")
    return {"class": name, "kwargs": _constructor_kwargs(getattr(nn, name), module)}


def _constructor_kwargs(cls: type[nn.Module], module: nn.Module) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name in _SKIPPED_PARAMS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name == "bias":
            value: Any = getattr(module, "bias", None)
            kwargs["bias"] = value if isinstance(value, bool) else value is not None
            continue
        if not hasattr(module, p.name):
            if p.default is p.empty:
                raise NotData(f"{cls.__name__} argument {p.name!r}")
            continue
        value = getattr(module, p.name)
        if not _plain(value):
            raise NotData(f"{cls.__name__} argument {p.name!r} of type {type(value).__name__}")
        kwargs[p.name] = list(value) if isinstance(value, tuple) else value
    return kwargs


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (tuple, list)) and all(_plain(v) for v in value)


def _node_spec(node: fx.Node) -> dict[str, Any]:
    if node.op == "call_function":
        key = _FUNCTION_KEYS.get(id(node.target))
        if key is None:
            raise NotData(f"function {node.target!r}")
        target: Any = key
    elif node.op == "call_method" and node.target not in METHODS:
        raise NotData(f"method {node.target!r}")
    else:
        target = str(node.target)
    return {"op": node.op, "name": node.name, "target": target, "args": _encode(node.args),
            "kwargs": _encode(dict(node.kwargs))}


def _encode(value: Any) -> Any:
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"slice": [_encode(value.start), _encode(value.stop), _encode(value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    raise NotData(f"argument of type {type(value).__name__}")


# -- reading -------------------------------------------------------------------------------------


def _decode(value: Any, env: Mapping[str, fx.Node]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, env) for v in value]
    if not isinstance(value, dict) or len(value) != 1:
        raise NotData(f"argument {value!r:.60}")
    (kind, data), = value.items()
    if kind == "node":
        if data not in env:
            raise NotData(f"reference to an unknown node {data!r}")
        return env[data]
    if kind == "tuple":
        return tuple(_decode(v, env) for v in data)
    if kind == "dict":
        return {str(k): _decode(v, env) for k, v in data.items()}
    if kind == "slice":
        return slice(*(_decode(v, env) for v in data))
    if kind == "ellipsis":
        return Ellipsis
    if kind == "dtype":
        dtype = getattr(torch, str(data), None)
        if not isinstance(dtype, torch.dtype):
            raise NotData(f"dtype {data!r}")
        return dtype
    raise NotData(f"argument kind {kind!r}")


def _build_module(spec: Mapping[str, Any]) -> nn.Module:
    name = spec["class"]
    if name not in MODULES:
        raise NotData(f"module class {name!r}")
    kwargs = spec["kwargs"]
    if not isinstance(kwargs, dict) or not all(_plain(v) for v in kwargs.values()):
        raise NotData(f"{name} arguments {kwargs!r:.80}")
    cls = importlib.import_module("torch.nn").__dict__[name]
    module: nn.Module = cls(**kwargs)
    return module
