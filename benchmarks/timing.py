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


def peak_torch_bytes(fn: Callable[[], object]) -> int:
    """Peak live torch CPU bytes during ``fn()``: ops' self allocations and ``[memory]`` frees in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak
