"""The suite's data: one local data set, cut to the suite's subsets, shaped for each model.

``--data`` names a data set of :func:`tedepr_fx.data.load_dataset` (``auto``:
Fashion-MNIST from Debian's ``dataset-fashion-mnist`` when installed, else the 8x8
digits inside scikit-learn) or a directory: CIFAR-10's python batches, or IDX files
(MNIST, or Fashion-MNIST when the directory's path says ``fashion``).

Image sizes (the models' ``geometry``):

* ``native``: as stored (28x28 for (Fashion-)MNIST, 8x8 for digits, 32x32 for CIFAR-10);
* ``classic``: native when the side is at least 28 (LeNet-5's own setting), else as ``32x32``;
* ``32x32``: a 28x28 image is padded by 2 pixels on each side with the value of a raw
  black pixel (0 before standardisation, the background of (Fashion-)MNIST), an 8x8
  digit is enlarged 4x by nearest-neighbour repetition, and a 32x32 image is left as is.

Subsets are the first ``n`` images of a permutation seeded with 0, the same for every
cell, so that every method and seed trains on the same images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from tedepr_fx.bench.zoo import CLASSIC, NATIVE, SIDE32
from tedepr_fx.data import DATASETS, Dataset, load_dataset
from tedepr_fx.errors import DataError

SUBSET_SEED = 0


def load_suite_data(data: str, *, real_data: bool) -> Dataset:
    """The data set ``--data`` names; with ``real_data`` the digits set is refused.

    Raises
    ------
    DataError
        Missing or unreadable files, an unknown name, or digits where ``real_data``.
    """
    name, root = _resolve(data)
    if real_data and name == "auto":
        from tedepr_fx.data import FASHION_MNIST_ROOT

        if not FASHION_MNIST_ROOT.is_dir():
            raise DataError(
                f"the paper suite needs real data: Fashion-MNIST was not found at {FASHION_MNIST_ROOT} "
                "(install Debian's dataset-fashion-mnist package) and the 8x8 digits fallback is only "
                "for the quick suite; or pass --data DIR with MNIST/Fashion-MNIST IDX files or "
                "CIFAR-10's python batches")
    if real_data and name == "digits":
        raise DataError("the paper suite needs real data (Fashion-MNIST, MNIST or CIFAR-10); "
                        "the 8x8 digits set is only for the quick suite")
    return load_dataset(name, root)


def _resolve(data: str) -> tuple[str, Path | None]:
    key = data.lower().replace("_", "-")
    if key in DATASETS or key == "fashionmnist":
        return key, None
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"--data {data!r} is neither a data set name ({', '.join(DATASETS)}) "
                        "nor a directory")
    if (root / "cifar-10-batches-py").is_dir() or (root / "data_batch_1").is_file():
        return "cifar10", root
    return ("fashion-mnist" if "fashion" in str(root.resolve()).lower() else "mnist"), root


def subset(data: Dataset, train: int | None, test: int | None) -> Dataset:
    """``data`` with at most ``train`` / ``test`` images per split (a fixed seeded subset)."""
    return dataclasses.replace(data, train=_take(data.train, train), test=_take(data.test, test))


def _take(split: TensorDataset, n: int | None) -> TensorDataset:
    x, y = split.tensors
    if n is None or n >= len(x):
        return split
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SUBSET_SEED))[:n]
    return TensorDataset(x[order], y[order])


def target_side(side: int, geometry: str) -> int:
    """The side of the images a model of ``geometry`` reads, for stored images of ``side``."""
    if geometry == NATIVE or (geometry == CLASSIC and side >= 28):
        return side
    if geometry in (CLASSIC, SIDE32):
        return 32
    raise ValueError(f"unknown geometry {geometry!r}")


def reshape_images(data: Dataset, geometry: str) -> Dataset:
    """``data`` with its images brought to the size a model of ``geometry`` reads.

    Raises
    ------
    DataError
        Images that are not square, or whose side cannot be brought to 32 by padding
        (sides 24 to 32) or by an integer enlargement.
    """
    if len(data.input_shape) != 3:
        raise DataError(f"the suite needs images (C, H, W); {data.name} has samples {data.input_shape}")
    _, height, width = data.input_shape
    if height != width:
        raise DataError(f"the suite needs square images; {data.name} has {height}x{width}")
    side = target_side(width, geometry)
    if side == width:
        return data
    background = tuple(-m / s for m, s in zip(data.mean, data.std))  # a raw 0 pixel, standardised
    train = _resize(data.train.tensors[0], side, background)
    test = _resize(data.test.tensors[0], side, background)
    return dataclasses.replace(data, train=TensorDataset(train, data.train.tensors[1]),
                               test=TensorDataset(test, data.test.tensors[1]),
                               input_shape=tuple(train.shape[1:]))


def _resize(x: torch.Tensor, side: int, background: tuple[float, ...]) -> torch.Tensor:
    n, channels, height, _ = x.shape
    if side - 8 <= height < side:
        top = (side - height) // 2
        out = torch.tensor(background, dtype=x.dtype).view(1, channels, 1, 1)
        out = out.expand(n, channels, side, side).clone()
        out[:, :, top:top + height, top:top + height] = x
        return out
    if side % height == 0:
        factor = side // height
        return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    raise DataError(f"cannot bring {height}x{height} images to {side}x{side} "
                    "(pad by at most 8 pixels, or enlarge by an integer factor)")
