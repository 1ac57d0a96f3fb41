"""SNIP: connection sensitivity at initialization.

References
----------
Lee, Ajanthan and Torr, "SNIP: Single-shot Network Pruning based on Connection
Sensitivity", ICLR 2019.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tedepr_fx.scoring.base import Scorer, _Run


def mask_gradients(run: _Run, masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """``sum over batches of dL/dm`` at the given float masks (train mode)."""
    run.model.train()
    keys = list(masks)
    total = {k: torch.zeros_like(masks[k]) for k in keys}
    for batch in run.batches:
        loss = run.loss(batch, masks)
        grads = torch.autograd.grad(loss, [masks[k] for k in keys], allow_unused=True)
        for k, g in zip(keys, grads):
            if g is not None:
                total[k] += g
    return total


class SnipScorer(Scorer):
    r"""``|sum_b dL_b/dm|`` at :math:`m = 1`, i.e. :math:`|g \odot w|` (Lee et al., 2019).

    The gradient is summed over all given batches before the absolute value.
    """

    name = "snip"
    needs_data = True

    def _score(self, run: _Run) -> dict[str, Tensor]:
        with self._progress(len(run.batches), self.name):
            grads = mask_gradients(run, run.ones(requires_grad=True))
        return {k: g.abs() for k, g in grads.items()}
