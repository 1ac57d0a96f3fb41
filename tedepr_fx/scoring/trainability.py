"""The default TEDEPR scorer: a meta-gradient of the loss after K SGD steps.

References
----------
Liu et al., "Dual-grained Lightweight Strategy" (TEDEPR), IEEE TPAMI 46(12), 2024.
Alizadeh et al., "Prospect Pruning: Finding Trainable Weights at Initialization
using Meta-Gradients" (ProsPr), ICLR 2022.
Griewank and Walther, "Algorithm 799: revolve" (ACM TOMS, 2000), for recomputing
the steps of a reverse sweep instead of storing them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tedepr_fx.rules.scoring import TrainabilityOptions
from tedepr_fx.scoring.base import Batch, Scorer, _Run, check_not_all_zero
from tedepr_fx.scoring.iterative import prune_in_rounds, require_density
from tedepr_fx.scoring.synflow import SynapticFlow

Tensors = dict[str, Tensor]


class TrainabilityScorer(Scorer):
    r"""``|dL(w_K)/dm|`` after K plain SGD steps from the masked initial weights.

    TEDEPR prunes the factor entries that matter least for the *trainability* of
    the low-rank model; its text is not public, and this is our reading of it, in
    the style of ProsPr (Alizadeh et al., ICLR 2022): put a mask :math:`m = 1` on
    every target, take ``steps`` = K SGD steps on all trainable parameters

    .. math:: w_{k+1} = w_k - \eta \, \nabla_w L_k(w_k \odot m), \quad k = 0..K-1

    then score :math:`|\partial L_K(w_K \odot m) / \partial m|`, differentiating
    through the K steps. :math:`L_k` is the loss on one batch: the batches are used
    in order and cyclically, step k reads batch ``k mod n`` and the final loss batch
    ``K mod n``, so K + 1 batches are read (each inner step is a plain SGD step on
    one mini-batch, whose size the rules' ``scoring.batch_size`` sets).

    Three ways to compute it:

    * ``checkpoint=True`` (the default): exact, with the memory of about two
      training steps whatever K is. The forward sweep keeps only the weights
      :math:`w_k`; the reverse sweep recomputes step k and applies its
      transposed Jacobian with one Hessian-vector product (double backward).
      With :math:`a = \partial L_K / \partial w_{k+1}`, :math:`g_k` the gradient
      and :math:`H_k` the Hessian of :math:`L_k` at :math:`w_k` and
      :math:`m = 1`:

      .. math::

         \frac{\partial L_K}{\partial m} \mathrel{+}= -\eta\,(a \odot g_k + w_k \odot H_k a),
         \qquad a \leftarrow a - \eta H_k a,

      starting from :math:`\partial L_K/\partial m = w_K \odot g_K`, :math:`a = g_K`.
      It costs K more forward+backward passes than unrolling.
    * ``checkpoint=False``: exact, by keeping the graphs of all K steps and one
      backward through them; faster, with memory that grows with K.
    * ``first_order=True``: treats the inner gradients as constants (no
      second-order terms): the time of K + 1 training steps and the memory of one.

    The model runs in train mode (BatchNorm uses batch statistics); its running
    statistics are restored afterwards. Dropout draws the same masks when a step
    is recomputed.
    """

    name = "trainability"
    needs_data = True
    options_model = TrainabilityOptions
    options: TrainabilityOptions

    def _score(self, run: _Run) -> Tensors:
        run.model.train()
        steps, iterations = self.options.steps, self.options.iterations
        passes = steps + 1 + (steps if self._checkpointed else 0)
        flow = SynapticFlow(run) if self.options.flow else None
        tensors = run.tensors()
        with self._progress(passes * iterations, self.name) as bar:

            def score_round(rnd: int, alive: Tensors) -> Tensors:
                masks = {k: m.to(tensors[k].dtype) for k, m in alive.items()}
                scores = self._meta_gradient(run, masks, (rnd - 1) * (steps + 1), bar)
                if rnd == 1:  # the keep-scores of the rounds are never all zero: check the first
                    check_not_all_zero(scores, f"{run.where}scorer 'trainability' gave every entry a "
                                               "meta-gradient of zero")
                if flow is not None:
                    paths = flow.scores(alive)
                    scores = {k: s * paths[k] for k, s in scores.items()}
                return scores

            if iterations == 1:
                return score_round(1, {k: torch.ones_like(t, dtype=torch.bool) for k, t in tensors.items()})
            density = require_density(run.density, self.name, run.where)
            return prune_in_rounds(tensors, density, iterations, score_round)

    def _meta_gradient(self, run: _Run, masks: Tensors, first_batch: int, bar: Any) -> Tensors:
        """``|dL_K/dm|`` at ``masks``, the K steps reading batches from ``first_batch`` on (cyclically)."""
        n = len(run.batches)
        batches = [run.batches[(first_batch + k) % n] for k in range(self.options.steps + 1)]
        if self._checkpointed:
            return self._reverse_sweep(run, masks, batches, bar)
        return self._unrolled(run, masks, batches, bar)

    @property
    def differentiates_twice(self) -> bool:
        return not self.options.first_order

    @property
    def _checkpointed(self) -> bool:
        return self.options.checkpoint and not self.options.first_order

    # -- all steps in one graph ---------------------------------------------------
    def _unrolled(self, run: _Run, masks: Tensors, batches: list[Batch], bar: Any) -> Tensors:
        steps, lr, first_order = self.options.steps, self.options.inner_lr, self.options.first_order
        masks = {k: m.detach().requires_grad_(True) for k, m in masks.items()}
        if first_order:  # w_K does not depend on m: one private copy, stepped in place
            params = {n: p.detach().clone().requires_grad_(True)
                      for n, p in run.model.named_parameters() if p.requires_grad}
        else:  # leaves sharing the weights' storage: every step below makes new tensors
            params = {n: p.detach().requires_grad_(True)
                      for n, p in run.model.named_parameters() if p.requires_grad}
        names = list(params)
        for k in range(steps):
            loss = run.loss(batches[k], masks, params)
            grads = torch.autograd.grad(
                loss, [params[n] for n in names], create_graph=not first_order, allow_unused=True,
            )
            if first_order:
                with torch.no_grad():
                    for n, g in zip(names, grads):
                        if g is not None:
                            params[n].add_(g, alpha=-lr)
            else:
                params = {n: params[n] if g is None else params[n] - lr * g for n, g in zip(names, grads)}
            del grads
            bar.update(1)
        final = run.loss(batches[steps], masks, params)
        keys = list(masks)
        grads = torch.autograd.grad(final, [masks[k] for k in keys], allow_unused=True)
        bar.update(1)
        return {k: (torch.zeros_like(masks[k]) if g is None else g.abs()) for k, g in zip(keys, grads)}

    # -- forward sweep storing weights, reverse sweep recomputing each step ---------
    def _reverse_sweep(self, run: _Run, masks: Tensors, batches: list[Batch], bar: Any) -> Tensors:
        # at a 0/1 mask the formulas below are exact for every live entry (m = 1 there);
        # pruned entries' scores are never read by the rounds
        weights = {n: p.detach() for n, p in run.model.named_parameters() if p.requires_grad}
        trainable = set(weights)
        # the variables: every trainable parameter and every target tensor (frozen or not)
        for key, tensor in run.tensors().items():
            weights.setdefault(run.param_path[key], tensor)
        steps, lr = self.options.steps, self.options.inner_lr

        history = []
        for k in range(steps):
            rng = _rng_state()
            grads = _gradients(run, batches[k], masks, weights)
            history.append((weights, rng))
            weights = {n: w - lr * grads[n] if n in trainable else w for n, w in weights.items()}
            bar.update(1)
        grads = _gradients(run, batches[steps], masks, weights)
        bar.update(1)

        meta = {key: weights[path] * grads[path] for key, path in run.param_path.items()}
        adjoint = {n: g if n in trainable else torch.zeros_like(g) for n, g in grads.items()}
        for k in range(steps - 1, -1, -1):
            weights, rng = history.pop()
            _set_rng_state(rng)
            grads, hvp = _gradients_and_hvp(run, batches[k], masks, weights, adjoint)
            for key, path in run.param_path.items():
                meta[key] = meta[key] - lr * (adjoint[path] * grads[path] + weights[path] * hvp[path])
            adjoint = {n: a - lr * hvp[n] if n in trainable else a for n, a in adjoint.items()}
            bar.update(1)
        return {key: m.abs() for key, m in meta.items()}


def _leaves(weights: Tensors) -> Tensors:
    return {n: w.detach().requires_grad_(True) for n, w in weights.items()}


def _gradients(run: _Run, batch: Batch, masks: Tensors, weights: Tensors) -> Tensors:
    """Gradient of the loss on ``batch`` with respect to every weight (zeros where unused)."""
    leaves = _leaves(weights)
    grads = torch.autograd.grad(run.loss(batch, masks, leaves), list(leaves.values()), allow_unused=True)
    return _zero_filled(weights, dict(zip(leaves, grads)))


def _gradients_and_hvp(run: _Run, batch: Batch, masks: Tensors, weights: Tensors,
                       vector: Tensors) -> tuple[Tensors, Tensors]:
    """Gradient and Hessian-vector product of the loss on ``batch`` (double backward)."""
    leaves = _leaves(weights)
    gs = torch.autograd.grad(run.loss(batch, masks, leaves), list(leaves.values()), create_graph=True,
                             allow_unused=True)
    used = {n: g for n, g in zip(leaves, gs) if g is not None}
    dot = sum((g * vector[n]).sum() for n, g in used.items())
    hvp: dict[str, Tensor | None] = {}
    if isinstance(dot, Tensor) and dot.requires_grad:  # else the loss is linear in every weight
        hvp = dict(zip(used, torch.autograd.grad(dot, [leaves[n] for n in used], allow_unused=True)))
    return (_zero_filled(weights, {n: g.detach() for n, g in used.items()}), _zero_filled(weights, hvp))


def _zero_filled(weights: Tensors, found: dict[str, Tensor | None]) -> Tensors:
    """``found`` for every weight, zeros where it has no entry or ``None`` (the weight is unused)."""
    return {n: g if (g := found.get(n)) is not None else torch.zeros_like(w) for n, w in weights.items()}


def _rng_state() -> tuple[Tensor, list[Tensor] | None]:
    started = torch.cuda.is_available() and torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    cuda = torch.cuda.get_rng_state_all() if started else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, list[Tensor] | None]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
