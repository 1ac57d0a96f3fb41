"""Reusing tensors derived from the factors (merged cores, a rebuilt weight) in eval mode."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch

T = TypeVar("T")


class EvalCache:
    """Mixin for masked factorized modules: :meth:`cached` builds once in eval mode.

    A derived tensor is reused only when the module is in eval mode, autograd is off
    (a cached tensor must not hold a graph) and nothing traces the forward
    (``torch.compile``, ``torch.export`` and the ONNX exporter see fake tensors, and a
    cache keyed on ids would make dynamo guard on, and recompile for, every new key);
    and only while every tensor it was built from, and that tensor's mask, is the same
    object with the same version, storage, dtype and device: an in-place update,
    ``load_state_dict``, ``set_mask`` or ``.to()`` invalidates it. Each ``slot`` holds
    one entry. The cache is never copied or pickled.
    """

    if TYPE_CHECKING:
        # provided by the classes this is mixed into: nn.Module and MaskedMixin
        training: bool

        def mask_buffer(self, name: str) -> torch.Tensor | None: ...

    def caching(self) -> bool:
        """Whether :meth:`cached` reuses tensors now (eval mode, no autograd, not traced)."""
        return not (self.training or torch.is_grad_enabled() or torch.compiler.is_compiling()
                    or torch.jit.is_tracing())  # type: ignore[attr-defined,no-untyped-call]

    def cached(self, slot: str, tag: Hashable, names: Sequence[str], build: Callable[[], T]) -> T:
        """``build()``, reused from ``slot`` in eval mode while ``tag`` and the tensors match."""
        if not self.caching():
            return build()
        key = (tag, *self._tensors_key(names))
        store: dict[str, tuple[tuple[Hashable, ...], Any]] = self.__dict__.setdefault("_eval_cache", {})
        hit = store.get(slot)
        if hit is None or hit[0] != key:
            hit = store[slot] = (key, build())
        return cast(T, hit[1])  # the slot's build always returns the same type

    def _tensors_key(self, names: Sequence[str]) -> tuple[Hashable, ...]:
        # read from the module's own dicts: nn.Module.__getattr__ costs more than the key itself,
        # and this runs on every eval-mode call (a batch-1 forward is a few tens of us)
        params: dict[str, Any] = self.__dict__.get("_parameters", {})
        buffers: dict[str, Any] = self.__dict__.get("_buffers", {})
        key: list[Hashable] = []
        for name in names:
            t = params[name] if name in params else getattr(self, name)
            key.append((id(t), t._version, t.data_ptr(), t.dtype, t.device))
            mask = buffers.get(f"{name}_mask")
            if mask is not None:
                key.append((id(mask), mask._version, mask.data_ptr()))
        return tuple(key)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_eval_cache"] = {}  # keyed on ids: never carry it over
        return state
