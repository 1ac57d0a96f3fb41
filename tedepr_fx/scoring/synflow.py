"""SynFlow: data-free iterative synaptic flow pruning.

References
----------
Tanaka, Kunin, Yamins and Ganguli, "Pruning neural networks without any data by
iteratively conserving synaptic flow", NeurIPS 2020.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tedepr_fx.errors import DataError
from tedepr_fx.rules.scoring import SynflowOptions
from tedepr_fx.scoring.base import Scorer, _Run
from tedepr_fx.scoring.iterative import exponential_schedule, global_topk, require_density


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
        inputs = run.example_inputs
        if inputs is None and run.batches:
            inputs = run.batches[0][0]
        if inputs is None:
            raise DataError(f"{run.where}scorer 'synflow' needs example_inputs (or one batch) "
                            "to know the input shape")
        ones_in = _all_ones(inputs)
        run.model.eval()
        linear = {n: p.detach().abs() for n, p in run.model.named_parameters()}
        linear.update({n: b.abs() for n, b in run.model.named_buffers()
                       if b.is_floating_point() and not n.endswith("_mask")})
        total = sum(t.tensor().numel() for t in run.targets)
        current = {k: torch.ones_like(w, dtype=torch.bool) for k, w in run.tensors().items()}
        pruned_at = {k: torch.full(w.shape, math.inf, dtype=torch.float64, device=w.device)
                     for k, w in run.tensors().items()}
        last: dict[str, Tensor] = {}
        with self._progress(self.options.iterations, self.name) as bar:
            for rnd, d in enumerate(exponential_schedule(density, self.options.iterations), start=1):
                masks = {k: m.to(run.tensors()[k].dtype).requires_grad_(True) for k, m in current.items()}
                out = run.output_fn(run.forward(ones_in, masks, linear))
                keys = list(masks)
                grads = torch.autograd.grad(out.sum(), [masks[k] for k in keys], allow_unused=True)
                # dR/dm = |w| * dR/d(w_eff): the SynFlow score of every entry, pruned or not
                scores = {k: (torch.zeros_like(masks[k]) if g is None else g.detach().abs())
                          for k, g in zip(keys, grads)}
                for k in keys:
                    last[k] = torch.where(current[k], scores[k], last.get(k, scores[k]))
                # pruned entries stay pruned: rank them below every surviving one
                scores = {k: torch.where(current[k], s, torch.full_like(s, -1.0)) for k, s in scores.items()}
                new = global_topk(scores, max(1, round(d * total)))
                for k in keys:
                    pruned_at[k][current[k] & ~new[k]] = rnd
                    current[k] = current[k] & new[k]
                bar.update(1)
        peak = max(float(s.max()) for s in last.values()) or 1.0
        return {k: torch.where(torch.isinf(pruned_at[k]), float(self.options.iterations + 1), pruned_at[k])
                + 0.5 * last[k].double() / peak for k in last}


def _all_ones(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return torch.ones_like(inputs) if inputs.is_floating_point() else inputs
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_all_ones(x) for x in inputs)
    if isinstance(inputs, dict):
        return {k: _all_ones(v) for k, v in inputs.items()}
    return inputs
