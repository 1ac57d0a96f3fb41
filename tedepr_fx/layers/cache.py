"""Reusing tensors derived from the factors (merged cores, a rebuilt weight) in eval mode."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch


class EvalCache:
    """Mixin for masked factorized modules: :meth:`cached` builds once in eval mode.

    A derived tensor is reused only when the module is in eval mode and autograd is
    off (a cached tensor must not hold a graph), and only while every tensor it was
    built from, and that tensor's mask, is the same object with the same version,
    storage, dtype and device: an in-place update, ``load_state_dict``, ``set_mask``
    or ``.to()`` invalidates it. Each ``slot`` holds one entry. The cache is never
    copied or pickled.
    """

    def cached(self, slot: str, tag: Hashable, names: Sequence[str], build: Callable[[], Any]) -> Any:
        """``build()``, reused from ``slot`` in eval mode while ``tag`` and the tensors match."""
        if self.training or torch.is_grad_enabled():  # type: ignore[attr-defined]
            return build()
        key = (tag, *self._tensors_key(names))
        store = self.__dict__.setdefault("_eval_cache", {})
        hit = store.get(slot)
        if hit is None or hit[0] != key:
            hit = store[slot] = (key, build())
        return hit[1]

    def _tensors_key(self, names: Sequence[str]) -> tuple:
        key = []
        for name in names:
            for t in (getattr(self, name), self.get_mask(name)):  # type: ignore[attr-defined]
                key.append((id(t), t._version, t.data_ptr(), t.dtype, t.device))
        return tuple(key)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_eval_cache"] = {}  # keyed on ids: never carry it over
        return state
