"""Local image datasets for the demo, the tests and the benchmarks; nothing is ever downloaded.

``load_dataset`` reads one of

- ``"digits"``: scikit-learn's 8x8 handwritten digits (1797 images, inside the
  scikit-learn wheel), split 1437 train / 360 test, stratified, fixed seed;
- ``"fashion-mnist"`` / ``"mnist"``: the standard IDX files (gzipped or not),
  parsed here with numpy (Xiao et al. 2017; LeCun et al. 1998);
- ``"cifar10"``: the ``cifar-10-batches-py`` pickle batches (Krizhevsky 2009);
- ``"auto"``: fashion-mnist when ``root`` is given or its default directory
  exists, else digits;

and returns train and test ``TensorDataset``s of float32 images ``(N, C, H, W)``,
standardised per channel with the *train* split's mean and standard deviation,
and int64 labels. Every problem with the files raises :class:`DataError` naming
the file (or the directory and the file names expected in it).
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from tedepr_fx.errors import DataError

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("auto", "digits", "fashion-mnist", "mnist", "cifar10")

# IDX type code -> big-endian numpy dtype (LeCun's IDX format description)
_IDX_DTYPES: dict[int, np.dtype[np.number]] = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: train and test splits plus what a model needs to know about them.

    Attributes
    ----------
    name
        Canonical name (``"digits"``, ``"fashion-mnist"``, ``"mnist"``, ``"cifar10"``).
    train, test
        ``TensorDataset(images float32, labels int64)``.
    num_classes
        Number of classes.
    input_shape
        Shape of one sample as stored: ``(C, H, W)``, or ``(C*H*W,)`` when loaded with ``flatten=True``.
    source
        Where the data came from (a directory, or ``sklearn.datasets.load_digits``).
    mean, std
        Per-channel train statistics used to standardise both splits.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


# ---------------------------------------------------------------------------- IDX


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, ValueError) as exc:
            raise DataError(f"{path}: corrupt gzip stream ({exc})") from exc
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzipped or not.

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then one
    big-endian uint32 per dimension; the data follow, big-endian, row-major.

    Parameters
    ----------
    path
        The file; gzip is detected from its content, not its name.

    Returns
    -------
    numpy.ndarray
        The array, in native byte order.

    Raises
    ------
    DataError
        Naming the file when it is missing, truncated, longer than its header
        says, or its header is not IDX.

    References
    ----------
    .. [1] Y. LeCun, C. Cortes and C. Burges, "The MNIST database of handwritten
       digits" (file format section), http://yann.lecun.com/exdb/mnist/.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no complete header)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated or garbled IDX header ({ndim} dimensions, "
                        f"{len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[raw[2]]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "garbled (trailing bytes)"
        raise DataError(f"{path}: {what} IDX file: header says shape {dims} "
                        f"({expected} data bytes), found {found}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def _find_idx(root: Path, base: str) -> Path:
    for candidate in (root / base, root / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    expected = [name for pair in _IDX_FILES.values() for name in pair]
    raise DataError(f"{root}: missing {base}[.gz]; the directory must hold the IDX files "
                    f"{', '.join(expected)} (each optionally .gz)")


def _load_idx_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find_idx(root, _IDX_FILES[split][0])
    labels_path = _find_idx(root, _IDX_FILES[split][1])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected 3 dimensions (N, H, W), got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_path}: expected {len(images)} labels (one per image in "
                        f"{images_path.name}), got shape {labels.shape}")
    return images[:, None], labels


# ---------------------------------------------------------------------------- CIFAR-10


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path.parent}: missing {path.name}; a cifar-10-batches-py directory "
                        f"holds {', '.join(_CIFAR_TRAIN)}, {_CIFAR_TEST}")
    try:
        with path.open("rb") as f:
            # the official batches are pickles written by Python 2; only open trusted files
            batch = pickle.load(f, encoding="bytes")
    except Exception as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 pickle batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict with 'data' and 'labels', got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: missing key 'data' or 'labels' (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"{path}: expected data (N, 3072) and N labels, got data {data.shape} "
                        f"and {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    parts = [_load_cifar_batch(root / name) for name in _CIFAR_TRAIN]
    x_test, y_test = _load_cifar_batch(root / _CIFAR_TEST)
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------------------- digits


def _load_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images[:, None].astype(np.float32)  # (1797, 1, 8, 8), values 0..16
    # 360 test images, stratified so every class keeps its share in both splits
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=360, stratify=digits.target, random_state=seed
    )
    return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------------------- public


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> torch.Tensor:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: labels must lie in [0, {num_classes}), "
                        f"found {labels.min()}..{labels.max()}")
    return torch.from_numpy(labels.astype(np.int64))


def _standardise(x_train: np.ndarray, x_test: np.ndarray, where: str
                 ) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...], tuple[float, ...]]:
    train = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    test = torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32))
    if train.shape[0] == 0:
        raise DataError(f"{where}: the train split is empty")
    std, mean = torch.std_mean(train, dim=(0, 2, 3))
    if not torch.all(std > 0):
        raise DataError(f"{where}: a channel of the train images is constant (std {std.tolist()})")
    shape = (1, -1, 1, 1)
    # in place: the Fashion-MNIST train split alone is 188 MB as float32
    train.sub_(mean.view(shape)).div_(std.view(shape))
    test.sub_(mean.view(shape)).div_(std.view(shape))
    return train, test, tuple(mean.tolist()), tuple(std.tolist())


def load_dataset(name: str = "auto", root: str | Path | None = None, *,
                 flatten: bool = False) -> Dataset:
    """Load a local image dataset as standardised train / test ``TensorDataset``s.

    Parameters
    ----------
    name
        ``"digits"``, ``"fashion-mnist"``, ``"mnist"``, ``"cifar10"`` or ``"auto"``
        (fashion-mnist from ``root`` when given or from :data:`FASHION_MNIST_ROOT`
        when it exists, else digits).
    root
        Directory of the files. Optional for fashion-mnist (default
        :data:`FASHION_MNIST_ROOT`), ignored for digits, required for mnist and
        cifar10 (for cifar10 either ``cifar-10-batches-py`` or its parent).
    flatten
        Store each image as a vector ``(C*H*W,)`` instead of ``(C, H, W)``.

    Returns
    -------
    Dataset
        Float32 images standardised per channel with the train split's
        statistics, int64 labels, and metadata.

    Raises
    ------
    DataError
        Unknown name (listing the valid ones), missing root, or missing,
        truncated or garbled files (naming the file).
    """
    key = name.lower().replace("_", "-")
    if key == "auto":
        key = "fashion-mnist" if root is not None or FASHION_MNIST_ROOT.is_dir() else "digits"
    if key == "fashionmnist":
        key = "fashion-mnist"
    if key not in DATASETS:
        raise DataError(f"unknown dataset name {name!r}; valid names: {', '.join(DATASETS)}")

    if key == "digits":
        x_train, y_train, x_test, y_test = _load_digits()
        source = "sklearn.datasets.load_digits"
    else:
        if root is None:
            if key != "fashion-mnist":
                raise DataError(f"dataset {key!r} needs root= (the directory of its files)")
            root = FASHION_MNIST_ROOT
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: dataset directory for {key!r} does not exist")
        source = str(root)
        if key == "cifar10":
            x_train, y_train, x_test, y_test = _load_cifar10(root)
        else:
            x_train, y_train = _load_idx_split(root, "train")
            x_test, y_test = _load_idx_split(root, "test")

    num_classes = 10
    train_y = _check_labels(y_train, num_classes, f"{source} (train labels)")
    test_y = _check_labels(y_test, num_classes, f"{source} (test labels)")
    train_x, test_x, mean, std = _standardise(x_train, x_test, source)
    if flatten:
        train_x, test_x = train_x.flatten(1), test_x.flatten(1)
    return Dataset(name=key, train=TensorDataset(train_x, train_y),
                   test=TensorDataset(test_x, test_y), num_classes=num_classes,
                   input_shape=tuple(train_x.shape[1:]), source=source, mean=mean, std=std)


def make_loaders(dataset: Dataset, batch_size: int = 128, seed: int = 0
                 ) -> tuple[DataLoader[tuple[torch.Tensor, ...]],
                            DataLoader[tuple[torch.Tensor, ...]]]:
    """Train and test loaders; the train loader reshuffles each epoch from a generator seeded by ``seed``.

    Two calls with the same ``seed`` yield the same batches in the same order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(dataset.train, batch_size=batch_size, shuffle=True, generator=generator)
    test = DataLoader(dataset.test, batch_size=batch_size, shuffle=False)
    return train, test


def scoring_batches(dataset: Dataset, n_batches: int = 10, batch_size: int = 128, seed: int = 0
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` seeded random batches of the train split, for the data-driven scorers.

    Batches draw without replacement within each pass over the split and start a
    fresh permutation when more samples are needed than the split holds.
    """
    if n_batches < 1 or batch_size < 1:
        raise ValueError(f"n_batches and batch_size must be >= 1, got {n_batches} and {batch_size}")
    x, y = dataset.train.tensors
    generator = torch.Generator().manual_seed(seed)
    needed = n_batches * batch_size
    order = torch.cat([torch.randperm(len(x), generator=generator)
                       for _ in range(-(-needed // len(x)))])[:needed]
    # torch's Tensor.split is unannotated in torch/_tensor.py
    return [(x[idx], y[idx]) for idx in order.split(batch_size)]  # type: ignore[no-untyped-call]
