"""The suite's six models, each paired with its shipped policy and the image size it reads.

Widths are chosen to train on a CPU in minutes per cell, not to match the papers'
full-size networks:

========== =================================================== ============ ===========
name       model                                               policy       input
========== =================================================== ============ ===========
lenet300100 LeNet-300-100 (``in -> 300 -> 100 -> 10``)          lenet        native, flat
lenet5     LeNet-5 (6 and 16 5x5 conv channels, 120-84-10)      lenet5       classic
vgg        VGG-11 with batch norm at 3/8 width (24..192 ch.)    vgg          32x32
resnet     ResNet-20 at half width (8, 16, 32 channels)         resnet       32x32
vit        ViT: 4x4 patches, dim 64, depth 2, 4 heads, MLP 128  vit          32x32
lstm       LSTM (hidden 128) reading the image row by row       lstm         native rows
========== =================================================== ============ ===========

At 3/8 width the four widest VGG convs hold at least 150,000 weights each, the
ones ``vgg.yaml`` factorizes (Tucker); the others are pruned under the same budget.
Input sizes are
described in :mod:`tedepr_fx.bench.datasets`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from tedepr_fx.models import VGG11, LeNet5, LeNet300100, LSTMClassifier, ResNet20, ViT

#: input geometries (see :func:`tedepr_fx.bench.datasets.reshape_images`)
NATIVE, CLASSIC, SIDE32 = "native", "classic", "32x32"

VGG_WIDTH = 0.375
RESNET_WIDTH = 8
LSTM_HIDDEN = 128


@dataclass(frozen=True)
class SuiteModel:
    """One model of the suite.

    Attributes
    ----------
    name
        Key in :data:`SUITE_MODELS` and in the records.
    title
        Name in tables and plots.
    policy
        Shipped policy (:func:`tedepr_fx.policies.path`) TEDEPR and low-rank read.
    geometry
        Image size the model reads: ``"native"``, ``"classic"`` or ``"32x32"``.
    factory
        ``factory(channels, side, classes)``: the dense model for images of that shape.
    """

    name: str
    title: str
    policy: str
    geometry: str
    factory: Callable[[int, int, int], nn.Module]

    def build(self, shape: tuple[int, ...], classes: int) -> nn.Module:
        """The dense model for images ``shape = (C, H, W)`` (call under ``torch.manual_seed``)."""
        channels, side = shape[0], shape[-1]
        return self.factory(channels, side, classes)

    def describe(self, shape: tuple[int, ...], classes: int) -> str:
        """The constructor call that builds the model, for the records."""
        channels, side = shape[0], shape[-1]
        return _DESCRIPTIONS[self.name].format(c=channels, s=side, k=classes, f=channels * side * side,
                                               vgg=VGG_WIDTH, res=RESNET_WIDTH, h=LSTM_HIDDEN)


_DESCRIPTIONS = {
    "lenet300100": "LeNet300100(in_features={f}, num_classes={k})",
    "lenet5": "LeNet5(in_channels={c}, num_classes={k}, image_size={s})",
    "vgg": "VGG11(in_channels={c}, num_classes={k}, width={vgg})",
    "resnet": "ResNet20(num_classes={k}, width={res}, in_channels={c})",
    "vit": "ViT(image_size={s}, patch_size=4, in_channels={c}, num_classes={k}, dim=64, depth=2, "
           "heads=4, mlp_dim=128)",
    "lstm": "LSTMClassifier(input_size={s}, hidden_size={h}, num_classes={k}, seq_len={c}*{s})",
}


def _lstm(c: int, s: int, k: int) -> nn.Module:
    # every image row (of every channel) is one time step of `s` features
    return LSTMClassifier(input_size=s, hidden_size=LSTM_HIDDEN, num_classes=k, seq_len=c * s)


SUITE_MODELS: dict[str, SuiteModel] = {m.name: m for m in (
    SuiteModel("lenet300100", "LeNet-300-100", "lenet", NATIVE,
               lambda c, s, k: LeNet300100(in_features=c * s * s, num_classes=k)),
    SuiteModel("lenet5", "LeNet-5", "lenet5", CLASSIC,
               lambda c, s, k: LeNet5(in_channels=c, num_classes=k, image_size=s)),
    SuiteModel("vgg", "VGG-11 (3/8 width)", "vgg", SIDE32,
               lambda c, s, k: VGG11(in_channels=c, num_classes=k, width=VGG_WIDTH)),
    SuiteModel("resnet", "ResNet-20 (half width)", "resnet", SIDE32,
               lambda c, s, k: ResNet20(num_classes=k, width=RESNET_WIDTH, in_channels=c)),
    SuiteModel("vit", "ViT (dim 64, depth 2)", "vit", SIDE32,
               lambda c, s, k: ViT(image_size=s, patch_size=4, in_channels=c, num_classes=k, dim=64,
                                   depth=2, heads=4, mlp_dim=128)),
    SuiteModel("lstm", "LSTM (row by row)", "lstm", NATIVE, _lstm),
)}
