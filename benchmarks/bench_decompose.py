"""Decomposing a dense weight: tedepr_fx's TT-SVD / partial HOSVD against tensorly's, side by side.

Run:  python benchmarks/bench_decompose.py [--reps 3] [--out docs/benchmarks/decompose.md]

For each case (a weight shape, a rank), every implementation is

- timed in this process, interleaved round-robin with the others (median of ``--reps``
  after one warm-up), so a burst of load from other jobs hits all of them alike;
- measured for peak memory in a fresh subprocess of its own: the resident-set high-water
  mark (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the call) over the
  resident set before it, which sees LAPACK's workspace too, and the peak of live torch
  CPU allocations replayed from ``torch.profiler`` (``profile_memory=True``);
- checked for the relative Frobenius error of the rebuilt weight, ``|W - W'| / |W|``.

tensorly runs inside ``tensorly.backend_context("pytorch")``: torch tensors in and out,
no global backend change. Both sides decompose the same float32 tensor on the CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from timing import interleaved_samples, peak_torch_bytes

from tedepr_fx.decompose.tt import tt_svd
from tedepr_fx.decompose.tucker import partial_tucker2

Factors = list[torch.Tensor]


@dataclass(frozen=True)
class Case:
    """One weight to decompose: ``kind`` is ``"tt"`` (TT-matrix) or ``"tucker2"``."""

    name: str
    kind: str
    shape: tuple[int, ...]
    rank: str | int | list[int]
    in_modes: tuple[int, ...] = ()
    out_modes: tuple[int, ...] = ()

    def ranks(self) -> list[int]:
        """``"full"``: the exact ranks (the unfoldings' sizes bound them); an int caps every bond."""
        if self.kind == "tt":
            sizes = [m * n for m, n in zip(self.in_modes, self.out_modes)]
            bounds = [1] + [min(math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(1, len(sizes))] + [1]
        else:
            total = math.prod(self.shape)
            bounds = [min(self.shape[k], total // self.shape[k]) for k in (0, 1)]
        if isinstance(self.rank, list):
            return list(self.rank)
        if isinstance(self.rank, int):
            return [min(self.rank, b) for b in bounds]
        return bounds

    def tensor(self) -> torch.Tensor:
        """The tensor handed to both implementations (a TT-matrix weight already permuted)."""
        weight = torch.randn(*self.shape, generator=torch.Generator().manual_seed(0))
        if self.kind == "tucker2":
            return weight
        d = len(self.in_modes)
        perm = [i for k in range(d) for i in (k, d + k)]
        # the same layout tedepr_fx.layers.tt.decompose_tt_matrix gives tt_svd: (in, out) -> (m_k n_k)_k
        return (weight.reshape(*self.in_modes, *self.out_modes).permute(*perm)
                .reshape([m * n for m, n in zip(self.in_modes, self.out_modes)]).contiguous())


CASES = [
    Case("Linear 768x3072, TT rank 16", "tt", (768, 3072), 16, (8, 12, 8), (12, 16, 16)),
    Case("Linear 768x3072, TT rank full", "tt", (768, 3072), "full", (8, 12, 8), (12, 16, 16)),
    Case("Linear 4096x4096, TT rank 16", "tt", (4096, 4096), 16, (8, 8, 8, 8), (8, 8, 8, 8)),
    Case("Linear 1024x1024, TT rank full", "tt", (1024, 1024), "full", (4, 4, 8, 8), (4, 4, 8, 8)),
    Case("Conv2d 256x256x3x3, Tucker-2 (64, 64)", "tucker2", (256, 256, 3, 3), [64, 64]),
    Case("Conv2d 256x256x3x3, Tucker-2 full", "tucker2", (256, 256, 3, 3), "full"),
    Case("Conv2d 512x512x3x3, Tucker-2 (128, 128)", "tucker2", (512, 512, 3, 3), [128, 128]),
    Case("Linear 768x3072, Tucker-2 (192, 192)", "tucker2", (768, 3072), [192, 192]),
    Case("Linear 4096x1024 (tall), Tucker-2 full", "tucker2", (4096, 1024), "full"),
    Case("Conv2d 64x2048x3x3 (wide), Tucker-2 full", "tucker2", (64, 2048, 3, 3), "full"),
]


def tensorly_tt(tensor: torch.Tensor, ranks: list[int]) -> Factors:
    import tensorly
    from tensorly.decomposition import tensor_train

    with tensorly.backend_context("pytorch", local_threadsafe=True):
        return list(tensor_train(tensor, list(ranks)).factors)


def tensorly_hosvd(tensor: torch.Tensor, ranks: list[int]) -> Factors:
    """tensorly's partial Tucker on modes 0 and 1 with ``n_iter_max=0``: the truncated HOSVD."""
    import tensorly
    from tensorly.decomposition import partial_tucker

    with tensorly.backend_context("pytorch", local_threadsafe=True):
        (core, (u_out, u_in)), _ = partial_tucker(tensor, list(ranks), modes=[0, 1], n_iter_max=0)
    return [u_out, core, u_in]


def ours_tucker(tensor: torch.Tensor, ranks: list[int]) -> Factors:
    return list(partial_tucker2(tensor, ranks))


IMPLEMENTATIONS: dict[str, dict[str, Callable[[torch.Tensor, list[int]], Factors]]] = {
    "tt": {"tedepr_fx tt_svd": tt_svd, "tensorly tensor_train": tensorly_tt},
    "tucker2": {"tedepr_fx partial_tucker2": ours_tucker,
                "tensorly partial_tucker (HOSVD)": tensorly_hosvd},
}


def rebuild(kind: str, factors: Factors) -> torch.Tensor:
    if kind == "tucker2":
        u_out, core, u_in = factors
        return torch.tensordot(u_in, torch.tensordot(u_out, core, dims=1), dims=([1], [1])).movedim(0, 1)
    out = factors[0]
    for core in factors[1:]:
        out = torch.tensordot(out, core, dims=1)
    return out.squeeze(0).squeeze(-1)


def relative_error(case: Case, tensor: torch.Tensor, factors: Factors) -> float:
    rebuilt = rebuild(case.kind, [f.double() for f in factors])
    return float(torch.linalg.norm(rebuilt - tensor.double()) / torch.linalg.norm(tensor.double()))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure_memory_here(case_index: int, impl: str) -> dict[str, float]:
    """Run in a fresh process: RSS high-water over RSS before one call, then the profiler's peak."""
    torch.set_num_threads(2)
    case = CASES[case_index]
    fn = IMPLEMENTATIONS[case.kind][impl]
    tensor, ranks = case.tensor(), case.ranks()
    small = Case("warm-up", case.kind, (8, 8, 3, 3) if case.kind == "tucker2" else (16, 16), [2, 2] if
                 case.kind == "tucker2" else 2, (4, 4) if case.kind == "tt" else (), (4, 4) if case.kind == "tt" else ())
    fn(small.tensor(), small.ranks())  # load LAPACK, tensorly's backend and their buffers first
    weight_bytes = tensor.numel() * tensor.element_size()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    out = fn(tensor, ranks)
    high = _status_kib("VmHWM")
    del out
    torch_peak = peak_torch_bytes(lambda: fn(tensor, ranks))
    return {"rss": (high - before) * 1024 / weight_bytes, "torch": torch_peak / weight_bytes}


def measure_memory(case_index: int, impl: str) -> dict[str, float]:
    result = subprocess.run([sys.executable, __file__, "--memory-of", str(case_index), impl],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe of {impl!r} on case {case_index} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


IMPORT_PROBE = """
import json, sys, time
from pathlib import Path
def rss():
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
import torch, tedepr_fx.decompose.tt, tedepr_fx.decompose.tucker
before, t0 = rss(), time.perf_counter()
import tensorly
print(json.dumps({"seconds": time.perf_counter() - t0, "mib": (rss() - before) / 1024,
                  "scipy": "scipy" in sys.modules}))
"""


def import_cost(reps: int) -> dict[str, float]:
    """What ``import tensorly`` adds to a process that already imported torch and tedepr_fx's decompositions."""
    runs = [json.loads(subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True,
                                      check=True).stdout) for _ in range(reps)]
    return {"seconds": statistics.median(r["seconds"] for r in runs),
            "mib": statistics.median(r["mib"] for r in runs), "scipy": all(r["scipy"] for r in runs)}


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_case(case_index: int, reps: int) -> list[dict[str, object]]:
    case = CASES[case_index]
    tensor, ranks = case.tensor(), case.ranks()
    impls = IMPLEMENTATIONS[case.kind]
    outputs: dict[str, Factors] = {}

    def runner(name: str) -> Callable[[], None]:
        def call() -> None:
            outputs[name] = impls[name](tensor, ranks)
        return call

    samples = interleaved_samples({name: runner(name) for name in impls}, reps, warmup=1)
    rows = []
    for name in impls:
        memory = measure_memory(case_index, name)
        rows.append({"impl": name, "seconds": statistics.median(samples[name]), **memory,
                     "error": relative_error(case, tensor, outputs[name]),
                     "shapes": [tuple(f.shape) for f in outputs[name]]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="docs/benchmarks/decompose.md")
    parser.add_argument("--cases", default="", help="comma-separated case indices (default: all)")
    parser.add_argument("--memory-of", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps(measure_memory_here(int(args.memory_of[0]), args.memory_of[1])))
        return
    import tensorly

    torch.set_num_threads(2)
    indices = [int(i) for i in args.cases.split(",")] if args.cases else list(range(len(CASES)))
    lines = [
        "# Decomposing a dense weight: tedepr_fx against tensorly",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()}-core CPU shared with other "
        f"jobs, torch {torch.__version__}, tensorly {tensorly.__version__}, 2 threads, float32.  ",
        f"Load average (1, 5, 15 min) at start: {loadavg()}.",
        "",
        "time: median of the interleaved repetitions (indicative: the machine is shared; compare the "
        "ratios within a case). Memory, each in a fresh process, over the weight's own size: "
        "**RSS** = resident-set high-water mark minus the resident set before the call (LAPACK's "
        "workspace included), **torch** = peak of live torch allocations (torch.profiler). "
        "Error = |W - rebuilt| / |W|.",
        "",
    ]
    for i in indices:
        case = CASES[i]
        rows = run_case(i, args.reps)
        base = rows[0]
        lines += [f"## {case.name}: ranks {case.ranks()}", "",
                  "| implementation | time (s) | time / tedepr_fx | RSS peak / weight | torch peak / weight "
                  "| error | factor shapes |", "|---|---|---|---|---|---|---|"]
        for row in rows:
            lines.append(f"| {row['impl']} | {row['seconds']:.3f} | {row['seconds'] / base['seconds']:.2f} "
                         f"| {row['rss']:.2f} | {row['torch']:.2f} | {row['error']:.3e} | "
                         f"{', '.join('x'.join(map(str, s)) for s in row['shapes'])} |")
        lines.append("")
        print("\n".join(lines[-len(rows) - 4:]), f"(load {loadavg()})", flush=True)
    cost = import_cost(max(3, args.reps))
    lines += ["## Importing tensorly", "",
              f"`import tensorly` in a process that has already imported torch and "
              f"`tedepr_fx.decompose`: {cost['seconds']:.2f} s and {cost['mib']:.0f} MiB of resident memory "
              f"(median of {max(3, args.reps)} fresh processes)"
              + ("; it imports scipy." if cost["scipy"] else "."), ""]
    lines.append(f"Load average at the end: {loadavg()}.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
