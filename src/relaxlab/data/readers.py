"""Readers for the standard dataset file formats: IDX (MNIST family), CIFAR-10 python batches, SVHN .mat.

Every reader checks the file's structure and raises :class:`DataFormatError` naming the file and
what is wrong, instead of returning garbage. Images come back as float32 in ``[0, 1]``,
shaped ``(N, C, H, W)``; labels as int64.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

#: IDX dtype codes (the third magic byte) and the numpy dtypes they denote (big-endian).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataFormatError(ValueError):
    """A dataset file is not in the expected format."""


def _open_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not by the file name
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataFormatError(f"{path}: corrupt gzip file ({error})") from error
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or gzipped).

    Format: two zero bytes, a dtype code, the number of dimensions ``d``; then ``d`` big-endian
    int32 sizes; then the data, big-endian.

    :param path: the file.
    :return: an array of the stored shape and dtype (native byte order).
    :raises DataFormatError: bad magic, unknown dtype, or a size that does not match the data.
    """
    import numpy as np

    path = Path(path)
    data = _open_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataFormatError(f"{path}: not an IDX file (bad magic {data[:4]!r})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DataFormatError(f"{path}: unknown IDX dtype code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}i", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataFormatError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds {len(data) - header} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` (uint8) as an IDX file; gzipped when ``compress`` (default: name ends in .gz).

    :param path: destination.
    :param array: uint8 array of any rank.
    :param compress: gzip the file; ``None`` decides by the ``.gz`` suffix.
    """
    import numpy as np

    path = Path(path)
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx: only uint8 arrays are supported, got {array.dtype}")
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=9, mtime=0)
    path.write_bytes(payload)


def _to_tensors(images: np.ndarray, labels: np.ndarray, source: str) -> tuple[Tensor, Tensor]:
    import numpy as np
    import torch

    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(f"{source}: {images.shape[0]} images but {labels.shape[0]} labels")
    if images.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32) / 255.0
    else:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise DataFormatError(f"{source}: float pixels outside [0, 1]")
    return x, torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))


def idx_pair_to_tensors(images: np.ndarray, labels: np.ndarray, source: str = "IDX") -> tuple[Tensor, Tensor]:
    """Turn IDX image ``(N, H, W)`` or ``(N, C, H, W)`` and label ``(N,)`` arrays into tensors.

    :param images: pixel array (uint8 0..255).
    :param labels: label array.
    :param source: named in errors.
    :return: float32 ``(N, C, H, W)`` in ``[0, 1]`` and int64 ``(N,)``.
    """
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or labels.ndim != 1:
        raise DataFormatError(
            f"{source}: expected images (N,H,W) and labels (N,), got {images.shape}, {labels.shape}"
        )
    return _to_tensors(images, labels, source)


def _unpickle(path: Path) -> dict[Any, Any]:
    # CIFAR-10's python batches are pickled dicts of numpy arrays; restrict what may be unpickled
    # so that a malicious file cannot run code.
    class _Restricted(pickle.Unpickler):
        _allowed = {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
        }

        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in self._allowed:
                return super().find_class(module, name)
            raise DataFormatError(f"{path}: refusing to unpickle {module}.{name} (not a CIFAR batch)")

    try:
        return _Restricted(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except DataFormatError:
        raise
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataFormatError(f"{path}: not a CIFAR python batch ({error})") from error


def read_cifar_batch(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read one CIFAR-10 python batch (``data`` ``(N, 3072)`` uint8, ``labels`` list).

    :param path: e.g. ``cifar-10-batches-py/data_batch_1``.
    :return: float32 ``(N, 3, 32, 32)`` in ``[0, 1]`` and int64 ``(N,)``.
    """
    import numpy as np

    path = Path(path)
    batch = _unpickle(path)
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataFormatError(f"{path}: a CIFAR batch needs 'data' and 'labels', found {sorted(batch)}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFormatError(f"{path}: CIFAR data must be (N, 3072), got {data.shape}")
    return _to_tensors(data.reshape(-1, 3, 32, 32), np.asarray(batch["labels"]), str(path))


def read_cifar10(directory: str | Path, split: str) -> tuple[Tensor, Tensor]:
    """Read CIFAR-10 from its unpacked ``cifar-10-batches-py`` directory.

    :param directory: holds ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``.
    :param split: ``"train"`` (all five data batches that exist, at least one) or ``"test"``.
    :return: images and labels.
    """
    import torch

    directory = Path(directory)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    files = [directory / name for name in names if (directory / name).is_file()]
    if not files:
        raise DataFormatError(f"{directory}: no CIFAR-10 {split} batches ({', '.join(names)})")
    parts = [read_cifar_batch(f) for f in files]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def read_svhn_mat(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read an SVHN cropped-digits ``.mat`` file (``X`` ``(32, 32, 3, N)`` uint8, ``y`` ``(N, 1)``).

    SVHN stores the digit 0 as label 10; it becomes 0 here.

    :param path: ``train_32x32.mat`` or ``test_32x32.mat``.
    :return: float32 ``(N, 3, 32, 32)`` in ``[0, 1]`` and int64 ``(N,)`` with labels 0..9.
    """
    import numpy as np
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as error:  # noqa: BLE001 - scipy raises several kinds for bad files
        raise DataFormatError(f"{path}: not a readable .mat file ({error})") from error
    if "X" not in mat or "y" not in mat:
        raise DataFormatError(f"{path}: an SVHN .mat file needs variables 'X' and 'y'")
    images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DataFormatError(f"{path}: SVHN X must be (32, 32, 3, N), got {images.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 10):
        raise DataFormatError(f"{path}: SVHN labels must be in 0..10")
    labels = np.where(labels == 10, 0, labels)
    return _to_tensors(images.astype(np.uint8).transpose(3, 2, 0, 1), labels, str(path))
