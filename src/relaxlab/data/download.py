"""Optional download of the standard dataset files for users who are online.

relaxlab never downloads on its own: call :func:`download` (or ``relaxlab train --download``)
explicitly. When the files cannot be fetched the error names the dataset, the URL and what to
do instead (where to put manually obtained files).
"""

from __future__ import annotations

import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

_MNIST_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

#: dataset name -> list of (url, file name).
SOURCES: dict[str, list[tuple[str, str]]] = {
    "mnist": [(f"https://ossci-datasets.s3.amazonaws.com/mnist/{n}", n) for n in _MNIST_NAMES],
    "fashion-mnist": [
        (f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{n}", n) for n in _MNIST_NAMES
    ],
    "cifar10": [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz")],
    "svhn": [
        ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "train_32x32.mat"),
        ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "test_32x32.mat"),
    ],
}


class DownloadError(RuntimeError):
    """A dataset could not be fetched; the message says what to do instead."""


def download(name: str, directory: str | os.PathLike[str], *, timeout: float = 60.0) -> Path:
    """Fetch the files of dataset ``name`` into ``directory/name`` (skipping files already there).

    :param name: ``mnist``, ``fashion-mnist``, ``cifar10`` or ``svhn``.
    :param directory: parent directory; created if missing.
    :param timeout: seconds per request.
    :return: the directory to pass as the dataset's data directory.
    :raises DownloadError: when a file cannot be fetched.
    """
    if name not in SOURCES:
        raise DownloadError(f"no download source for dataset {name!r}; downloadable: {sorted(SOURCES)}")
    target = Path(directory) / name
    target.mkdir(parents=True, exist_ok=True)
    for url, file_name in SOURCES[name]:
        destination = target / file_name
        if destination.is_file():
            continue
        partial = destination.with_suffix(destination.suffix + ".part")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            partial.unlink(missing_ok=True)
            raise DownloadError(
                f"dataset {name!r}: could not fetch {url} ({error}). Without network access, obtain "
                f"{file_name} another way, put it in {target} and pass --data-dir {target}."
            ) from error
        os.replace(partial, destination)
        if file_name.endswith(".tar.gz"):
            with tarfile.open(destination) as archive:
                archive.extractall(target, filter="data")
    return target / "cifar-10-batches-py" if name == "cifar10" else target
