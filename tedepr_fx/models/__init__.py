"""The model zoo used by the tests, the demo and the benchmarks (no torchvision needed).

Every model is a plain ``nn.Module`` with CPU-sized defaults, deterministic given
``torch.manual_seed``, and has an ``example_input(batch=2)`` method returning a
random batch of the shape it expects (on the device of its parameters), e.g.::

    model = tedepr_fx.models.resnet20()
    x = model.example_input(4)          # (4, 3, 32, 32)

``FACTORIES`` maps a short name to a zero-argument factory; each factory is also
a module-level function, so the CLI can load ``tedepr_fx.models:resnet20``.
Attribute names (``fc1``, ``features``, ``layer1.0.conv1``, ``encoder.layers.0.linear1``...)
are part of the interface: shipped rule files select layers by them.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from tedepr_fx.models.functional import ConvFunctional, FunctionalMLP
from tedepr_fx.models.lenet import LeNet5, LeNet300100
from tedepr_fx.models.lstm import LSTMClassifier
from tedepr_fx.models.resnet import BasicBlock, ResNet20
from tedepr_fx.models.vgg import VGG11
from tedepr_fx.models.vit import TinyTransformer, ViT, vit_b16


def lenet300100() -> LeNet300100:
    """LeNet-300-100 for 28x28 single-channel images (784 features), 10 classes."""
    return LeNet300100()


def lenet5() -> LeNet5:
    """LeNet-5 for 1x28x28 images, 10 classes."""
    return LeNet5()


def vgg11() -> VGG11:
    """VGG-11 with batch norm for 3x32x32 images, 10 classes."""
    return VGG11()


def resnet20() -> ResNet20:
    """ResNet-20 for 3x32x32 images, 10 classes."""
    return ResNet20()


def vit() -> ViT:
    """A small ViT (dim 64, depth 2, 4 heads) for 3x32x32 images with 4x4 patches, 10 classes."""
    return ViT()


def lstm() -> LSTMClassifier:
    """An LSTM (64 -> 128) classifier over (N, 8, 64) sequences, 10 classes."""
    return LSTMClassifier()


def functional_mlp() -> FunctionalMLP:
    """A 64 -> 128 -> 10 perceptron written with ``F.linear``."""
    return FunctionalMLP()


def conv_functional() -> ConvFunctional:
    """A one-conv classifier written with ``F.conv2d`` / ``F.linear`` for 3x32x32 images."""
    return ConvFunctional()


def tiny_transformer() -> TinyTransformer:
    """A one-layer Transformer (dim 32) over (N, 8, 16) sequences, 10 classes."""
    return TinyTransformer()


FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "lenet300100": lenet300100,
    "lenet5": lenet5,
    "vgg11": vgg11,
    "resnet20": resnet20,
    "vit": vit,
    "vit_b16": vit_b16,
    "lstm": lstm,
    "functional_mlp": functional_mlp,
    "conv_functional": conv_functional,
    "tiny_transformer": tiny_transformer,
}

__all__ = [
    "FACTORIES", "BasicBlock", "ConvFunctional", "FunctionalMLP", "LSTMClassifier", "LeNet5",
    "LeNet300100", "ResNet20", "TinyTransformer", "VGG11", "ViT", "conv_functional",
    "functional_mlp", "lenet5", "lenet300100", "lstm", "resnet20", "tiny_transformer", "vgg11",
    "vit", "vit_b16",
]
