"""LeNet-300-100 and LeNet-5 (LeCun et al. 1998), the paper's MNIST models.

References
----------
.. [1] Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning
   applied to document recognition", Proc. IEEE 86(11), 1998.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _param_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (so ``example_input`` follows ``.to`` and meta)."""
    return next(module.parameters()).device


class LeNet300100(nn.Module):
    """LeNet-300-100: a three-layer perceptron ``in -> 300 -> 100 -> classes`` [1]_.

    Accepts images ``(N, C, H, W)`` (flattened) or vectors ``(N, in_features)``.

    Parameters
    ----------
    in_features
        Number of input features (784 for 28x28 MNIST, 64 for 8x8 digits).
    num_classes
        Number of output logits.

    References
    ----------
    .. [1] Y. LeCun et al., "Gradient-based learning applied to document
       recognition", Proc. IEEE 86(11), 1998.

    Examples
    --------
    >>> model = LeNet300100(in_features=64)
    >>> model(model.example_input(3)).shape
    torch.Size([3, 10])
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10):
        super().__init__()
        self.in_features = in_features
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        logits: torch.Tensor = self.fc3(x)
        return logits

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A random input batch of shape ``(batch, in_features)``."""
        return torch.randn(batch, self.in_features, device=_param_device(self))


class LeNet5(nn.Module):
    """LeNet-5 [1]_: two 5x5 conv + max-pool stages and three fully connected layers.

    ``conv1`` is padded by 2 so that a 28x28 input gives the classic 16x5x5
    feature map before ``fc1``; ``fc1``'s width is computed from ``image_size``.

    Parameters
    ----------
    in_channels
        Channels of the input images.
    num_classes
        Number of output logits.
    image_size
        Height (= width) of the square input images; at least 12.

    References
    ----------
    .. [1] Y. LeCun et al., "Gradient-based learning applied to document
       recognition", Proc. IEEE 86(11), 1998.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        # conv1 keeps the size (padding 2), pool halves, conv2 (5x5, no padding) removes 4, pool halves
        side = (image_size // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"LeNet5: image_size must be at least 12, got {image_size}")
        self.in_channels = in_channels
        self.image_size = image_size
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        logits: torch.Tensor = self.fc3(x)
        return logits

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A random input batch of shape ``(batch, in_channels, image_size, image_size)``."""
        return torch.randn(batch, self.in_channels, self.image_size, self.image_size,
                           device=_param_device(self))
