"""Running a module on the example inputs: recorded calls, verification and input shapes.

Every forward here runs under a fixed seed with gradients off, so that dropout
draws the same masks each time and capture never trains anything.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils.hooks import RemovableHandle

from tedepr_fx.capture.sites import LayerSite
from tedepr_fx.capture.trace import Args, Call, shorten
from tedepr_fx.errors import CaptureError
from tedepr_fx.seeding import seeded

_MISSING = object()


def run_seeded(module: nn.Module, args: Args, kwargs: dict[str, Any]) -> Any:
    """One forward under a fixed RNG seed, so that dropout draws the same masks every time."""
    with seeded(0), torch.no_grad():
        return module(*args, **kwargs)


def same_output(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_output(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_output(a[k], b[k]) for k in a)
    if hasattr(a, "to_tuple") and hasattr(b, "to_tuple"):
        return same_output(a.to_tuple(), b.to_tuple())
    return type(a) is type(b)


def record_calls(model: nn.Module, example_inputs: Args,
                 example_kwargs: dict[str, Any] | None = None) -> tuple[dict[str, Call], Any]:
    """Run ``model(*example_inputs, **example_kwargs)`` once and record each module's first call
    ``(args, kwargs)``.

    Raises :class:`CaptureError` naming the innermost module that failed when the
    example inputs do not fit the model.
    """
    calls: dict[str, Call] = {}
    stack: list[str] = []
    handles: list[RemovableHandle] = []
    names = {id(m): n for n, m in model.named_modules()}

    def pre_hook(mod: nn.Module, args: Args, kwargs: dict[str, Any]) -> None:
        name = names.get(id(mod), "?")
        stack.append(name)
        calls.setdefault(name, (args, kwargs))

    def post_hook(mod: nn.Module, args: Args, kwargs: dict[str, Any], output: Any) -> None:
        if stack:
            stack.pop()

    for mod in model.modules():
        handles.append(mod.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(mod.register_forward_hook(post_hook, with_kwargs=True))
    try:
        output = run_seeded(model, example_inputs, example_kwargs or {})
    except Exception as error:
        where = stack[-1] if stack else ""
        layer = f"layer {where!r}" if where else "the model's own forward"
        shapes: list[Any] = [tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)]
        shapes += [f"{k}={tuple(t.shape)}" for k, t in (example_kwargs or {}).items()
                   if isinstance(t, torch.Tensor)]
        raise CaptureError(
            f"example_inputs with shapes {shapes} do not fit the model: {layer} failed with "
            f"{shorten(error)}"
        ) from error
    finally:
        for h in handles:
            h.remove()
    return calls, output


def input_shape(call: Call | None) -> tuple[int, ...] | None:
    if call is None:
        return None
    args, kwargs = call
    first = args[0] if args else next(iter(kwargs.values()), None)
    return tuple(first.shape) if isinstance(first, torch.Tensor) else None


def batch_slice(example_inputs: Args, example_kwargs: dict[str, Any] | None = None) -> Call:
    """The first two samples of every batched tensor input (enough for batch norm)."""
    def head(t: Any) -> Any:
        return t[:2] if isinstance(t, torch.Tensor) and t.dim() > 0 else t

    return tuple(head(t) for t in example_inputs), {k: head(t) for k, t in (example_kwargs or {}).items()}


def record_on_meta(model: nn.Module, example_inputs: Args,
                   example_kwargs: dict[str, Any] | None = None) -> dict[str, Call]:
    """Recorded calls (for their shapes) from a run on the meta device; a real run if meta fails."""
    from tedepr_fx.utils import meta_copy

    def meta(t: Any) -> Any:
        return t.to("meta") if isinstance(t, torch.Tensor) else t

    meta_inputs = tuple(meta(t) for t in example_inputs)
    meta_kwargs = {k: meta(t) for k, t in (example_kwargs or {}).items()}
    try:
        return record_calls(meta_copy(model), meta_inputs, meta_kwargs)[0]
    except CaptureError:
        return record_calls(model, example_inputs, example_kwargs)[0]


def verify_region(original: nn.Module, traced: nn.Module, call: Call, expected: Any = _MISSING) -> bool:
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
            expected = run_seeded(original, args, kwargs)
        if not same_output(expected, run_seeded(traced, args, kwargs)):
            return False
        if not any(training for _, training in modes):
            return True
        original.eval()
        traced.eval()
        return same_output(run_seeded(original, args, kwargs), run_seeded(traced, args, kwargs))
    except Exception:  # noqa: BLE001 - a graph that cannot replay the call is not used
        return False
    finally:
        for m, mode in modes:
            m.training = mode


def functional_shapes(root: nn.Module, sites: list[LayerSite],
                      calls: dict[str, Call]) -> dict[str, tuple[int, ...]]:
    """Input shapes of functional layers, by shape propagation through their region's graph."""
    from torch.fx.passes.shape_prop import ShapeProp

    shapes: dict[str, tuple[int, ...]] = {}
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
            if site.functional and site.region == region and site.node is not None:
                node = site_nodes[site.node.name] if site_nodes is not None else site.node
                source = node.args[0] if node.args else node.kwargs.get("input")
                meta = getattr(source, "meta", {}).get("tensor_meta")
                if meta is not None:
                    shapes[site.name] = tuple(meta.shape)
    return shapes

