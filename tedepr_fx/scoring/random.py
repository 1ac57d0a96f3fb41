"""Random pruning: the sanity-check baseline.

References
----------
Frankle, Dziugaite, Roy and Carbin, "Pruning Neural Networks at Initialization:
Why are We Missing the Mark?", ICLR 2021 (random pruning as a baseline);
Liu et al., "The Unreasonable Effectiveness of Random Pruning", ICLR 2022.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tedepr_fx.scoring.base import Scorer, _Run


class RandomScorer(Scorer):
    """Uniform random scores from a ``torch.Generator`` seeded with ``seed`` (data-free).

    Targets draw in the order given, so the same seed and targets give the same scores.
    """

    name = "random"
    needs_data = False

    def _score(self, run: _Run) -> dict[str, Tensor]:
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        out = {}
        for k, w in run.tensors().items():
            out[k] = torch.rand(w.shape, generator=gen, dtype=torch.float64).to(w.device)
        return out
