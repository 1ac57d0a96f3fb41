"""Models that compute with ``torch.nn.functional`` on their own parameters (no nn.Linear / nn.Conv2d).

They check that capture finds layers written as ``F.linear(x, self.w1, self.b1)``
or ``F.conv2d(x, self.weight, ...)`` calls, as user code often does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tedepr_fx.models.lenet import _param_device


def _linear_params(out_features: int, in_features: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Weight and bias initialised as ``nn.Linear`` does (He et al. 2015 uniform, a = sqrt(5))."""
    weight = nn.Parameter(torch.empty(out_features, in_features))
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    bound = 1.0 / math.sqrt(in_features)
    bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
    return weight, bias


class FunctionalMLP(nn.Module):
    """A two-layer perceptron on raw parameters ``w1, b1, w2, b2`` via ``F.linear``.

    Same function as ``Linear(in, hidden) -> ReLU -> Linear(hidden, classes)``
    (LeCun et al. 1998 style MLP); inputs are flattened after the batch dimension.

    Parameters
    ----------
    in_features, hidden, num_classes
        Layer widths.

    References
    ----------
    .. [1] Y. LeCun et al., "Gradient-based learning applied to document
       recognition", Proc. IEEE 86(11), 1998.
    """

    def __init__(self, in_features: int = 64, hidden: int = 128, num_classes: int = 10):
        super().__init__()
        self.in_features = in_features
        self.w1, self.b1 = _linear_params(hidden, in_features)
        self.w2, self.b2 = _linear_params(num_classes, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.linear(torch.flatten(x, 1), self.w1, self.b1))
        return F.linear(x, self.w2, self.b2)

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A random input batch of shape ``(batch, in_features)``."""
        return torch.randn(batch, self.in_features, device=_param_device(self))


class ConvFunctional(nn.Module):
    """One 3x3 ``F.conv2d`` on ``weight``/``bias``, ReLU, 2x2 max-pool, global average pool, ``F.linear`` head.

    A minimal LeCun-style convolutional classifier whose layers are functional calls.

    Parameters
    ----------
    in_channels, channels, num_classes
        Input channels, convolution channels, number of logits.
    image_size
        Side of the square input of :meth:`example_input` (the model accepts any size >= 2).

    References
    ----------
    .. [1] Y. LeCun et al., "Gradient-based learning applied to document
       recognition", Proc. IEEE 86(11), 1998.
    """

    def __init__(self, in_channels: int = 3, channels: int = 16, num_classes: int = 10,
                 image_size: int = 32):
        super().__init__()
        self.in_channels = in_channels
        self.image_size = image_size
        self.weight = nn.Parameter(torch.empty(channels, in_channels, 3, 3))
        # same init as nn.Conv2d
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(in_channels * 9)
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound))
        self.head_weight, self.head_bias = _linear_params(num_classes, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(x, self.weight, self.bias, stride=1, padding=1))
        x = F.adaptive_avg_pool2d(F.max_pool2d(x, 2), 1).flatten(1)
        return F.linear(x, self.head_weight, self.head_bias)

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A random input batch of shape ``(batch, in_channels, image_size, image_size)``."""
        return torch.randn(batch, self.in_channels, self.image_size, self.image_size,
                           device=_param_device(self))
