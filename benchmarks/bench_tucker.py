"""Benchmark of the Tucker-2 layers: forward+backward time (float32, CPU) and decomposition memory.

Run:  python benchmarks/bench_tucker.py [--reps 7] [--out docs/benchmarks/tucker.md]

Each case times its variants interleaved in one run (round-robin over repetitions, median
after warm-up), so the ratios compare like with like. The memory section replays torch's
CPU allocation events (torch.profiler, profile_memory=True) to find the peak of live
bytes while :func:`partial_tucker2` runs, relative to the weight's own size.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys

import torch
from timing import interleaved_samples, peak_torch_bytes
from torch import nn

from tedepr_fx.decompose.tucker import partial_tucker2
from tedepr_fx.formats.tucker import tucker_max_ranks
from tedepr_fx.layers.tucker import Tucker2Conv2d, TuckerLinear


def fwd_bwd(module: nn.Module, x: torch.Tensor):
    def step():
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()
    return step


def time_interleaved(variants: dict, reps: int, warmup: int = 2) -> dict[str, float]:
    return {name: statistics.median(s) for name, s in interleaved_samples(variants, reps, warmup).items()}


def conv_case(reps: int) -> tuple[str, dict[str, float], dict[str, str]]:
    dense = nn.Conv2d(256, 256, 3, padding=1)
    ours = Tucker2Conv2d.from_conv(dense, [64, 64], init="scratch")
    x = torch.randn(64, 256, 32, 32, requires_grad=True)
    dense_cl = nn.Conv2d(256, 256, 3, padding=1).to(memory_format=torch.channels_last)
    ours_cl = Tucker2Conv2d.from_conv(dense, [64, 64], init="scratch").to(memory_format=torch.channels_last)
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    variants = {
        "dense nn.Conv2d": fwd_bwd(dense, x),
        "tedepr_fx Tucker2Conv2d": fwd_bwd(ours, x),
        "dense nn.Conv2d, channels_last": fwd_bwd(dense_cl, x_cl),
        "tedepr_fx Tucker2Conv2d, channels_last": fwd_bwd(ours_cl, x_cl),
    }
    plan = ours.choose_order(tuple(x.shape))
    flops = ours.flops(tuple(x.shape)) / (2 * 64 * 32 * 32 * dense.weight.numel())
    notes = {"tedepr_fx Tucker2Conv2d": f"plan {plan}, FLOP ratio {flops:.3f}",
             "tedepr_fx Tucker2Conv2d, channels_last": f"plan {plan}"}
    title = "Tucker-2 conv 256 -> 256, 3x3, ranks (64, 64), input 64 x 256 x 32 x 32"
    return title, time_interleaved(variants, reps), notes


def linear_case(reps: int) -> tuple[str, dict[str, float], dict[str, str]]:
    dense = nn.Linear(768, 3072)
    x = torch.randn(256, 768, requires_grad=True)
    variants = {"dense nn.Linear": fwd_bwd(dense, x)}
    notes = {}
    for rank in (192, 64):
        ours = TuckerLinear.from_linear(dense, [rank, rank], init="scratch")
        name = f"tedepr_fx TuckerLinear, ranks ({rank}, {rank})"
        variants[name] = fwd_bwd(ours, x)
        flops = ours.flops(tuple(x.shape)) / (2 * 256 * 768 * 3072)
        notes[name] = f"plan {ours.choose_order(tuple(x.shape))}, FLOP ratio {flops:.3f}"
    return "TuckerLinear 768 -> 3072, batch 256", time_interleaved(variants, reps), notes


def memory_rows() -> list[tuple[str, str, float]]:
    rows = []
    cases = [
        ("Conv2d 512x512x3x3", (512, 512, 3, 3), [128, 128]),
        ("Conv2d 512x512x3x3", (512, 512, 3, 3), "full"),
        ("Conv3d 256x256x3x3x3", (256, 256, 3, 3, 3), [64, 64]),
        ("Conv3d 256x256x3x3x3", (256, 256, 3, 3, 3), "full"),
        ("Conv2d 64x2048x3x3 (wide)", (64, 2048, 3, 3), "full"),
        ("Linear 4096x1024 (tall)", (4096, 1024), "full"),
    ]
    for name, shape, rank in cases:
        weight = torch.randn(*shape)
        ranks = tucker_max_ranks(shape) if rank == "full" else rank
        peak = peak_torch_bytes(lambda weight=weight, ranks=ranks: partial_tucker2(weight, ranks))
        rows.append((name, str(ranks), peak / (weight.numel() * weight.element_size())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", default="docs/benchmarks/tucker.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    lines = [
        "# Tucker-2 layers: benchmark",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: "
        f"{platform.processor() or platform.machine()}, 2-core CPU shared with other jobs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, forward+backward "
        f"(input gradient included), median of {args.reps} interleaved repetitions after 2 warm-ups.",
        "",
    ]
    for case in (conv_case, linear_case):
        title, times, notes = case(args.reps)
        base = next(iter(times.values()))
        lines += [f"## {title}", "", "| variant | time (ms) | vs dense | notes |", "|---|---|---|---|"]
        for name, t in times.items():
            lines.append(f"| {name} | {1e3 * t:.1f} | {t / base:.3f} | {notes.get(name, '')} |")
        lines.append("")
        print("\n".join(lines[-len(times) - 4:]), flush=True)
    lines += ["## Decomposition memory (partial_tucker2)", "",
              "Peak live torch CPU allocations during the decomposition, over the weight's size "
              "(the input weight itself is not counted).", "",
              "| weight | ranks | peak / weight |", "|---|---|---|"]
    for name, ranks, ratio in memory_rows():
        lines.append(f"| {name} | {ranks} | {ratio:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
