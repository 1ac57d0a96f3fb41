"""Issue 14's speed table: every shipped policy on its zoo model, time as a ratio to dense.

For each model of the benchmark suite (``tedepr_fx.bench.zoo``), at its policy's
documented sparsity, these variants run side by side, interleaved (one call of each in
turn, so a burst of load from elsewhere hits them alike):

* ``dense``: the model as built;
* ``tedepr``: ``tedepr_fx.transform(model, policy)`` as shipped;
* ``tedepr baked``: ``tedepr_fx.bake(model)`` of it (masks folded into the factors);
* ``tedepr kernels``: the baked model with each layer's inference kernel chosen by
  measurement for the batch size being timed (``tedepr_fx.kernels.choose_kernels``: factor
  chain, rebuilt dense weight, or CSR for linear layers; chain or rebuilt ``nn.Conv2d`` for
  convolutions); inference only; the note counts the layers per kernel;
* ``synflow peer``: the dense model pruned by SynFlow to the same sparsity on its dense
  weights (every weight-bearing layer, one global budget): the usual pruning-at-initialization
  result, masks multiplied in.

Measured: inference at batch 1 and at batch 128 (eval mode, ``torch.no_grad``), one training
step at batch 128 (forward, cross-entropy, backward, SGD step), each the median over ``--reps``
interleaved rounds, as a ratio to dense; FLOPs after / before from ``report(model).totals``
(the matched layers at the example input); peak torch bytes of a training step (profiler).

Run:  python benchmarks/bench_speed.py [--models lenet300100 lenet5 vgg resnet vit lstm]
      [--reps 30] [--threads 1] [--out docs/benchmarks/speed.md]
      [--extra lenet300100@0.998 lenet300100@0.99:flops=0.45]  # more rows: model@sparsity[:flops=F]

Scoring uses two seeded batches of random images (speed does not depend on which entries
are kept, only on how many and where ranks land); no data set is read.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved_samples, peak_torch_bytes  # noqa: E402

import tedepr_fx  # noqa: E402
from tedepr_fx.bench.datasets import target_side  # noqa: E402
from tedepr_fx.bench.zoo import SUITE_MODELS  # noqa: E402
from tedepr_fx.kernels import choose_kernels  # noqa: E402
from tedepr_fx.policies import path as policy_path  # noqa: E402
from tedepr_fx.rules import load_rules  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLASSES = 10


def synflow_rules(sparsity: float) -> dict[str, Any]:
    return {"version": 1,
            "defaults": {"scorer": "synflow", "budget": {"sparsity": sparsity, "allocation": "global"}},
            "rules": [{"name": "all", "match": {"min_params": 0}, "action": "prune"}]}


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Size]:
    model = SUITE_MODELS[name]
    side = target_side(28, model.geometry)
    torch.manual_seed(seed)
    return model.build((1, side, side), CLASSES), torch.Size((1, side, side))


def batches(shape: torch.Size, n: int = 2, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, *shape, generator=g), torch.randint(0, CLASSES, (size,), generator=g))
            for _ in range(n)]


def variants(name: str, sparsity: float | None, flops: float | None = None
             ) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The models to time, and a note per variant (FLOPs, ranks)."""
    dense, shape = build(name)
    rules = load_rules(policy_path(SUITE_MODELS[name].policy))
    if sparsity is not None:
        rules = rules.with_budget(sparsity=sparsity)
    if flops is not None:
        data = rules.model_dump(by_alias=True, exclude_none=True)
        data["defaults"]["budget"]["flops"] = flops
        rules = load_rules(data)
    budget = rules.defaults.budget
    assert budget is not None
    data = batches(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tedepr = tedepr_fx.transform(dense, rules, data=data, seed=0, verbose=False)
        peer = tedepr_fx.transform(dense, synflow_rules(1 - budget.target_density), data=data, seed=0,
                                   verbose=False)
    models: dict[str, nn.Module] = {"dense": dense, "tedepr": tedepr}
    notes = {}
    totals = tedepr_fx.report(tedepr).totals
    if totals.get("flops_before"):
        notes["tedepr"] = (f"FLOPs {totals['flops_after'] / totals['flops_before']:.3f} x dense, "
                           f"kept {totals['kept']:,} of {totals['dense']:,}")
    models["tedepr baked"] = tedepr_fx.bake(tedepr)
    models["tedepr kernels"] = models["tedepr baked"]  # replaced per batch size in timed()
    models["synflow peer"] = peer
    return models, notes


def timed(models: dict[str, nn.Module], shape: torch.Size, reps: int) -> dict[str, dict[str, float]]:
    """Median seconds of each measurement for each model."""
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(1, *shape, generator=g)
    x128 = torch.randn(128, *shape, generator=g)
    y128 = torch.randint(0, CLASSES, (128,), generator=g)
    out: dict[str, dict[str, float]] = {name: {} for name in models}

    def infer(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return model(x)
        return run

    for model in models.values():
        model.eval()
    for key, x in (("infer b1", x1), ("infer b128", x128)):
        chosen = tedepr_fx.bake(models["tedepr baked"])
        kernels = choose_kernels(chosen, x.shape[0])
        counts = {k: sum(c.kernel == k for c in kernels) for k in ("chain", "dense", "csr")}
        out["tedepr kernels"][f"{key} kernels"] = ", ".join(  # type: ignore[assignment]
            f"{k} {n}" for k, n in counts.items() if n)
        at = {**models, "tedepr kernels": chosen.eval()}
        samples = interleaved_samples({n: infer(m, x) for n, m in at.items()}, reps)
        for n, s in samples.items():
            out[n][key] = statistics.median(s)

    trainable = {n: m for n, m in models.items() if n not in ("tedepr baked", "tedepr kernels")}
    steps = {}
    for n, m in trainable.items():
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=1e-3)

        def step(m: nn.Module = m, opt: torch.optim.Optimizer = opt) -> object:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(m(x128), y128)
            loss.backward()
            opt.step()
            return loss
        steps[n] = step
    samples = interleaved_samples(steps, max(reps // 2, 5))
    for n, s in samples.items():
        out[n]["train b128"] = statistics.median(s)
    for n, fn in steps.items():
        # gradients left by the timed steps would be freed inside the profiled step
        # (zero_grad(set_to_none=True)) and counted against its allocations
        for p in trainable[n].parameters():
            p.grad = None
        out[n]["train peak bytes"] = float(peak_torch_bytes(fn))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SUITE_MODELS))
    # 0.45: the bound applies to every factorized layer, and the classifier's rank-1 TT (fc3 of
    # lenet.yaml) costs 0.42 x its dense FLOPs, so a lower bound is an error naming fc3
    parser.add_argument("--extra", nargs="*", default=["lenet300100@0.998", "lenet300100@0.99:flops=0.45"])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "speed.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.timezone.utc)
    cells: list[tuple[str, float | None, float | None]] = [(m, None, None) for m in args.models]
    for extra in args.extra:
        name, _, rest = extra.partition("@")
        sparsity, _, flops = rest.partition(":flops=")
        cells.append((name, float(sparsity), float(flops) if flops else None))

    rows = []
    for name, sparsity, flops in cells:
        models, notes = variants(name, sparsity, flops)
        _, shape = build(name)
        times = timed(models, shape, args.reps)
        rules = load_rules(policy_path(SUITE_MODELS[name].policy))
        documented = 1 - rules.defaults.budget.target_density if rules.defaults.budget else None
        label = (f"{SUITE_MODELS[name].title} @ {sparsity if sparsity is not None else documented:g}"
                 + (f", budget.flops {flops:g}" if flops is not None else ""))
        rows.append((label, times, notes))
        print(label, {n: {k: round(v, 6) if isinstance(v, float) else v for k, v in t.items()} for n, t in times.items()}, flush=True)

    load_end = os.getloadavg()[0]
    lines = [
        "# Speed: TEDEPR vs dense vs a SynFlow-pruned peer, as time ratios to dense",
        "",
        f"Command: `python benchmarks/bench_speed.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()}-core CPU, torch {torch.__version__}, "
        f"{args.threads} thread(s), float32; 1-min load average {load_start:.2f} at start, {load_end:.2f} at end; "
        f"{started:%Y-%m-%d %H:%M} UTC.  ",
        f"Each figure: median of {args.reps} interleaved rounds (training: {max(args.reps // 2, 5)}), divided by "
        "dense's median in the same run. < 1 is faster than dense.",
        "",
        "| model @ sparsity | variant | infer b1 | infer b128 | train step b128 | train peak memory | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, times, notes in rows:
        base = times["dense"]
        for variant, t in times.items():
            def ratio(key: str, t: dict[str, float] = t, base: dict[str, float] = base) -> str:
                return f"{t[key] / base[key]:.2f}" if key in t else "-"
            if variant == "dense":
                cells_text = (f"{1e3 * t['infer b1']:.3f} ms | {1e3 * t['infer b128']:.3f} ms | "
                              f"{1e3 * t['train b128']:.2f} ms | {t['train peak bytes'] / 2**20:.1f} MiB")
            else:
                cells_text = (f"{ratio('infer b1')} | {ratio('infer b128')} | {ratio('train b128')} | "
                              f"{ratio('train peak bytes')}")
            note = notes.get(variant, "")
            if variant == "tedepr kernels":
                note = f"b1: {t.get('infer b1 kernels', '')}; b128: {t.get('infer b128 kernels', '')}"
            lines.append(f"| {label} | {variant} | {cells_text} | {note} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
