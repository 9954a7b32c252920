"""Dataset readers (IDX, CIFAR-10 batches, SVHN .mat), the embedded subset and the dataset plugin."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

import relaxlab
from relaxlab.data.datasets import BUILTIN_DATASETS, DatasetNotFoundError, relaxlab_datasets
from relaxlab.data.readers import (
    DataFormatError,
    read_cifar10,
    read_idx,
    read_svhn_mat,
    write_idx,
)


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_round_trip_plain_and_gzip(tmp_path: Path, name: str) -> None:
    array = _images(7, (5, 4))
    write_idx(tmp_path / name, array)
    raw = (tmp_path / name).read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(tmp_path / name)
    assert back.shape == (7, 5, 4) and back.dtype == np.uint8
    assert np.array_equal(back, array)


def test_idx_header_is_big_endian_by_hand(tmp_path: Path) -> None:
    # 2 labels written byte by byte: magic 0,0,8,1; size 2 big-endian; data 3, 9.
    (tmp_path / "labels").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 2) + bytes([3, 9]))
    assert read_idx(tmp_path / "labels").tolist() == [3, 9]


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x01\x00\x08\x01" + struct.pack(">i", 1) + b"\x00", "bad magic"),
        (b"\x00\x00\x42\x01" + struct.pack(">i", 1) + b"\x00", "unknown IDX dtype"),
        (b"\x00\x00\x08\x03" + struct.pack(">i", 2), "truncated IDX header"),
        (b"\x00\x00\x08\x01" + struct.pack(">i", 5) + b"\x00\x01", "holds 2 bytes"),
    ],
)
def test_idx_refuses_bad_files(tmp_path: Path, payload: bytes, message: str) -> None:
    (tmp_path / "bad").write_bytes(payload)
    with pytest.raises(DataFormatError, match=message):
        read_idx(tmp_path / "bad")


def test_idx_refuses_corrupt_gzip(tmp_path: Path) -> None:
    good = gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">i", 100) + bytes(100))
    (tmp_path / "bad.gz").write_bytes(good[:20])
    with pytest.raises(DataFormatError, match="corrupt gzip"):
        read_idx(tmp_path / "bad.gz")


def _write_mnist_dir(directory: Path, n_train: int = 12, n_test: int = 6, gz: bool = True) -> np.ndarray:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    train = _images(n_train, (28, 28), seed=1)
    write_idx(directory / f"train-images-idx3-ubyte{suffix}", train)
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", (np.arange(n_train) % 10).astype(np.uint8))
    write_idx(directory / f"t10k-images-idx3-ubyte{suffix}", _images(n_test, (28, 28), seed=2))
    write_idx(directory / f"t10k-labels-idx1-ubyte{suffix}", (np.arange(n_test) % 10).astype(np.uint8))
    return train


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_dataset_from_a_named_directory(tmp_path: Path, gz: bool) -> None:
    train = _write_mnist_dir(tmp_path / "m", gz=gz)
    dataset = relaxlab.get_registry().datasets["mnist"]
    x, y = dataset.load("train", tmp_path / "m")
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [i % 10 for i in range(12)]
    assert torch.equal(x[:, 0], torch.from_numpy(train).float() / 255)  # pixel range [0, 1]
    xt, _ = relaxlab.get_registry().datasets["fashion-mnist"].load("test", tmp_path / "m")
    assert xt.shape == (6, 1, 28, 28)


def test_missing_files_name_the_dataset_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        relaxlab.get_registry().datasets["fashion-mnist"].load("train", tmp_path)
    text = str(info.value)
    assert (
        "'fashion-mnist'" in text and "apt-get install dataset-fashion-mnist" in text and "--data-dir" in text
    )


def test_unknown_split_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown split 'val'"):
        relaxlab.get_registry().datasets["mnist-mini"].load("val")


def test_cifar10_python_batches(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    rng = np.random.default_rng(0)
    batches = []
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=4)]
        (directory / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels, b"batch_label": b"x"}))
        batches.append((data, labels))
    x, y = read_cifar10(directory, "train")
    assert x.shape == (8, 3, 32, 32)
    assert y.tolist() == batches[0][1] + batches[1][1]
    # channel-major rows: the first 1024 values are the red plane
    assert torch.equal(x[0, 0], torch.from_numpy(batches[0][0][0, :1024].reshape(32, 32)).float() / 255)
    xt, _ = relaxlab.get_registry().datasets["cifar10"].load("test", tmp_path)
    assert xt.shape == (4, 3, 32, 32)


def test_cifar_reader_refuses_code_in_pickles(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataFormatError, match="refusing to unpickle"):
        read_cifar10(tmp_path, "test")


def test_svhn_mat_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(32, 32, 3, 5), dtype=np.uint8)
    labels = np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": images, "y": labels})
    x, y = read_svhn_mat(tmp_path / "test_32x32.mat")
    assert x.shape == (5, 3, 32, 32)
    assert y.tolist() == [0, 1, 2, 0, 9]  # SVHN's 10 means the digit 0
    assert torch.equal(x[2, 1], torch.from_numpy(images[:, :, 1, 2]).float() / 255)
    xs, _ = relaxlab.get_registry().datasets["svhn"].load("test", tmp_path)
    assert xs.shape == (5, 3, 32, 32)


def test_svhn_refuses_wrong_variables(tmp_path: Path) -> None:
    scipy.io.savemat(tmp_path / "bad.mat", {"images": np.zeros((2, 2))})
    with pytest.raises(DataFormatError, match="needs variables 'X' and 'y'"):
        read_svhn_mat(tmp_path / "bad.mat")


def test_embedded_mnist_mini() -> None:
    dataset = relaxlab.get_registry().datasets["mnist-mini"]
    x, y = dataset.load("train")
    assert x.shape == (4000, 1, 28, 28)
    assert torch.bincount(y, minlength=10).tolist() == [400] * 10
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    xt, yt = dataset.load("test")
    assert xt.shape == (1000, 1, 28, 28) and set(yt.tolist()) == set(range(10))
    # the test images are not training images
    assert not any(torch.equal(xt[i], x[j]) for i in range(5) for j in range(4000))
    files = list((Path(relaxlab.__file__).parent / "data" / "embedded").glob("*.gz"))
    assert sum(f.stat().st_size for f in files) < 1.5e6


def test_dataset_plugin_values() -> None:
    names = [d.name for d in relaxlab_datasets()]
    assert names == ["mnist-mini", "mnist", "fashion-mnist", "cifar10", "svhn"]
    for dataset in BUILTIN_DATASETS:
        assert len(dataset.mean) == dataset.input_shape[0] == len(dataset.std)
    with pytest.raises(LookupError, match="did you mean 'mnist'"):
        relaxlab.get_registry().datasets["mnistt"]


def test_a_failed_download_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error
    import urllib.request

    from relaxlab.data.download import DownloadError, download

    def offline(*_args: object, **_kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DownloadError) as info:
        download("fashion-mnist", tmp_path)
    text = str(info.value)
    assert "'fashion-mnist'" in text and "train-images-idx3-ubyte.gz" in text and "--data-dir" in text
    assert not list((tmp_path / "fashion-mnist").iterdir())  # no partial file left behind
    with pytest.raises(DownloadError, match="no download source for dataset 'mnist-mini'"):
        download("mnist-mini", tmp_path)


def test_the_first_n_images_and_counts_that_are_not_counts(tmp_path: Path) -> None:
    dataset = relaxlab.get_registry().datasets["mnist-mini"]
    x, y = dataset.load("test")
    first, labels = dataset.load("test", n=7)
    assert torch.equal(first, x[:7]) and torch.equal(labels, y[:7])
    assert dataset.load("test", n=0)[0].shape == x.shape  # 0: all, as --n 0 and [certify] n = 0
    for bad in (-5, True, 2.5):
        with pytest.raises(ValueError, match="n must be a count of images"):
            dataset.load("test", n=bad)  # type: ignore[arg-type]


def test_datasets_are_probed_only_in_documented_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where relaxlab looks for files is configurable ($RELAXLAB_DATA first) and documented: no
    machine-specific temporary directory."""
    docs = (Path(__file__).resolve().parents[3] / "docs" / "training.md").read_text()
    for dataset in BUILTIN_DATASETS:
        for directory in dataset.default_dirs:
            assert not directory.startswith(("/tmp", "/var/tmp")), (dataset.name, directory)
            assert f"`{directory}`" in docs, (dataset.name, directory)
    _write_mnist_dir(tmp_path / "data" / "mnist")
    monkeypatch.setenv("RELAXLAB_DATA", str(tmp_path / "data"))
    x, _ = relaxlab.get_registry().datasets["mnist"].load("train")
    assert x.shape == (12, 1, 28, 28)
