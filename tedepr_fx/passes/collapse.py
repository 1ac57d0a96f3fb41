"""The collapse check: after masking, does a layer still pass information through?

A chain of factors with one dead factor is a dead layer, and a rank-1 bottleneck makes
every output a multiple of one feature. Both can come out of an extreme budget without
any error, and training cannot repair them: the masks are fixed. This check reads the
layer's effective (masked) weight; it costs a few passes over the weight, no SVD.

Example
-------
>>> import torch
>>> from torch import nn
>>> from tedepr_fx.layers.masked import MaskedLinear
>>> layer = MaskedLinear.from_linear(nn.Linear(6, 4))
>>> check_collapse(layer) is None
True
>>> layer.set_mask("weight", torch.zeros(4, 6, dtype=torch.bool))
>>> check_collapse(layer)
'collapsed: the effective weight is zero'
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from tedepr_fx.layers.masked import Accounting

DEAD = "collapsed: the effective weight is zero"
RANK_ONE = "collapsed: effective rank 1 (every output is a multiple of one feature)"


def at_most_rank_one(matrix: torch.Tensor, rtol: float = 1e-9) -> bool:
    """Whether every row of ``matrix`` is a multiple of its largest row (numerical rank <= 1).

    The residual of the projection of each row on the largest one is zero exactly when
    the rows are all parallel; ``rtol`` is relative to the matrix's norm (float64).
    """
    m = matrix.detach().to(torch.float64)
    norms = m.norm(dim=1)
    top = m[int(norms.argmax())]
    scale = float(top.dot(top))
    if scale == 0.0:
        return True
    residual = m - torch.outer(m @ top / scale, top)
    return float(residual.norm()) <= rtol * float(m.norm())


def check_collapse(module: nn.Module) -> str | None:
    """:data:`DEAD` for a layer whose effective weight is zero, :data:`RANK_ONE` for a
    matrix or kernel of rank 1 whose shape allows more (as ``(first dim, rest)``), else None.

    Meta-device layers (``plan``) are not checked: they have no values.
    """
    with torch.no_grad():
        weight = cast(Accounting, module).to_dense()
    if weight.device.type == "meta":
        return None
    if not bool(weight.ne(0).any()):
        return DEAD
    if weight.dim() >= 2 and min(weight.shape[0], weight[0].numel()) > 1:
        if at_most_rank_one(weight.reshape(weight.shape[0], -1)):
            return RANK_ONE
    return None
