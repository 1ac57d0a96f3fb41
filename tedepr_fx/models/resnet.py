"""CIFAR ResNet-20 (He et al. 2016).

References
----------
.. [1] K. He, X. Zhang, S. Ren and J. Sun, "Deep residual learning for image
   recognition", CVPR 2016, section 4.2 (the CIFAR-10 networks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tedepr_fx.models.lenet import _param_device


class BasicBlock(nn.Module):
    """Two 3x3 conv/BN layers with an identity or 1x1-conv/BN ``shortcut`` [1]_.

    Parameters
    ----------
    in_planes, planes
        Input and output channels.
    stride
        Stride of ``conv1``; the shortcut is a projection whenever the shape changes.

    References
    ----------
    .. [1] K. He et al., "Deep residual learning for image recognition", CVPR 2016.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            # option B of [1]: a projection shortcut when the shape changes
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 images [1]_: a stem, three stages of three ``BasicBlock``s, ``fc``.

    Stage widths are ``width, 2 width, 4 width`` (16, 32, 64 in [1]); stages 2 and 3
    start with stride 2. About 0.27 M parameters at the default width.

    Parameters
    ----------
    num_classes
        Number of output logits.
    width
        Channels of the stem and first stage.
    in_channels
        Channels of the input images.

    References
    ----------
    .. [1] K. He et al., "Deep residual learning for image recognition", CVPR 2016.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 3):
        super().__init__()
        if width < 1:
            raise ValueError(f"ResNet20: width must be a positive int, got {width}")
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._stage(width, width, stride=1)
        self.layer2 = self._stage(width, 2 * width, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He initialisation, as in [1]
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes),
                             BasicBlock(planes, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        logits: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return logits

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A random input batch of shape ``(batch, in_channels, 32, 32)``."""
        return torch.randn(batch, self.in_channels, 32, 32, device=_param_device(self))
