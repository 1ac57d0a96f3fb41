"""Magnitude pruning at initialization: keep the largest ``|w|``.

References
----------
Han, Pool, Tran and Dally, "Learning both Weights and Connections for Efficient
Neural Networks", NeurIPS 2015 (magnitude criterion; here applied at initialization
as in the baselines of Frankle et al., "Pruning Neural Networks at Initialization:
Why are We Missing the Mark?", ICLR 2021).
"""

from __future__ import annotations

from torch import Tensor

from tedepr_fx.scoring.base import Scorer, _Run


class MagnitudeScorer(Scorer):
    """``|w|`` of each target tensor (data-free)."""

    name = "magnitude"
    needs_data = False

    def _score(self, run: _Run) -> dict[str, Tensor]:
        return {k: w.abs() for k, w in run.tensors().items()}
