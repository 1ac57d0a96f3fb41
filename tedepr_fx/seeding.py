"""Seeded randomness that stays inside one call of the library.

torch has one global random generator per process (and one per CUDA device); module
constructors and dropout draw from it, and no local generator can be handed to them.
:func:`seeded` forks that state, seeds it, and puts the caller's state back on exit,
holding a process-wide lock meanwhile. So two threads that transform the same model with
the same seed each draw exactly what a sequential run draws, and the caller's RNG state
is as it was. Draws the library makes itself take a local ``torch.Generator`` instead.

A thread that draws from torch's global generator *while* a transform runs in another
thread is not isolated from it (torch offers no per-thread generator); transform holds
the lock for its whole rewrite so that such windows are one per call.

Example
-------
>>> import torch
>>> state = torch.get_rng_state()
>>> with seeded(0):
...     a = torch.rand(2)
>>> with seeded(0):
...     b = torch.rand(2)
>>> torch.equal(a, b), torch.equal(torch.get_rng_state(), state)
(True, True)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

_LOCK = threading.RLock()  # re-entrant: transform's scorers and capture seed again inside it


@contextmanager
def seeded(seed: int, cuda_devices: Sequence[int] = ()) -> Iterator[None]:
    """Run the body with torch's CPU generator (and those of ``cuda_devices``) seeded with
    ``seed``, under a process-wide lock; the previous states are restored on exit."""
    with _LOCK, torch.random.fork_rng(devices=list(cuda_devices)):
        torch.default_generator.manual_seed(int(seed))
        for device in cuda_devices:
            torch.cuda.default_generators[device].manual_seed(int(seed))
        yield
