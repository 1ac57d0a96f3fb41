"""Cost of ``plan`` and ``transform`` (no scoring) on ViT-B/16 versus one dense forward pass.

Issue 4's target: plan and transform without scoring on a ViT-B/16-sized encoder
(86 M parameters) take <= 3 x the time of one forward pass of the dense model at batch 8.

Run:  python benchmarks/bench_capture.py [--reps 3] [--threads 2] [--out docs/benchmarks/capture.md]

* model: ``tedepr_fx.models.vit_b16()`` (nn.TransformerEncoder, 86.6 M parameters),
  input ``torch.randn(8, 3, 224, 224)``, float32, CPU.
* rules: ``rules/transformer.yaml`` with ``defaults.budget`` and every rule's ``budget``
  removed, so that ``transform`` factorizes / wraps layers but scores and masks nothing
  ("without scoring"); checked afterwards with ``report(gm)``: kept == stored.
* forward: ``model(x)`` under ``torch.no_grad()``, 1 warm-up, median of ``--reps``.
* plan / transform: median of ``--reps`` calls each (``transform`` deep-copies the model
  itself, so every call starts from the same dense model), measured in the same run.
* profile: one extra ``transform`` call under cProfile, top entries by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import os
import platform
import pstats
import statistics
import sys
import time

import torch

import tedepr_fx
from tedepr_fx.models import vit_b16
from tedepr_fx.rules import load_rules

TARGET = 3.0


def rules_without_budget(path: str):
    """The rule set at ``path`` with no budget anywhere: transform then does no scoring."""
    rs = load_rules(path)
    rules = [r.model_copy(update={"budget": None}) for r in rs.rules]
    return rs.model_copy(update={"defaults": rs.defaults.model_copy(update={"budget": None}),
                                 "rules": rules})


def timed(fn, reps: int) -> tuple[float, list[float], object]:
    """Median wall time of ``reps`` calls of ``fn`` (seconds), all times, last result."""
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


# (file suffix, function name, label): the stages of transform the breakdown reports
STAGES = [
    ("copy.py", "deepcopy", "copy.deepcopy, all calls (calls count recursion)"),
    ("capture/__init__.py", "capture", "capture (trace + record + verify)"),
    ("capture/run.py", "record_calls", "  capture: record_calls (hooked forward)"),
    ("capture/run.py", "verify_region", "  capture: verify_region (original vs traced, current mode + eval)"),
    ("capture/run.py", "run_seeded", "  capture: every run_seeded forward (inside record and verify)"),
    ("match.py", "match", "match"),
    ("factorize.py", "factorize", "factorize (build TT layers, factor init)"),
    ("prune.py", "score_and_mask", "score_and_mask (returns at once: no budget)"),
    ("recompile.py", "recompile", "recompile"),
]


def profile_once(fn, top: int) -> tuple[str, list[tuple[str, int, float]], float]:
    """cProfile of one call of ``fn``: top-``top`` text, per-stage (label, calls, cum s), total s."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stages = []
    for suffix, func, label in STAGES:
        hits = [(nc, ct) for (file, _, name), (_, nc, _, ct, _) in stats.stats.items()
                if name == func and file.endswith(suffix)]
        stages.append((label, sum(h[0] for h in hits), sum(h[1] for h in hits)))
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    return buf.getvalue(), stages, stats.total_tt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--rules", default="rules/transformer.yaml")
    ap.add_argument("--out", default="docs/benchmarks/capture.md")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    model = vit_b16().eval()
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.randn(8, 3, 224, 224)
    rules = rules_without_budget(args.rules)

    with torch.no_grad():
        model(x)  # warm-up
        fwd, fwd_all, _ = timed(lambda: model(x), args.reps)
    pl, pl_all, plan_report = timed(
        lambda: tedepr_fx.plan(model, rules, example_inputs=(x,)), args.reps)
    tr, tr_all, gm = timed(
        lambda: tedepr_fx.transform(model, rules, example_inputs=(x,), seed=0, verbose=False),
        args.reps)
    totals = tedepr_fx.report(gm).totals
    if totals["kept"] != totals["stored"]:
        sys.exit(f"transform pruned something (kept {totals['kept']} != stored {totals['stored']}): "
                 "the rules still carry a budget, so this is not a run without scoring")
    with torch.no_grad():
        y_dense, y_new = model(x), gm(x)
    if y_new.shape != y_dense.shape:
        sys.exit(f"transformed model output shape {tuple(y_new.shape)} != dense {tuple(y_dense.shape)}")
    del gm
    prof_text, stages, prof_total = profile_once(
        lambda: tedepr_fx.transform(model, rules, example_inputs=(x,), seed=0, verbose=False), args.top)
    load_after = os.getloadavg()
    runs, run_s = next((n, ct) for label, n, ct in stages if "run_seeded" in label)

    def fmt(ts):
        return ", ".join(f"{t:.2f}" for t in ts)

    rows = [
        ("dense forward, batch 8 (no_grad)", fwd, fwd_all, None),
        ("plan", pl, pl_all, pl / fwd),
        ("transform (no scoring)", tr, tr_all, tr / fwd),
    ]
    table = ["| step | median s | all runs s | ratio to forward | target | verdict |",
             "|---|---:|---|---:|---:|---|"]
    for name, med, all_, ratio in rows:
        if ratio is None:
            table.append(f"| {name} | {med:.2f} | {fmt(all_)} | 1.00 | | |")
        else:
            verdict = "pass" if ratio <= TARGET else "MISS"
            table.append(f"| {name} | {med:.2f} | {fmt(all_)} | {ratio:.2f} | <= {TARGET:.0f} | {verdict} |")
    cmd = "python " + " ".join(sys.argv)
    text = "\n".join([
        "# Capture benchmark: plan / transform cost on ViT-B/16",
        "",
        "Issue 4's target: plan and transform without scoring on a ViT-B/16-sized encoder "
        "(86 M parameters) take <= 3 x the time of one forward pass of the dense model at batch 8.",
        "",
        f"- command: `{cmd}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- machine: {platform.machine()} CPU, {os.cpu_count()} cores (shared), "
        f"torch {torch.__version__}, {args.threads} torch threads, Python {platform.python_version()}",
        f"- load average (1, 5, 15 min): before {tuple(round(v, 2) for v in load_before)}, "
        f"after {tuple(round(v, 2) for v in load_after)}; other jobs shared the 2 cores, "
        "so absolute times are noisy; the ratios were measured side by side in one run",
        f"- model: `tedepr_fx.models.vit_b16()`, {n_params / 1e6:.1f} M parameters, "
        "input `torch.randn(8, 3, 224, 224)`, float32",
        f"- rules: `{args.rules}` with `defaults.budget` and every rule's `budget` set to None "
        f"(no scoring); `report(gm)` after transform: {totals['layers']} layers, "
        f"dense {totals['dense']}, stored {totals['stored']}, kept {totals['kept']} (kept == stored)",
        f"- plan rows: {plan_report.totals['layers']} layers matched, "
        f"{plan_report.totals['unmatched_layers']} unmatched",
        f"- timing: forward 1 warm-up then median of {args.reps}; plan and transform median of "
        f"{args.reps} (no separate warm-up; the forward warm-up ran first)",
        "",
        *table,
        "",
        f"## Where transform spends its time (cProfile, one call, {prof_total:.1f} s under the profiler)",
        "",
        "| stage | calls | cumulative s | share of the call |",
        "|---|---:|---:|---:|",
        *[f"| {label} | {n} | {ct:.2f} | {ct / prof_total:.0%} |" for label, n, ct in stages],
        "",
        f"Capture ran {runs} forward passes (`run_seeded`: the traced root checked against the original "
        f"on a two-sample slice of the example; layer input shapes are recorded on the meta device), "
        f"{run_s:.2f} s in all against {fwd:.2f} s for the timed dense forward at batch 8, "
        f"{run_s / prof_total:.0%} of the profiled transform.",
        "",
        f"Top {args.top} entries by cumulative time:",
        "",
        "```",
        prof_text.strip(),
        "```",
        "",
    ])
    with open(args.out, "w") as f:
        f.write(text)
    print("\n".join(table))
    for label, n, ct in stages:
        print(f"{label}: {n} calls, {ct:.2f} s")
    print(prof_text)


if __name__ == "__main__":
    main()
