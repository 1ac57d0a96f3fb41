"""SynFlow: data-free iterative synaptic flow pruning.

References
----------
Tanaka, Kunin, Yamins and Ganguli, "Pruning neural networks without any data by
iteratively conserving synaptic flow", NeurIPS 2020.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tedepr_fx.errors import DataError
from tedepr_fx.rules.scoring import SynflowOptions
from tedepr_fx.scoring.base import Scorer, _Run
from tedepr_fx.scoring.iterative import prune_in_rounds, require_density


class SynflowScorer(Scorer):
    r"""Iterative SynFlow: :math:`|w \odot \partial R / \partial w|`, 100 rounds (Tanaka et al., 2020).

    Every parameter and floating buffer is replaced by its absolute value, the
    model runs in eval mode on an all-ones input shaped like ``example_inputs``
    (or the first batch's inputs), and :math:`R = \mathbf{1}^\top f(\mathbf{1})`;
    each round keeps the top ``density ** (k / iterations)`` of all targets
    globally and rescores the pruned network. The result is a keep-score whose
    top-k at the final density reproduces the final SynFlow mask:
    ``round at which the entry was pruned + 0.5 * (its last score / max score)``,
    survivors getting ``iterations + 1`` plus their final score.
    """

    name = "synflow"
    needs_data = False
    options_model = SynflowOptions
    options: SynflowOptions

    def _score(self, run: _Run) -> dict[str, Tensor]:
        density = require_density(run.density, self.name, run.where)
        flow = SynapticFlow(run)
        with self._progress(self.options.iterations, self.name) as bar:
            return prune_in_rounds(run.tensors(), density, self.options.iterations,
                                   lambda _, alive: flow.scores(alive), lambda: bar.update(1))


class SynapticFlow:
    r"""The synaptic-flow scores :math:`|w \odot \partial R / \partial w|` of a run's targets at given masks.

    Every parameter and floating buffer is replaced by its absolute value and the
    model runs in eval mode on an all-ones input shaped like ``inputs``:
    :math:`R = \mathbf{1}^\top f(\mathbf{1})` is the sum over input-output paths
    of the product of the weights along each path (Tanaka et al., 2020), so an
    entry on no path from input to output scores exactly zero.
    """

    def __init__(self, run: _Run) -> None:
        inputs = run.example_inputs
        if inputs is None and run.batches:
            inputs = run.batches[0][0]
        if inputs is None:
            raise DataError(f"{run.where}synaptic flow needs example_inputs (or one batch) "
                            "to know the input shape")
        self.run, self.ones_in = run, _all_ones(inputs)
        self.linear = {n: p.detach().abs() for n, p in run.model.named_parameters()}
        self.linear.update({n: b.abs() for n, b in run.model.named_buffers()
                            if b.is_floating_point() and not n.endswith("_mask")})
        self.dtypes = {k: t.dtype for k, t in run.tensors().items()}

    def scores(self, alive: dict[str, Tensor]) -> dict[str, Tensor]:
        training = self.run.model.training
        self.run.model.eval()
        try:
            masks = {k: m.to(self.dtypes[k]).requires_grad_(True) for k, m in alive.items()}
            out = self.run.output_fn(self.run.forward(self.ones_in, masks, self.linear))
            keys = list(masks)
            grads = torch.autograd.grad(out.sum(), [masks[k] for k in keys], allow_unused=True)
        finally:
            self.run.model.train(training)
        # dR/dm = |w| * dR/d(w_eff): the SynFlow score of every entry, pruned or not
        return {k: (torch.zeros_like(masks[k]) if g is None else g.detach().abs())
                for k, g in zip(keys, grads)}


def _all_ones(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return torch.ones_like(inputs) if inputs.is_floating_point() else inputs
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_all_ones(x) for x in inputs)
    if isinstance(inputs, dict):
        return {k: _all_ones(v) for k, v in inputs.items()}
    return inputs
