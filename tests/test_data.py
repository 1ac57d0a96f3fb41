"""Data loading: the IDX parser, digits / (fashion-)MNIST / CIFAR-10 loaders, loaders and scoring batches."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tedepr_fx.data import (
    FASHION_MNIST_ROOT,
    load_dataset,
    make_loaders,
    read_idx,
    scoring_batches,
)
from tedepr_fx.errors import DataError

_CODES = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding written from the format description, independently of the parser."""
    header = struct.pack(">BBBB", 0, 0, _CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "int32", "float32"])
def test_idx_round_trip(tmp_path, gz, dtype):
    rng = np.random.default_rng(0)
    array = (rng.random((4, 3, 5)) * 200 - (0 if dtype == "uint8" else 100)).astype(dtype)
    path = write_idx(tmp_path / "a-idx3-ubyte", array, gz=gz)
    out = read_idx(path)
    assert out.dtype == array.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_idx_truncated_names_the_file(tmp_path):
    data = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    path = tmp_path / "cut-idx3-ubyte"
    path.write_bytes(data[:-7])
    with pytest.raises(DataError, match="cut-idx3-ubyte.*truncated"):
        read_idx(path)
    path.write_bytes(data[:6])  # inside the dimension list
    with pytest.raises(DataError, match="cut-idx3-ubyte.*truncated"):
        read_idx(path)
    gz = tmp_path / "cut.gz"
    gz.write_bytes(gzip.compress(data)[:-10])
    with pytest.raises(DataError, match="cut.gz"):
        read_idx(gz)


def test_idx_garbled_names_the_file(tmp_path):
    data = idx_bytes(np.zeros((2, 2), dtype=np.uint8))
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(b"\x12\x34" + data[2:])
    with pytest.raises(DataError, match="bad-idx1-ubyte.*not an IDX"):
        read_idx(path)
    path.write_bytes(data[:2] + b"\x07" + data[3:])  # unknown type code
    with pytest.raises(DataError, match="bad-idx1-ubyte"):
        read_idx(path)
    path.write_bytes(data + b"\x00\x00")
    with pytest.raises(DataError, match="bad-idx1-ubyte.*trailing"):
        read_idx(path)
    path.write_bytes(b"\x1f\x8b" + b"not really gzip")
    with pytest.raises(DataError, match="bad-idx1-ubyte.*gzip"):
        read_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="nothing-here"):
        read_idx(tmp_path / "nothing-here")


def fake_mnist(root: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> dict:
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 6, 6), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 6, 6), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    root.mkdir(exist_ok=True)
    for name, array in arrays.items():
        write_idx(root / (name + (".gz" if gz else "")), array, gz=gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_dir(tmp_path, gz):
    raw = fake_mnist(tmp_path / "mnist", gz=gz)
    data = load_dataset("mnist", tmp_path / "mnist")
    x, y = data.train.tensors
    assert x.shape == (30, 1, 6, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert data.test.tensors[0].shape == (10, 1, 6, 6) and data.input_shape == (1, 6, 6)
    assert data.num_classes == 10 and data.name == "mnist"
    # reference: standardise with numpy using the train split's statistics
    train = raw["train-images-idx3-ubyte"].astype(np.float64)
    mean, std = train.mean(), train.std(ddof=1)
    expected_test = (raw["t10k-images-idx3-ubyte"] - mean) / std
    np.testing.assert_allclose(data.test.tensors[0][:, 0].numpy(), expected_test, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), raw["train-labels-idx1-ubyte"])


def test_mnist_missing_file_names_directory_and_expected_files(tmp_path):
    fake_mnist(tmp_path / "m", gz=False)
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path / "m")
    message = str(info.value)
    assert str(tmp_path / "m") in message and "t10k-labels-idx1-ubyte" in message
    assert "train-images-idx3-ubyte" in message


def test_mnist_label_count_mismatch(tmp_path):
    fake_mnist(tmp_path / "m", gz=False)
    write_idx(tmp_path / "m" / "t10k-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path / "m")


def test_unknown_name_and_missing_root():
    with pytest.raises(DataError, match="imagenet.*digits.*fashion-mnist.*mnist.*cifar10"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="root"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="root"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", "/nonexistent/dir")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_shapes_and_normalisation(digits):
    from sklearn.datasets import load_digits

    x, y = digits.train.tensors
    assert x.shape == (1437, 1, 8, 8) and digits.test.tensors[0].shape == (360, 1, 8, 8)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-5
    # each test image is its raw scikit-learn image standardised with the train statistics
    raw = load_digits().images
    test_x = digits.test.tensors[0][:, 0].numpy() * digits.std[0] + digits.mean[0]
    matches = (np.abs(raw[None] - test_x[:, None]).max(axis=(2, 3)) < 1e-4).any(axis=1)
    assert matches.all()
    # the train split maps back to raw integer pixels with the same statistics
    train_x = x[:, 0].double().numpy() * digits.std[0] + digits.mean[0]
    np.testing.assert_allclose(train_x, np.round(train_x), atol=1e-4)  # raw pixels are integers
    assert np.isclose(np.concatenate([train_x, test_x]).sum(), raw.sum())  # the split covers all
    # stratified: each class has its share (about 36) of the 360 test images
    counts = torch.bincount(digits.test.tensors[1], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_deterministic_and_flatten(digits):
    again = load_dataset("digits", flatten=True)
    assert again.input_shape == (64,)
    torch.testing.assert_close(again.train.tensors[0], digits.train.tensors[0].flatten(1))
    assert torch.equal(again.test.tensors[1], digits.test.tensors[1])


def test_auto_prefers_fashion_mnist_then_digits(tmp_path, monkeypatch):
    from tedepr_fx import data as data_module

    fake_mnist(tmp_path / "fm")
    monkeypatch.setattr(data_module, "FASHION_MNIST_ROOT", tmp_path / "fm")
    found = load_dataset("auto")
    assert found.name == "fashion-mnist" and found.source == str(tmp_path / "fm")
    monkeypatch.setattr(data_module, "FASHION_MNIST_ROOT", tmp_path / "absent")
    assert load_dataset("auto").name == "digits"
    assert load_dataset("auto", tmp_path / "fm").name == "fashion-mnist"  # an explicit root wins


@pytest.mark.skipif(not FASHION_MNIST_ROOT.is_dir(), reason="fashion-mnist files not installed")
def test_fashion_mnist_real_test_split():
    images = read_idx(next(FASHION_MNIST_ROOT.glob("t10k-images-idx3-ubyte*")))
    labels = read_idx(next(FASHION_MNIST_ROOT.glob("t10k-labels-idx1-ubyte*")))
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert np.bincount(labels).tolist() == [1000] * 10  # the published test split is balanced


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_ROOT.is_dir(), reason="fashion-mnist files not installed")
def test_fashion_mnist_full_load():
    data = load_dataset("auto")
    assert data.name == "fashion-mnist" and len(data.train) == 60000 and len(data.test) == 10000
    assert data.input_shape == (1, 28, 28)
    assert abs(data.train.tensors[0].mean().item()) < 1e-4


def fake_cifar(root: Path, per_batch: int = 4, n_test: int = 3, skip: str | None = None) -> dict:
    rng = np.random.default_rng(2)
    root.mkdir(parents=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        # channel c of the raw image is offset by 50 c, to check the channel layout
        data = rng.integers(0, 100, (n, 3, 1024)) + 50 * np.arange(3)[None, :, None]
        batch = {b"data": data.reshape(n, 3072).astype(np.uint8),
                 b"labels": [int(v) for v in (np.arange(n) + i) % 10]}
        batches[name] = batch
        if name != skip:
            with (root / name).open("wb") as f:
                pickle.dump(batch, f)
    return batches


def test_cifar10_from_pickle_batches(tmp_path):
    raw = fake_cifar(tmp_path / "cifar-10-batches-py")
    data = load_dataset("cifar10", tmp_path)  # the parent directory works too
    x, y = data.train.tensors
    assert x.shape == (20, 3, 32, 32) and data.test.tensors[0].shape == (3, 3, 32, 32)
    assert data.input_shape == (3, 32, 32) and y.dtype == torch.int64
    train = np.concatenate([raw[f"data_batch_{k}"][b"data"] for k in range(1, 6)])
    train = train.reshape(20, 3, 32, 32).astype(np.float64)
    mean = train.mean(axis=(0, 2, 3))
    std = train.reshape(20, 3, -1).transpose(1, 0, 2).reshape(3, -1).std(axis=1, ddof=1)
    np.testing.assert_allclose(data.mean, mean, rtol=1e-5)
    test = raw["test_batch"][b"data"].reshape(3, 3, 32, 32)
    expected = (test - mean[None, :, None, None]) / std[None, :, None, None]
    np.testing.assert_allclose(data.test.tensors[0].numpy(), expected, rtol=1e-4, atol=1e-4)
    assert y.tolist() == [int(v) for k in range(1, 6) for v in raw[f"data_batch_{k}"][b"labels"]]


def test_cifar10_missing_batch_names_it(tmp_path):
    fake_cifar(tmp_path / "c", skip="test_batch")
    with pytest.raises(DataError, match="missing test_batch"):
        load_dataset("cifar10", tmp_path / "c")


def test_cifar10_garbled_batch_names_it(tmp_path):
    fake_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path / "c")


def test_make_loaders_are_seeded(digits):
    first = [next(iter(make_loaders(digits, batch_size=32, seed=s)[0]))[1] for s in (0, 0, 1)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])
    train, test = make_loaders(digits, batch_size=100)
    assert sum(len(b[1]) for b in train) == 1437
    assert torch.equal(torch.cat([b[1] for b in test]), digits.test.tensors[1])  # test not shuffled


def test_scoring_batches(digits):
    batches = scoring_batches(digits, n_batches=3, batch_size=50, seed=4)
    assert len(batches) == 3 and all(x.shape == (50, 1, 8, 8) and y.shape == (50,) for x, y in batches)
    again = scoring_batches(digits, n_batches=3, batch_size=50, seed=4)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    many = scoring_batches(digits, n_batches=12, batch_size=128)  # more than one pass over 1437
    assert len(many) == 12 and all(len(y) == 128 for _, y in many)
    with pytest.raises(ValueError, match="n_batches"):
        scoring_batches(digits, n_batches=0)


def test_scoring_batches_draw_without_replacement_within_a_pass():
    from torch.utils.data import TensorDataset

    from tedepr_fx.data import Dataset

    ids = torch.arange(100)
    toy = Dataset("toy", TensorDataset(ids, ids), TensorDataset(ids, ids), 100, (), "test", (0.0,),
                  (1.0,))
    drawn = torch.cat([x for x, _ in scoring_batches(toy, n_batches=3, batch_size=40, seed=1)])
    assert torch.equal(drawn[:100].sort().values, ids)  # the first pass is a permutation
    assert len(drawn) == 120 and len(set(drawn[100:].tolist())) == 20
