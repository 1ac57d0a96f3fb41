"""Choosing and running the contraction order of a tensor-train matrix product.

A TT-matrix ``W`` with cores ``G_k`` of shape ``(r_{k-1}, m_k, n_k, r_k)`` (Novikov et al.,
"Tensorizing Neural Networks", NeurIPS 2015) can be applied to a batch ``x`` in many
orders. We consider every split of the cores into consecutive *groups*: the cores of a
group are first merged into one super-core (a partial rebuild of the weight), then the
batch is contracted with the super-cores left to right (``"ltr"``) or right to left
(``"rtl"``). One group is "rebuild the weight, one dense product"; ``d`` groups is the
pure factor chain; anything between is a mixed order. The FLOP model below counts
exactly the matrix products that :func:`merge_cores` and :func:`tt_chain_apply`
perform, and :func:`choose_order` takes its argmin for the actual number of rows (on
the shapes we checked, opt_einsum's exhaustive ``'optimal'`` search finds nothing
cheaper).

Every step is a matrix product: batched (bmm) over contiguous views when there are few
products, one plain product over a transposed copy of the state when there are many
(:func:`_batched`). Super-cores are partial
products of the weight: never larger than the weight itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import optimization_hint

Groups = tuple[int, ...]  # sizes of consecutive core groups, summing to d


def shape_hint(shape: Sequence[int | torch.SymInt | torch.Tensor]) -> tuple[int, ...]:
    """``shape`` as ints to choose a contraction order by, without fixing a traced size.

    Under ``torch.export`` or ``torch.compile`` with a dynamic batch a size is symbolic:
    choosing an order by comparing it would specialize the program to the example's size
    (or guard and recompile). Every order computes the same product, so the order is
    chosen for the example's size (its hint) and the traced program serves every size.
    """
    # a SymInt under dynamo; under torch.jit.trace (the TorchScript ONNX exporter) a 0-d tensor
    return tuple(optimization_hint(d) if isinstance(d, torch.SymInt) else int(d) for d in shape)


def compositions(d: int) -> list[Groups]:
    """Every split of ``d`` cores into consecutive non-empty groups (``2**(d-1)`` of them)."""
    out: list[Groups] = []
    for mask in range(2 ** (d - 1)):
        sizes, run = [], 1
        for k in range(d - 1):
            if mask >> k & 1:
                sizes.append(run)
                run = 1
            else:
                run += 1
        sizes.append(run)
        out.append(tuple(sizes))
    return out


def _grouped_shapes(
    in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int], groups: Groups
) -> tuple[list[tuple[int, int, int, int]], int]:
    """Shapes ``(r_start, M, N, r_end)`` of the super-cores, and the merge FLOPs."""
    shapes: list[tuple[int, int, int, int]] = []
    merge_flops, k = 0, 0
    for size in groups:
        whole = size > 1 and ranks[k] == 1 and ranks[k + size] == 1  # merge_cores: first x rest
        start = k + 1 if whole else k
        r0, big_m, big_n = ranks[start], 1, 1
        for j in range(start, k + size):
            if j > start:  # merging (r0, M, N, r_j) with (r_j, m, n, r_{j+1})
                merge_flops += 2 * r0 * big_m * big_n * ranks[j] * in_modes[j] * out_modes[j] * ranks[j + 1]
            big_m *= in_modes[j]
            big_n *= out_modes[j]
        if whole:
            merge_flops += 2 * in_modes[k] * out_modes[k] * ranks[k + 1] * big_m * big_n
            r0, big_m, big_n = 1, big_m * in_modes[k], big_n * out_modes[k]
        k += size
        shapes.append((r0, big_m, big_n, ranks[k]))
    return shapes, merge_flops


def chain_flops(rows: int, shapes: list[tuple[int, int, int, int]], direction: str = "ltr") -> int:
    """FLOPs (2 x multiply-adds) of :func:`tt_chain_apply` on ``rows`` rows with these super-cores."""
    total = 0
    if direction == "ltr":
        n_done, m_left = 1, math.prod([s[1] for s in shapes])
        for r0, big_m, big_n, r1 in shapes:
            m_left //= big_m
            total += 2 * rows * n_done * (big_n * r1) * (r0 * big_m) * m_left
            n_done *= big_n
        return total
    n_done, m_left = 1, shapes[0][0] * math.prod([s[1] for s in shapes])
    for g in range(len(shapes) - 1, -1, -1):
        r0, big_m, big_n, r1 = shapes[g]
        if g == 0:  # the leftmost group also absorbs the input's leading rank r_0
            total += 2 * rows * big_n * (r0 * big_m * r1) * n_done
        else:
            m_left //= big_m
            total += 2 * rows * m_left * (r0 * big_n) * (big_m * r1) * n_done
        n_done *= big_n
    return total


ContractionOrder = tuple[str, Groups]  # ("ltr" | "rtl", groups): the order a TT-matrix product runs in


def tt_flops(rows: int, in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int],
             groups: Groups, direction: str = "ltr") -> int:
    """FLOPs of one forward in a given order: merging the groups plus the chain."""
    shapes, merge = _grouped_shapes(list(in_modes), list(out_modes), list(ranks), groups)
    return merge + chain_flops(rows, shapes, direction)


def candidate_orders(d: int) -> list[ContractionOrder]:
    """Every order: a grouping, contracted left to right or right to left (one group: one product)."""
    orders: list[ContractionOrder] = []
    for groups in compositions(d):
        orders.append(("ltr", groups))
        if len(groups) > 1:
            orders.append(("rtl", groups))
    return orders


@lru_cache(maxsize=1024)
def _choose(rows: int, in_modes: tuple[int, ...], out_modes: tuple[int, ...],
            ranks: tuple[int, ...]) -> tuple[ContractionOrder, int]:
    best: tuple[tuple[int, int, bool], ContractionOrder] | None = None
    for order in candidate_orders(len(in_modes)):
        cost = tt_flops(rows, in_modes, out_modes, ranks, order[1], order[0])
        # ties go to fewer groups (fewer kernel launches), then to "ltr", measured faster on
        # CPU: its batched product reads the small input, its plain product the large state
        key = (cost, len(order[1]), order[0] != "ltr")
        if best is None or key < best[0]:
            best = (key, order)
    assert best is not None
    return best[1], best[0][0]


def choose_order(rows: int, in_modes: Sequence[int], out_modes: Sequence[int],
                 ranks: Sequence[int]) -> tuple[ContractionOrder, int]:
    """The cheapest contraction order (by FLOPs) for ``rows`` input rows, and its FLOPs.

    ``ranks`` has ``d + 1`` entries; ``ranks[0]`` may exceed 1 when the input already
    carries the first bond (the TT convolution's spatial core).
    """
    args = (int(rows), tuple(in_modes), tuple(out_modes), tuple(ranks))
    if torch.compiler.is_compiling():  # dynamo traces through caches anyway (and warns): skip it
        return _choose.__wrapped__(*args)
    return _choose(*args)


# What one more product of the chain costs besides its FLOPs (its reshapes, copies and kernel
# launch), in FLOPs: measured on TT-matrix layers of 784 -> 300 and 300 -> 100 in eval mode at
# 1, 8 and 128 rows (one thread), where a product costs ~5-8 us beyond its arithmetic and the
# cached-weight product runs at ~20 GFLOP/s (docs/benchmarks/speed-floor.md).
EVAL_STEP_FLOPS = 150_000
# The cached whole weight is one large GEMM, which ran ~6 x more FLOPs per second than the
# chain's skinny products on the same layers (90 against 10-20 GFLOP/s at 128 rows).
EVAL_GEMM_ADVANTAGE = 6


@lru_cache(maxsize=1024)
def _choose_eval(rows: int, in_modes: tuple[int, ...], out_modes: tuple[int, ...],
                 ranks: tuple[int, ...]) -> ContractionOrder:
    best: tuple[tuple[int, int, bool], ContractionOrder] | None = None
    for order in candidate_orders(len(in_modes)):
        shapes, _ = _grouped_shapes(in_modes, out_modes, ranks, order[1])
        flops = chain_flops(rows, shapes, order[0])
        if len(order[1]) == 1:
            flops //= EVAL_GEMM_ADVANTAGE
        cost = flops + EVAL_STEP_FLOPS * len(order[1])
        key = (cost, len(order[1]), order[0] != "ltr")
        if best is None or key < best[0]:
            best = (key, order)
    assert best is not None
    return best[1]


def choose_eval_order(rows: int, in_modes: Sequence[int], out_modes: Sequence[int],
                      ranks: Sequence[int]) -> ContractionOrder:
    """The order for ``rows`` rows when the merged cores are cached (eval mode, no autograd):
    merging costs nothing then, each product a fixed :data:`EVAL_STEP_FLOPS` besides its FLOPs,
    and the cached whole weight's one GEMM its FLOPs / :data:`EVAL_GEMM_ADVANTAGE`."""
    return _choose_eval(int(rows), tuple(in_modes), tuple(out_modes), tuple(ranks))


def merge_cores(cores: list[torch.Tensor]) -> torch.Tensor:
    """Contract consecutive TT-matrix cores into one ``(r_start, prod m, prod n, r_end)`` core.

    A whole weight (``r_start = r_end = 1``) is built as the first core times the merge
    of the others (:class:`_FirstTimesRest`), which writes the weight once in its final
    layout; other groups merge left to right.
    """
    if len(cores) > 1 and cores[0].shape[0] == 1 and cores[-1].shape[-1] == 1:
        rest = _merge_left_to_right(cores[1:])
        _, m1, n1, r1 = cores[0].shape
        _, big_m, big_n, _ = rest.shape
        first, rest3 = cores[0].reshape(m1, n1, r1), rest.reshape(r1, big_m, big_n)
        weight: torch.Tensor
        # torch.jit.is_tracing: unannotated and not re-exported in torch's stubs
        if torch.compiler.is_compiling() or torch.jit.is_tracing():  # type: ignore[attr-defined,no-untyped-call]
            # a traced program must be functional (no out= writes, which the TorchScript ONNX
            # exporter drops); the compiler picks the layout
            weight = torch.einsum("ioa,apq->ipoq", first, rest3)
        else:
            # torch: Function.apply is unannotated (returns what forward returns, a Tensor)
            weight = _FirstTimesRest.apply(first, rest3)  # type: ignore[no-untyped-call]
        return weight.reshape(1, m1 * big_m, n1 * big_n, 1)
    return _merge_left_to_right(cores)


class _FirstTimesRest(torch.autograd.Function):
    r"""``W[i, P, o, Q] = sum_a first[i, o, a] * rest[a, P, Q]``: the last step of a rebuild.

    Merging left to right ends with a ``(rows, r) @ (r, m * n)`` product whose output
    must be permuted into the weight's ``(in, out)`` layout: a copy of the weight, and
    in backward a copy of its gradient plus two products with an inner size of r, slow
    on CPU. Here the first core is the one merged last: for each of its input indices
    ``i`` one batched product (batch ``P``) writes the contiguous block ``W[i]``
    directly; backward permutes the weight's gradient once and makes two batched
    products with inner sizes ``i * o`` and ``Q``.
    """

    @staticmethod
    def forward(first: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        m1, n1, r = first.shape
        _, big_m, big_n = rest.shape
        rest_p = rest.transpose(0, 1).contiguous()  # (P, a, Q)
        out = torch.empty(m1, big_m, n1, big_n, dtype=torch.result_type(first, rest), device=first.device)
        for i in range(m1):
            torch.bmm(first[i].expand(big_m, n1, r), rest_p, out=out[i])
        return out

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        first: torch.Tensor
        rest: torch.Tensor
        first, rest = ctx.saved_tensors
        m1, n1, r = first.shape
        _, big_m, big_n = rest.shape
        grad_p = grad.permute(1, 0, 2, 3).reshape(big_m, m1 * n1, big_n)  # (P, i*o, Q)
        d_first: torch.Tensor | None = None
        d_rest: torch.Tensor | None = None
        if ctx.needs_input_grad[0]:
            rest_p = rest.transpose(0, 1)  # (P, a, Q)
            d_first = torch.bmm(grad_p, rest_p.transpose(1, 2)).sum(0).reshape(m1, n1, r)
        if ctx.needs_input_grad[1]:
            lhs = first.reshape(m1 * n1, r).t().expand(big_m, r, m1 * n1)
            d_rest = torch.bmm(lhs, grad_p).transpose(0, 1)
        return d_first, d_rest


def _merge_left_to_right(cores: list[torch.Tensor]) -> torch.Tensor:
    out = cores[0]
    for core in cores[1:]:
        r0, big_m, big_n, r1 = out.shape
        _, m, n, r2 = core.shape
        prod = out.reshape(r0 * big_m * big_n, r1) @ core.reshape(r1, m * n * r2)
        out = prod.reshape(r0, big_m, big_n, m, n, r2).transpose(2, 3).reshape(r0, big_m * m, big_n * n, r2)
    return out


def group_cores(cores: list[torch.Tensor], groups: Groups) -> list[torch.Tensor]:
    """Merge the cores group by group (see :func:`compositions`)."""
    out: list[torch.Tensor] = []
    k = 0
    for size in groups:
        out.append(merge_cores(cores[k : k + size]))
        k += size
    return out


def tt_chain_apply(
    x: torch.Tensor, supercores: list[torch.Tensor], direction: str = "ltr", bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Contract rows ``x`` of shape ``(rows, r_0 * prod M)`` with super-cores.

    ``x``'s columns are ordered ``(r_0, M_1, ..., M_p)`` row-major; the result has
    shape ``(rows, prod N)`` ordered ``(N_1, ..., N_p)`` (and ``r_p = 1``).
    ``"ltr"`` contracts ``(r_{g-1}, M_g)`` group by group from the left (its last
    product is a plain matrix product), ``"rtl"`` contracts ``(M_g, r_g)`` from the
    right (its first product is a plain matrix product). The others are batched
    products whose operands are contiguous views. ``bias`` (length ``prod N``) is
    fused into the product when the weight is rebuilt whole.
    """
    rows = x.shape[0]
    if len(supercores) == 1 and bias is not None:
        core = supercores[0]
        return torch.addmm(bias, x, core.reshape(x.shape[1], -1))
    if direction == "rtl":
        out = _apply_rtl(x, supercores)
        return out if bias is None else out + bias
    m_left = math.prod([c.shape[1] for c in supercores])
    state = x
    batch = rows
    for core in supercores:
        r0, big_m, big_n, r1 = core.shape
        m_left //= big_m
        if m_left == 1:
            state = state.reshape(batch, r0 * big_m) @ core.reshape(r0 * big_m, big_n * r1)
        else:
            state = _batched(core.permute(2, 3, 0, 1).reshape(big_n * r1, r0 * big_m),
                             state.reshape(batch, r0 * big_m, m_left))
        batch = batch * big_n  # not *=: under torch.jit.trace rows is a 0-d tensor, and *= would change it
    out = state.reshape(rows, -1)
    return out if bias is None else out + bias


# from this many batched products on, one plain product over the transposed state is faster
BATCHED_AS_ONE_PRODUCT = 64


def _batched(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``a @ s[b]`` for every ``b``, as ``(batch, P, L)``.

    Few products: bmm against an expanded (stride-0) view of ``a``, which copies nothing.
    Many (a large batch of small matrices, where bmm runs one tiny product after another):
    one plain product ``(batch L, K) @ (K, P)`` over the transposed state, a copy in and a
    strided view out; measured 1.5 to 3.9 x faster at 128 rows on TT-matrix layers of rank
    3 to 16 (``docs/benchmarks/speed.md``), 5 to 15 % slower at one row.
    """
    batch = shape_hint(s.shape[:1])[0]
    if batch < BATCHED_AS_ONE_PRODUCT:
        return torch.bmm(a.expand(s.shape[0], -1, -1), s)
    n, k, cols = s.shape
    return (s.transpose(1, 2).reshape(n * cols, k) @ a.t()).reshape(n, cols, a.shape[0]).transpose(1, 2)


def _apply_rtl(x: torch.Tensor, supercores: list[torch.Tensor]) -> torch.Tensor:
    rows = x.shape[0]
    # state layout: (rows, r_0, M_1..M_g, r_g, N_{g+1}..N_p)
    m_left = supercores[0].shape[0] * math.prod([c.shape[1] for c in supercores])
    n_done = 1
    state = x
    for g in range(len(supercores) - 1, -1, -1):
        core = supercores[g]
        r0, big_m, big_n, r1 = core.shape
        if g == 0:
            a = core.permute(2, 0, 1, 3).reshape(big_n, r0 * big_m * r1)
            k, m_left = r0 * big_m * r1, 1
        else:
            a = core.permute(0, 2, 1, 3).reshape(r0 * big_n, big_m * r1)
            k = big_m * r1
            m_left //= big_m
        if n_done == 1:
            state = state.reshape(rows * m_left, k) @ a.t()
        else:
            state = _batched(a, state.reshape(rows * m_left, k, n_done))
        n_done *= big_n
    return state.reshape(rows, -1)


def trace_ring(t: torch.Tensor, ring: int, n: int) -> torch.Tensor:
    """``(..., ring * n * ring)`` ordered ``(a, j, b)`` -> ``(..., n)``: the sum over ``a == b``.

    Closes a tensor ring whose boundary bond was folded into the output modes (Zhao et al.,
    "Tensor Ring Decomposition", 2016: ``W = trace(G_1 ... G_d)``); additions only.
    """
    if ring == 1:
        return t
    return torch.diagonal(t.reshape(*t.shape[:-1], ring, n, ring), dim1=-3, dim2=-1).sum(-1)
