"""FORCE: iterative SNIP with progressive masking.

References
----------
de Jorge, Sanyal, Behl, Torr, Rogez and Dokania, "Progressive Skeletonization:
Trimming more fat from a network at initialization", ICLR 2021.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tedepr_fx.rules.scoring import ForceOptions
from tedepr_fx.scoring.base import Scorer, _Run
from tedepr_fx.scoring.iterative import exponential_schedule, global_topk, require_density
from tedepr_fx.scoring.snip import mask_gradients


class ForceScorer(Scorer):
    r"""FORCE (de Jorge et al., 2021): SNIP recomputed on the progressively pruned network.

    Round k (of ``iterations``, default 10) computes :math:`|w \odot \nabla L(w \odot m_k)|`
    for every entry (pruned ones may come back, as in FORCE) and keeps the global
    top ``density ** (k / iterations)``. The returned scores are those of the last
    round, so their top-k at the final density is the final FORCE mask.
    """

    name = "force"
    needs_data = True
    options_model = ForceOptions
    options: ForceOptions

    def _score(self, run: _Run) -> dict[str, Tensor]:
        density = require_density(run.density, self.name, run.where)
        total = sum(t.tensor().numel() for t in run.targets)
        current = {k: torch.ones_like(w, dtype=torch.bool) for k, w in run.tensors().items()}
        scores: dict[str, Tensor] = {}
        schedule = exponential_schedule(density, self.options.iterations)
        with self._progress(len(schedule), self.name) as bar:
            for i, d in enumerate(schedule):
                masks = {k: m.to(run.tensors()[k].dtype).requires_grad_(True) for k, m in current.items()}
                scores = {k: g.abs() for k, g in mask_gradients(run, masks).items()}
                if i < len(schedule) - 1:
                    current = global_topk(scores, max(1, round(d * total)))
                bar.update(1)
        return scores
