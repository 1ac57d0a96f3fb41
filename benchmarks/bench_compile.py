"""One training step of LeNet-300-100 at sparsity 0.998 (shipped ``rules/lenet.yaml``), eager and
under ``torch.compile`` (inductor), against dense eager and dense compiled: does compiling the
whole model fuse the TT chain's small ops enough to beat dense? (issue 14)

Run:  python benchmarks/bench_compile.py [--reps 30]
Prints the medians as ratios to dense eager; batch 128, SGD, one thread, float32.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved_samples  # noqa: E402

import tedepr_fx  # noqa: E402
from tedepr_fx.models import LeNet300100  # noqa: E402
from tedepr_fx.rules import load_rules  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def stepper(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dense = LeNet300100()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g))]
    rules = load_rules(ROOT / "rules" / "lenet.yaml").with_budget(sparsity=0.998)
    model = tedepr_fx.transform(dense, rules, data=data, verbose=False)
    x, y = torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)
    steps = {"dense": stepper(dense, x, y), "dense compiled": stepper(torch.compile(copy.deepcopy(dense)), x, y),
             "tedepr": stepper(model, x, y), "tedepr compiled": stepper(torch.compile(copy.deepcopy(model)), x, y)}
    start = time.time()
    for step in steps.values():
        step()  # compiles
    print(f"compiling both: {time.time() - start:.1f} s; 1-min load average {os.getloadavg()[0]:.2f}")
    medians = {k: statistics.median(v) for k, v in interleaved_samples(steps, args.reps).items()}
    print(f"dense eager {1e3 * medians['dense']:.2f} ms; as ratios: "
          + ", ".join(f"{k} {v / medians['dense']:.2f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
