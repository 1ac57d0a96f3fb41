"""The default TEDEPR scorer: a meta-gradient of the loss after K SGD steps.

References
----------
Liu et al., "Dual-grained Lightweight Strategy" (TEDEPR), IEEE TPAMI 46(12), 2024.
Alizadeh et al., "Prospect Pruning: Finding Trainable Weights at Initialization
using Meta-Gradients" (ProsPr), ICLR 2022.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tedepr_fx.scoring.base import Scorer, _Run


class TrainabilityScorer(Scorer):
    r"""``|dL(w_K)/dm|`` after K plain SGD steps from the masked initial weights.

    TEDEPR prunes the factor entries that matter least for the *trainability* of
    the low-rank model; its text is not public, and this is our reading of it, in
    the style of ProsPr (Alizadeh et al., ICLR 2022): put a mask :math:`m = 1` on
    every target, take ``steps`` = K SGD steps on all trainable parameters

    .. math:: w_{k+1} = w_k - \eta \, \nabla_w L(w_k \odot m; B_k), \quad k = 0..K-1

    on the batches used cyclically (step k uses batch ``k mod n``), then score
    :math:`|\partial L(w_K \odot m; B_{K \bmod n}) / \partial m|`, differentiating
    through the K steps. ``first_order=True`` treats the inner gradients as
    constants (no second-order terms: memory of one step, for big models).

    The model runs in train mode (BatchNorm uses batch statistics); its running
    statistics are restored afterwards.
    """

    name = "trainability"
    needs_data = True

    def __repr__(self) -> str:
        return (f"TrainabilityScorer(steps={self.steps}, inner_lr={self.inner_lr}, "
                f"first_order={self.first_order})")

    def _score(self, run: _Run) -> dict[str, Tensor]:
        run.model.train()
        masks = run.ones(requires_grad=True)
        names = [n for n, p in run.model.named_parameters() if p.requires_grad]
        params = {n: p.detach().clone().requires_grad_(True)
                  for n, p in run.model.named_parameters() if p.requires_grad}
        n_batches = len(run.batches)
        with self._progress(self.steps + 1, self.name) as bar:
            for k in range(self.steps):
                loss = run.loss(run.batches[k % n_batches], masks, params)
                grads = torch.autograd.grad(
                    loss, [params[n] for n in names], create_graph=not self.first_order,
                    allow_unused=True,
                )
                params = {n: params[n] if g is None else params[n] - self.inner_lr * g
                          for n, g in zip(names, grads)}
                bar.update(1)
            final = run.loss(run.batches[self.steps % n_batches], masks, params)
            keys = list(masks)
            grads = torch.autograd.grad(final, [masks[k] for k in keys], allow_unused=True)
            bar.update(1)
        return {k: (torch.zeros_like(masks[k]) if g is None else g.abs()) for k, g in zip(keys, grads)}
