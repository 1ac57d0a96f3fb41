"""Timing shared by the benchmarks: variants run interleaved, so that a burst of load from
other jobs hits every variant alike and the ratios between them stay meaningful."""

from __future__ import annotations

import time
from collections.abc import Callable


def interleaved_samples(variants: dict[str, Callable[[], object]], reps: int,
                        warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each variant, ``reps`` rounds of one call each, after ``warmup`` calls."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return samples
