"""The TT chain's batched step: bmm over an expanded view vs one plain product, per layer shape.

``tedepr_fx.layers.contraction._batched`` computes ``a @ s[b]`` for every ``b``. With few
products it runs bmm against a stride-0 view of ``a`` (no copy); from
``BATCHED_AS_ONE_PRODUCT`` products on, one ``(batch L, K) @ (K, P)`` product over a
transposed copy of the state. This measures both kernels inside whole TTLinear layers (the
layer's own contraction order), forward and forward+backward, against ``nn.Linear`` of the
same size, interleaved, one thread.

Run:  python benchmarks/bench_chain.py [--reps 30] [--out docs/benchmarks/chain.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved_samples  # noqa: E402

import tedepr_fx.layers.contraction as contraction  # noqa: E402
from tedepr_fx.layers.tt import TTLinear  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = [  # in, out, in modes, out modes, ranks
    (784, 300, [14, 8, 7], [10, 6, 5], [1, 3, 3, 1]),
    (784, 300, [14, 8, 7], [10, 6, 5], [1, 4, 4, 1]),
    (784, 300, [14, 8, 7], [10, 6, 5], [1, 12, 12, 1]),
    (300, 100, [15, 20], [10, 10], [1, 5, 1]),
    (768, 3072, [8, 12, 8], [12, 16, 16], [1, 16, 16, 1]),
]


def fwd(m: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return m(x)
    return run


def step(m: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        m.zero_grad(set_to_none=True)
        m(x).sum().backward()
        return None
    return run


def with_kernel(kernel: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with the batched step forced to ``kernel`` ("bmm" or "one product")."""
    def run() -> object:
        saved = contraction.BATCHED_AS_ONE_PRODUCT
        contraction.BATCHED_AS_ONE_PRODUCT = 10**12 if kernel == "bmm" else 0
        try:
            return fn()
        finally:
            contraction.BATCHED_AS_ONE_PRODUCT = saved
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "chain.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    lines = ["# TT chain: bmm vs one plain product for the batched step", "",
             f"Command: `python benchmarks/bench_chain.py {' '.join(sys.argv[1:])}`  ",
             f"torch {torch.__version__}, 1 thread, float32, {os.cpu_count()}-core CPU, 1-min load average "
             f"{load:.2f} at start; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.  ",
             f"Median of {args.reps} interleaved rounds, as a ratio to `nn.Linear` of the same size.", "",
             "| layer | ranks | rows | order | fwd bmm | fwd one product | fwd+bwd bmm | fwd+bwd one product | dense fwd / fwd+bwd |",
             "|---|---|---|---|---|---|---|---|---|"]
    for in_f, out_f, im, om, ranks in CASES:
        layer, dense = TTLinear(in_f, out_f, im, om, ranks), torch.nn.Linear(in_f, out_f)
        for rows in (1, 128):
            x = torch.randn(rows, in_f)

            s = interleaved_samples({"dense": fwd(dense, x), "bmm": with_kernel("bmm", fwd(layer, x)),
                                     "one": with_kernel("one", fwd(layer, x))}, args.reps)
            b = interleaved_samples({"dense": step(dense, x), "bmm": with_kernel("bmm", step(layer, x)),
                                     "one": with_kernel("one", step(layer, x))}, args.reps)
            f = {k: statistics.median(v) for k, v in s.items()}
            g = {k: statistics.median(v) for k, v in b.items()}
            order = layer.contraction_order(rows)[0]
            lines.append(f"| {in_f}->{out_f} {im}->{om} | {ranks} | {rows} | {order} | {f['bmm'] / f['dense']:.2f} | "
                         f"{f['one'] / f['dense']:.2f} | {g['bmm'] / g['dense']:.2f} | {g['one'] / g['dense']:.2f} | "
                         f"{1e6 * f['dense']:.0f} / {1e6 * g['dense']:.0f} us |")
            print(lines[-1], flush=True)
    lines += ["", f"The layers use bmm below {contraction.BATCHED_AS_ONE_PRODUCT} products per step, "
              "one product from there on (`tedepr_fx/layers/contraction.py`)."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
