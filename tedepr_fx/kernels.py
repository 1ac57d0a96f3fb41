"""Inference kernels per layer: keep the factor chain, multiply by the rebuilt dense weight, or
by a sparse (CSR) copy of it, whichever is cheapest for the batch size that will be served.

After training, a TEDEPR layer is a product of masked factors. At inference that product
can run three ways:

* ``chain``: the layer as it is (the factor chain, or a masked dense weight);
* ``dense``: one ``F.linear`` with the effective weight rebuilt once (:class:`FrozenLinear`);
* ``csr``: one sparse-times-dense product with the effective weight in CSR form
  (:class:`SparseLinear`), which pays for itself below a density that depends on the
  batch: measured on a 2-core x86 CPU, one thread, CSR beat the dense product below
  density ~0.05 at batch 1 and ~0.2 at batch 128 (``docs/benchmarks/speed.md``).

:func:`choose_kernels` picks per layer, either by measuring the candidates on the layer's
recorded input shape with the batch dimension set to ``batch_size`` (``how="measure"``:
interleaved repeats, median time) or by the density threshold alone (``how="density"``,
deterministic). A measured CSR product is taken only when it runs in at most
:data:`CSR_MARGIN` of the best other candidate's time: single-layer timings put CSR level
with the dense product on several ViT projections at batch 128 (0.70 against 0.74 ms), and
with those near-ties taken the whole model ran at 1.54 x dense instead of 0.83 x
(``docs/benchmarks/speed-floor.md``). The outputs agree with the chain within float rounding (a different
summation order). Linear layers (``nn.Linear`` / Hugging Face ``Conv1D`` layouts) get the
dense and CSR candidates; 2-d convolutions and LSTMs the dense one (an ``nn.Conv2d`` with
the rebuilt kernel, an ``nn.LSTM`` with the rebuilt gate weights; measured only, as it
needs the layer's input shape). The chosen kernels are for inference: they are not trained.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from tedepr_fx.deploy import _dense_layer, replace_module
from tedepr_fx.layers.masked import MaskedConv2d, MaskedLinear, MaskedTransposedLinear
from tedepr_fx.layers.masked_lstm import MaskedLSTM
from tedepr_fx.layers.tt import TTMatrixConv2d, TTMatrixLinear
from tedepr_fx.layers.tt_lstm import TTLSTM
from tedepr_fx.layers.tucker import Tucker2Conv2d, TuckerLinear

LINEAR_KINDS = (TTMatrixLinear, TuckerLinear, MaskedLinear, MaskedTransposedLinear)
# measured against the equivalent dense torch layer only (nn.Conv2d, nn.LSTM): they need the input shape
DENSE_ONLY_KINDS = (TTMatrixConv2d, Tucker2Conv2d, MaskedConv2d, TTLSTM, MaskedLSTM)


def csr_crossover(batch_size: int) -> float:
    """The density below which the CSR product is modelled to beat the dense one at this batch
    size: 0.05 at batch 1 rising (log-linearly) to 0.2 at batch 128 and beyond."""
    import math

    b = min(max(batch_size, 1), 128)
    return 0.05 + (0.2 - 0.05) * math.log(b) / math.log(128)


class FrozenLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` the layer's effective weight, rebuilt once (a buffer)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight", weight.detach().clone().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    weight: torch.Tensor
    bias: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel=dense"


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held in CSR form: ``(W x^T)^T`` by a sparse-dense product."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.nnz = int((weight != 0).sum())
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.register_buffer("weight", weight.detach().to_sparse_csr())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        y: torch.Tensor = torch.sparse.mm(cast(torch.Tensor, self.weight), rows.t()).t()
        bias = cast("torch.Tensor | None", self.bias)
        if bias is not None:
            y = y + bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        density = self.nnz / (self.in_features * self.out_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz} "
                f"(density {density:.4f}), kernel=csr")


@dataclass(frozen=True)
class KernelChoice:
    """What :func:`choose_kernels` decided for one layer, and why."""

    layer: str
    kernel: str  # "chain" | "dense" | "csr"
    density: float  # nonzero share of the effective weight
    seconds: dict[str, float]  # measured median per candidate (empty for how="density")

    def __str__(self) -> str:
        times = ", ".join(f"{k} {1e6 * v:.1f} us" for k, v in self.seconds.items())
        return f"{self.layer}: {self.kernel} (density {self.density:.4f}{'; ' + times if times else ''})"


def effective_linear(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's effective ``(out, in)`` weight (pruned entries 0) and its bias."""
    dense = cast(nn.Linear, _dense_layer(type(module).__name__, module))  # densify's layout rules
    return dense.weight.detach(), None if dense.bias is None else dense.bias.detach()


#: CSR must take at most this share of the best other kernel's measured time to be chosen
CSR_MARGIN = 0.8


def _fastest(seconds: dict[str, float]) -> str:
    """The kernel with the lowest median, CSR only when it wins by :data:`CSR_MARGIN`."""
    others = {k: t for k, t in seconds.items() if k != "csr"}
    best = min(others, key=lambda k: others[k])
    if "csr" in seconds and seconds["csr"] <= CSR_MARGIN * others[best]:
        return "csr"
    return best


def choose_kernels(model: nn.Module, batch_size: int = 1, *, how: str = "measure", reps: int = 25,
                   input_shapes: dict[str, tuple[int, ...]] | None = None) -> list[KernelChoice]:
    """Swap each linear TEDEPR layer of ``model`` (in place) for its fastest inference kernel.

    ``how="measure"`` times chain, dense and CSR on a random input of the layer's recorded
    input shape (``input_shapes``, or the transform's record) with ``batch_size`` rows;
    ``how="density"`` takes CSR below :func:`csr_crossover` and keeps the chain otherwise.
    Returns one :class:`KernelChoice` per layer considered, in model order.
    """
    if how not in ("measure", "density"):
        raise ValueError(f"how must be 'measure' or 'density'; got {how!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    shapes = dict(input_shapes or _recorded_shapes(model))
    choices = []
    for name, module in list(model.named_modules()):
        if isinstance(module, DENSE_ONLY_KINDS) and name and how == "measure" and name in shapes:
            choices.append(_choose_dense(model, name, module, batch_size, shapes[name], reps))
            continue
        if not isinstance(module, LINEAR_KINDS) or not name:
            continue
        weight, bias = effective_linear(module)
        density = float((weight != 0).sum()) / weight.numel()
        candidates: dict[str, nn.Module] = {"chain": module, "dense": FrozenLinear(weight, bias)}
        if density < 1.0:
            candidates["csr"] = SparseLinear(weight, bias)
        seconds: dict[str, float] = {}
        if how == "density":
            kernel = "csr" if density < csr_crossover(batch_size) else "chain"
        else:
            shape = shapes.get(name)
            features = (weight.shape[1],) if shape is None else tuple(shape[1:])
            x = torch.randn(batch_size, *features, dtype=weight.dtype, device=weight.device)
            seconds = _measure(candidates, x, reps)
            kernel = _fastest(seconds)
        if kernel != "chain":
            new = candidates[kernel]
            new.train(False)
            replace_module(model, name, new)
        choices.append(KernelChoice(name, kernel, density, seconds))
    return choices


def _choose_dense(model: nn.Module, name: str, module: nn.Module, batch_size: int, shape: tuple[int, ...],
                  reps: int) -> KernelChoice:
    """The factor chain or the dense torch layer holding the rebuilt weights (``nn.Conv2d``,
    ``nn.LSTM``), whichever runs faster on ``batch_size`` inputs of the recorded shape."""
    dense = _dense_layer(name, module)
    for p in dense.parameters():
        p.requires_grad_(False)
    weights = [p for n, p in dense.named_parameters() if n.startswith("weight")]
    density = float(sum(int((w != 0).sum()) for w in weights)) / sum(w.numel() for w in weights)
    batch_first = getattr(module, "batch_first", True)
    sizes = (batch_size, *shape[1:]) if batch_first or len(shape) < 3 else (shape[0], batch_size, *shape[2:])
    x = torch.randn(*sizes, dtype=weights[0].dtype, device=weights[0].device)
    seconds = _measure({"chain": module, "dense": dense}, x, reps)
    kernel = _fastest(seconds)
    if kernel == "dense":
        dense.train(False)
        replace_module(model, name, dense)
    return KernelChoice(name, kernel, density, seconds)


def _measure(candidates: dict[str, nn.Module], x: torch.Tensor, reps: int) -> dict[str, float]:
    def call(module: nn.Module) -> Callable[[], Any]:
        return lambda: module(x)

    runs = {k: call(m) for k, m in candidates.items()}
    samples: dict[str, list[float]] = {k: [] for k in runs}
    modes = {k: m.training for k, m in candidates.items()}
    for m in candidates.values():
        m.eval()
    try:
        with torch.no_grad():
            for run in runs.values():
                run()
                run()
            for _ in range(reps):
                for k, run in runs.items():
                    t0 = time.perf_counter()
                    run()
                    samples[k].append(time.perf_counter() - t0)
    finally:
        for k, m in candidates.items():
            m.train(modes[k])
    return {k: statistics.median(v) for k, v in samples.items()}


def _recorded_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Each rewritten layer's input shape, from the transform's record (by module path)."""
    from tedepr_fx.record import RECORD_ATTR

    rewrite = getattr(model, RECORD_ATTR, None)
    records = getattr(rewrite, "records", [])
    return {r.path: tuple(r.input_shape) for r in records if r.path and r.input_shape}


