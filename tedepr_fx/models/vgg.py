"""CIFAR-style VGG-11 (Simonyan & Zisserman 2015).

References
----------
.. [1] K. Simonyan and A. Zisserman, "Very deep convolutional networks for
   large-scale image recognition", ICLR 2015.
"""

from __future__ import annotations

import torch
from torch import nn

from tedepr_fx.models.lenet import _param_device

# configuration "A" of [1]: output channels, "M" = 2x2 max-pool
VGG11_CONFIG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M",
                                       512, 512, "M")


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class VGG11(nn.Module):
    """VGG-11 for 32x32 images [1]_: ``features`` (conv/BN/ReLU/max-pool) and one ``classifier`` Linear.

    As usual for CIFAR, the three fully connected layers of the ImageNet model are
    replaced by one ``Linear(512 * width, num_classes)`` on the 1x1 feature map.

    Parameters
    ----------
    in_channels
        Channels of the input images.
    num_classes
        Number of output logits.
    width
        Multiplier of every layer's channel count (1.0 is the original 64..512).
    batch_norm
        Put a BatchNorm2d after every convolution (the convolutions then have no bias).

    References
    ----------
    .. [1] K. Simonyan and A. Zisserman, "Very deep convolutional networks for
       large-scale image recognition", ICLR 2015.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                 batch_norm: bool = True):
        super().__init__()
        if width <= 0:
            raise ValueError(f"VGG11: width must be positive, got {width}")
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG11_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = _scaled(int(item), width)
            layers.append(nn.Conv2d(channels, out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())  # not in place: hooks that keep a module output see it unchanged
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        logits: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return logits

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A random input batch of shape ``(batch, in_channels, 32, 32)``."""
        return torch.randn(batch, self.in_channels, 32, 32, device=_param_device(self))
