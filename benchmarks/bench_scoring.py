"""Scoring cost of the trainability scorer versus one dense training step, CPU, float32.

Issue 5's target: scoring with ``trainability`` (K=3) on LeNet-5 and on a
ResNet-20-style net costs <= 12 x the time of one dense training step on the same
batch, and its peak memory is <= 4 x that step's.

Run:  python benchmarks/bench_scoring.py [--reps 7] [--out docs/benchmarks/scoring.md]

* dense step: the original model, forward + cross-entropy + backward + SGD step
  (grads set to None before, so their allocation counts).
* scoring: the three ways of computing the trainability score (checkpointed
  reverse sweep, the default; all K steps unrolled in one graph; first order), on
  the same model with every Conv2d / Linear swapped for its masked
  version (``action: prune``), ``get_scorer(...).score`` on the same single batch.
* time: all variants of a model timed interleaved (round-robin), median after warm-up.
* peak memory: the largest live-tensor total seen by ``torch.profiler``
  (``profile_memory=True``: each op's own allocations at its start, frees when
  they happen) during one call; tensors alive before the call are not counted.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys

import torch
import torch.nn.functional as F
from timing import interleaved_samples
from torch import nn
from torch.profiler import ProfilerActivity, profile

from tedepr_fx.layers.masked import MaskedConv2d, MaskedLinear
from tedepr_fx.scoring import collect_targets, get_scorer


def masked_copy(model: nn.Module) -> nn.Module:
    """The model with every Conv2d / Linear replaced by its masked version (same weights)."""
    import copy

    model = copy.deepcopy(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Conv2d):
            setattr(model, name, MaskedConv2d.from_conv(child))
        elif isinstance(child, nn.Linear):
            setattr(model, name, MaskedLinear.from_linear(child))
        else:
            setattr(model, name, masked_copy(child))
    return model


def dense_step(model: nn.Module, batch):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = batch

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def scoring(model: nn.Module, batch, **options):
    masked = masked_copy(model)
    targets = collect_targets(masked)
    # one meta-gradient (one round, no flow term): the default's 10 rounds cost 10 of these
    scorer = get_scorer("trainability", verbose=False, iterations=1, flow=False, **options)
    return lambda: scorer.score(masked, targets, [batch])


def time_interleaved(variants: dict, reps: int, warmup: int = 2) -> dict[str, tuple[float, float]]:
    """(median, min) seconds per variant; the min is the least disturbed by other jobs."""
    return {name: (statistics.median(s), min(s))
            for name, s in interleaved_samples(variants, reps, warmup).items()}


def peak_memory(fn) -> int:
    """Peak bytes of tensors allocated during ``fn()`` (torch.profiler memory events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = []
    for e in prof.events():
        if e.name == "[memory]":
            deltas.append((e.time_range.start, e.cpu_memory_usage))
        elif e.self_cpu_memory_usage:
            deltas.append((e.time_range.start, e.self_cpu_memory_usage))
    deltas.sort(key=lambda d: d[0])
    live = peak = 0
    for _, d in deltas:
        live += d
        peak = max(peak, live)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", default="docs/benchmarks/scoring.md")
    args = parser.parse_args()

    from tedepr_fx.models import LeNet5, ResNet20

    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    cases = [("LeNet-5", LeNet5(), 128, (1, 28, 28)), ("ResNet-20", ResNet20(), 64, (3, 32, 32))]
    rows = []
    for name, model, batch_size, shape in cases:
        batch = (torch.randn(batch_size, *shape), torch.randint(0, 10, (batch_size,)))
        variants = {
            "dense step": dense_step(model, batch),
            "trainability K=3 (checkpoint, default)": scoring(model, batch, steps=3),
            "trainability K=3 unrolled (checkpoint: false)": scoring(model, batch, steps=3, checkpoint=False),
            "trainability K=3 first_order": scoring(model, batch, steps=3, first_order=True),
        }
        times = time_interleaved(variants, args.reps)
        mems = {v: peak_memory(fn) for v, fn in variants.items()}
        for v in variants:
            (med, best), (d_med, d_best) = times[v], times["dense step"]
            rows.append((name, batch_size, v, med, med / d_med, best, best / d_best,
                         mems[v], mems[v] / mems["dense step"]))
        print(f"{name}: done", file=sys.stderr)

    lines = [
        "# Scoring cost: trainability (K=3) vs one dense training step",
        "",
        f"Command: `python benchmarks/bench_scoring.py --reps {args.reps}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()}-core CPU "
        f"(shared with other jobs), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"float32; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
        f"1-min load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end "
        "(time ratios are noisy on a loaded machine; memory ratios are not).",
        "",
        "Target (issue 5): scoring time <= 12 x one dense training step on the same batch; "
        "peak memory <= 4 x that step's.",
        "Time: median and minimum of interleaved repetitions. Memory: peak of tensors allocated during the "
        "call (torch.profiler memory events; the model's own parameters are not counted).",
        "",
        "| model | batch | variant | median (ms) | x dense | min (ms) | x dense | peak mem (MB) "
        "| x dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, bs, v, t, tr, b, br, m, mr in rows:
        lines.append(f"| {name} | {bs} | {v} | {t * 1e3:.1f} | {tr:.2f} | {b * 1e3:.1f} | {br:.2f} "
                     f"| {m / 2**20:.1f} | {mr:.2f} |")
    verdict = []
    for name, _, v, _, tr, _, br, _, mr in rows:
        if not v.endswith("first_order") and v != "dense step":
            verdict.append(
                f"- {name}, {v}: time {tr:.2f} x by medians, {br:.2f} x by minima "
                f"({'meets' if max(tr, br) <= 12 else 'MISSES' if min(tr, br) > 12 else 'borderline on'} "
                f"<= 12 x), memory {mr:.2f} x ({'meets' if mr <= 4 else 'MISSES'} <= 4 x).")
    lines += ["", "Against the target (the two exact, second-order variants):", "", *verdict, ""]
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
