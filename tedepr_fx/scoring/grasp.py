"""GraSP: gradient signal preservation.

References
----------
Wang, Zhang and Grosse, "Picking Winning Tickets Before Training by Preserving
Gradient Flow", ICLR 2020.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tedepr_fx.rules.scoring import GraspOptions
from tedepr_fx.scoring.base import Scorer, _Run


class GraspScorer(Scorer):
    r"""Keep-score :math:`w \odot Hg`, the negation of GraSP's removal score.

    Wang et al. (2020) score :math:`S = -w \odot Hg` and remove the weights with
    the *largest* S; with "higher means keep" we return :math:`-S = w \odot Hg`.
    :math:`g = \sum_b \nabla_w L_b` and :math:`Hg = \sum_b \nabla_w (\nabla_w L_b^\top
    \mathrm{sg}(g))`, with the outputs divided by ``temperature`` (default 200) before
    the loss, and the gradients taken with respect to the target tensors (dense
    weights or factors) at masks of ones.
    """

    name = "grasp"
    needs_data = True
    options_model = GraspOptions
    options: GraspOptions

    @property
    def differentiates_twice(self) -> bool:
        return True  # a Hessian-gradient product

    def _score(self, run: _Run) -> dict[str, Tensor]:
        run.model.train()
        masks = run.ones(requires_grad=False)
        keys = list(masks)
        params = {run.param_path[k]: w.clone().requires_grad_(True) for k, w in run.tensors().items()}
        leaves = [params[run.param_path[k]] for k in keys]
        with self._progress(2 * len(run.batches), self.name) as bar:
            g = [torch.zeros_like(w) for w in leaves]
            for batch in run.batches:
                loss = run.loss(batch, masks, params, scale=self.options.temperature)
                for acc, gb in zip(g, torch.autograd.grad(loss, leaves, allow_unused=True)):
                    if gb is not None:
                        acc += gb
                bar.update(1)
            hg = [torch.zeros_like(w) for w in leaves]
            for batch in run.batches:
                loss = run.loss(batch, masks, params, scale=self.options.temperature)
                grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
                z = sum((a * c).sum() for a, c in zip(grads, g) if a is not None)
                if isinstance(z, Tensor) and z.requires_grad:
                    for acc, h in zip(hg, torch.autograd.grad(z, leaves, allow_unused=True)):
                        if h is not None:
                            acc += h
                bar.update(1)
        return {k: (w * h).detach() for k, w, h in zip(keys, leaves, hg)}
