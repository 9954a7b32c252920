"""Table 10 of the paper: its 12 released MNIST networks certified with each relaxation.

Each *cell* is one released network (:mod:`relaxlab.experiments.released`) certified with one
relaxation at eps = 0.3 (the box clipped to [0, 1]) on a prefix of the MNIST test set. A cell
records one bit per test image (certified or not, exactly as
:func:`relaxlab.evaluation.certify.certified_mask` decides), so the record answers for any prefix
of the test set: a later run, or a test on the first few hundred images, compares its own bits
with the recorded ones.

The record is one JSON file (:class:`Table10Record`), rewritten atomically at the end of every
cell and every :data:`SAVE_EVERY` seconds within one: an interrupted run loses at most that much
work, and the next run with the same file continues each
cell where it stopped. It also holds, per network, which images it classifies correctly; a short
hash of every block of :data:`DATA_BLOCK` test images (and labels), so that a record is never
extended with other images; and per cell the relaxation's spec hash, the seconds spent and the
machine load while it ran.

:data:`PAPER_TABLE10` holds the paper's numbers (ε_test = 0.3) with the transcription's DeepZ and
CROWN columns put back in their order (the pretrained README: the transcription lists them
swapped; Tables 2 and 11 confirm it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch

from relaxlab.evaluation.certify import certified_mask
from relaxlab.experiments.released import RELEASED_NETWORKS, ReleasedNetwork, find_released_dir, load_released

if TYPE_CHECKING:
    from torch import Tensor

    from relaxlab.core.relaxation import ReluRelaxation

PAPER_EPS = 0.3
RECORD_FORMAT = "relaxlab-table10"
RECORD_VERSION = 1
#: Seconds between two saves of the record while a cell runs (and it is saved when a cell ends).
SAVE_EVERY = 10.0
#: Test images per data hash: a record can be checked against data in multiples of this.
DATA_BLOCK = 100

_PAPER_COLUMNS = ("IBP", "hBox", "DeepZ", "CROWN", "CROWN-IBP (R)")
_PAPER_ROWS = {  # Table 10, eps_test = 0.3, columns as _PAPER_COLUMNS
    "mnist_FC_box": (74.0, 74.0, 3.7, 25.5, 64.5),
    "mnist_FC_hbox": (57.0, 57.0, 2.4, 7.1, 10.8),
    "mnist_FC_zono": (0.0, 0.1, 64.2, 63.5, 1.8),
    "mnist_FC_crown": (0.0, 0.0, 54.3, 57.3, 0.0),
    "mnist_FC_crownibp1to1": (1.8, 10.4, 37.4, 56.8, 70.5),
    "mnist_FC_crownibp1to0": (77.9, 77.9, 8.6, 29.0, 72.6),
    "mnist_CONV_box": (86.8, 86.8, 12.4, 46.7, 64.9),
    "mnist_CONV_hbox": (83.7, 83.7, 26.3, 50.3, 73.4),
    "mnist_CONV_zono": (0.4, 25.8, 69.8, 74.0, 60.9),
    "mnist_CONV_crown": (0.0, 0.3, 65.2, 70.2, 55.1),
    "mnist_CONV_crownibp1to1": (0.0, 0.2, 59.5, 67.6, 75.4),
    "mnist_CONV_crownibp1to0": (86.6, 86.6, 32.8, 60.3, 78.0),
}
#: The paper's Table 10 at ε_test = 0.3: released network -> certifying relaxation -> CR (%).
PAPER_TABLE10: dict[str, dict[str, float]] = {
    name: dict(zip(_PAPER_COLUMNS, row, strict=True)) for name, row in _PAPER_ROWS.items()
}
#: Relaxations compared with a paper column of another name: the paper's hBox numbers are its
#: code's, a forward hybrid zonotope (relaxlab's ``hBox`` is the backsubstitution of the text).
PAPER_COLUMN_OF = {"hBox-Hybrid": "hBox"}
#: The paper's clean accuracy of each released network (Table 11, ε_test = 0.3 columns), in %.
PAPER_ACCURACY: dict[str, float] = {
    "mnist_FC_box": 88.7,
    "mnist_FC_hbox": 89.2,
    "mnist_FC_zono": 87.4,
    "mnist_FC_crown": 84.9,
    "mnist_FC_crownibp1to1": 92.2,
    "mnist_FC_crownibp1to0": 90.8,
    "mnist_CONV_box": 95.9,
    "mnist_CONV_hbox": 95.1,
    "mnist_CONV_zono": 92.5,
    "mnist_CONV_crown": 92.6,
    "mnist_CONV_crownibp1to1": 93.4,
    "mnist_CONV_crownibp1to0": 94.8,
}


def paper_value(network: str, relaxation: str) -> float | None:
    """The paper's CR (%) for ``network`` certified with ``relaxation`` (a label), if it reports one."""
    return PAPER_TABLE10.get(network, {}).get(PAPER_COLUMN_OF.get(relaxation, relaxation))


class RecordError(ValueError):
    """A record file is unreadable, or does not fit the run it is asked to continue."""


def pack_bits(bits: Tensor | np.ndarray) -> str:
    """A boolean vector as text: bit-packed, zlib-compressed, base64."""
    array = np.asarray(bits.cpu() if isinstance(bits, torch.Tensor) else bits, dtype=bool)
    return base64.b64encode(zlib.compress(np.packbits(array).tobytes(), 9)).decode("ascii")


def unpack_bits(text: str, count: int) -> np.ndarray:
    """The first ``count`` bits of :func:`pack_bits`'s text, as a boolean array."""
    packed = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8)
    if packed.size * 8 < count:
        raise RecordError(f"a bit vector holds {packed.size * 8} bits, {count} expected")
    return np.unpackbits(packed, count=count).astype(bool)


def data_hashes(images: Tensor, labels: Tensor) -> list[str]:
    """A short SHA256 of every full block of :data:`DATA_BLOCK` images (as bytes 0-255) and their labels."""
    pixels = (images.detach().cpu().double() * 255).round().to(torch.uint8).numpy()
    classes = labels.detach().cpu().to(torch.int64).numpy()
    hashes = []
    for start in range(0, len(classes) - DATA_BLOCK + 1, DATA_BLOCK):
        digest = hashlib.sha256(pixels[start : start + DATA_BLOCK].tobytes())
        digest.update(classes[start : start + DATA_BLOCK].tobytes())
        hashes.append(digest.hexdigest()[:16])
    return hashes


def spec_hash(relaxation: ReluRelaxation) -> str | None:
    """SHA256 of the relaxation's canonical text (``None`` for one that is partly code)."""
    text = relaxation.canonical()
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


@attrs.define(kw_only=True)
class Cell:
    """One network certified with one relaxation on the first ``done`` test images.

    :param bits: packed (:func:`pack_bits`) certified bits of the first ``done`` images.
    :param seconds: wall time spent certifying (summed over runs; loading excluded).
    :param load: mean 1-minute load average of the machine while it ran.
    :param threads: torch threads.
    """

    network: str
    relaxation: str
    spec_sha256: str | None
    done: int = 0
    bits: str = ""
    seconds: float = 0.0
    load: float = 0.0
    threads: int = 1
    batch_size: int = 0

    def certified(self, n: int | None = None) -> np.ndarray:
        """The certified bits of the first ``n`` images (default: all done)."""
        n = self.done if n is None else n
        if n > self.done:
            raise RecordError(
                f"{self.network} × {self.relaxation}: {self.done} images certified, {n} asked for"
            )
        return unpack_bits(self.bits, n) if n else np.zeros(0, dtype=bool)

    def seconds_per_image(self) -> float:
        """Mean certification time per image."""
        return self.seconds / self.done if self.done else float("nan")


@attrs.define(kw_only=True)
class Table10Record:
    """What a Table 10 run has certified so far (the JSON file's content).

    :param eps: the radius of every cell.
    :param dataset: the dataset's name (``"mnist"``: its test split).
    :param data: :func:`data_hashes` of the test images used so far.
    :param correct: per network, packed bits of which images it classifies correctly, and how many.
    :param cells: ``(network, relaxation) -> Cell``.
    """

    eps: float = PAPER_EPS
    dataset: str = "mnist"
    data: list[str] = attrs.field(factory=list)
    correct: dict[str, tuple[int, str]] = attrs.field(factory=dict)
    cells: dict[tuple[str, str], Cell] = attrs.field(factory=dict)

    def cell(self, network: str, relaxation: str) -> Cell | None:
        """The cell, or ``None`` when nothing of it was run."""
        return self.cells.get((network, relaxation))

    def accuracy(self, network: str, n: int) -> float | None:
        """Clean accuracy (%) of ``network`` on the first ``n`` images, if recorded that far."""
        done, bits = self.correct.get(network, (0, ""))
        return None if done < n or n == 0 else 100.0 * float(unpack_bits(bits, n).mean())

    def certified_percent(self, network: str, relaxation: str, n: int) -> float | None:
        """CR (%) of the cell on the first ``n`` images, if it was run that far."""
        cell = self.cell(network, relaxation)
        return None if cell is None or cell.done < n or n == 0 else 100.0 * float(cell.certified(n).mean())

    def relaxations(self) -> list[str]:
        """The relaxations of the recorded cells, in first-recorded order."""
        return list(dict.fromkeys(relaxation for _, relaxation in self.cells))

    def to_json(self) -> dict[str, Any]:
        """The file's content: plain data."""
        return {
            "format": RECORD_FORMAT,
            "version": RECORD_VERSION,
            "eps": self.eps,
            "dataset": self.dataset,
            "data_block": DATA_BLOCK,
            "data_sha256": self.data,
            "correct": {name: {"done": done, "bits": bits} for name, (done, bits) in self.correct.items()},
            "cells": [attrs.asdict(cell) for cell in self.cells.values()],
        }

    @classmethod
    def from_json(cls, content: Any, source: str) -> Table10Record:
        """Read :meth:`to_json`'s content back; a wrong format is a :class:`RecordError` naming ``source``."""
        if not isinstance(content, dict) or content.get("format") != RECORD_FORMAT:
            raise RecordError(f"{source}: not a relaxlab Table 10 record (no format {RECORD_FORMAT!r})")
        if content.get("version") != RECORD_VERSION or content.get("data_block") != DATA_BLOCK:
            raise RecordError(f"{source}: record version {content.get('version')} is not {RECORD_VERSION}")
        try:
            cells = [Cell(**cell) for cell in content["cells"]]
            return cls(
                eps=float(content["eps"]),
                dataset=str(content["dataset"]),
                data=[str(h) for h in content["data_sha256"]],
                correct={name: (int(v["done"]), str(v["bits"])) for name, v in content["correct"].items()},
                cells={(cell.network, cell.relaxation): cell for cell in cells},
            )
        except (KeyError, TypeError, ValueError) as error:
            raise RecordError(f"{source}: damaged Table 10 record ({error})") from error

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the record atomically (a temporary file beside it, then ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def load_record(path: str | os.PathLike[str]) -> Table10Record:
    """The record in ``path``.

    :raises RecordError: when the file is not a readable record.
    :raises FileNotFoundError: when there is no file.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}: not JSON ({error})") from error
    return Table10Record.from_json(content, str(path))


def _check_data(record: Table10Record, hashes: list[str], source: str) -> None:
    for block, (recorded, given) in enumerate(zip(record.data, hashes, strict=False)):
        if recorded != given:
            raise RecordError(
                f"{source} was recorded on other test images (images {block * DATA_BLOCK}-"
                f"{(block + 1) * DATA_BLOCK - 1} differ): use the same data or another --out"
            )
    if len(hashes) > len(record.data):
        record.data = hashes


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return float("nan")


def run_table10(
    out: str | os.PathLike[str],
    images: Tensor,
    labels: Tensor,
    relaxations: Sequence[ReluRelaxation],
    *,
    networks: Sequence[ReleasedNetwork] = RELEASED_NETWORKS,
    networks_dir: str | os.PathLike[str] | None = None,
    eps: float = PAPER_EPS,
    dataset: str = "mnist",
    batch_size: int = 100,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Table10Record:
    """Certify every ``network × relaxation`` cell on ``images``, continuing the record in ``out``.

    A cell already run on at least ``len(images)`` images is not run again; one run on fewer
    continues from where it stopped, or starts again when its relaxation's spec has changed
    since (the cell's spec hash). The record is saved after every cell and every :data:`SAVE_EVERY`
    seconds.

    :param out: the record file (created when missing).
    :param images: ``(N, 1, 28, 28)`` MNIST test images in [0, 1], in the test set's order.
    :param labels: ``(N,)``.
    :param relaxations: the certifying relaxations (the columns, known by their labels:
        ``LooseIBP-C(omega=0.5)`` and ``LooseIBP-C`` are two).
    :param networks: the released networks (the rows).
    :param networks_dir: where their files are (see :func:`~relaxlab.experiments.released.find_released_dir`).
    :param eps: the radius; a record holds one.
    :param batch_size: images bounded at once.
    :param dtype: dtype of the bound computation (float64: the tolerance of ``is_certified`` is wide).
    :param device: where the bounds are computed (the record does not depend on it beyond the
        order of floating-point operations).
    :param progress: called with the number of images certified after each batch.
    :param log: called with one line per finished cell.
    :return: the record as saved.
    :raises RecordError: when ``out`` holds another eps or dataset, or was recorded on other images.
    """
    out = Path(out)
    record = load_record(out) if out.exists() else Table10Record(eps=eps, dataset=dataset)
    if record.eps != eps or record.dataset != dataset:
        raise RecordError(
            f"{out} holds {record.dataset} at eps={record.eps:g}, not {dataset} at eps={eps:g}: use another --out"
        )
    n = int(labels.shape[0])
    _check_data(record, data_hashes(images, labels), str(out))
    directory: Path | None = None
    threads = torch.get_num_threads()
    saved = time.monotonic()
    for network in networks:
        todo = [r for r in relaxations if (c := record.cell(network.name, r.label)) is None or c.done < n]
        if not todo and record.correct.get(network.name, (0, ""))[0] >= n:
            continue
        directory = directory or find_released_dir(networks_dir)
        _, model = load_released(directory / network.file_name)
        net = model.to(device=device, dtype=dtype)
        with torch.no_grad():
            logits = torch.cat(
                [net(images[s : s + batch_size].to(device, dtype)) for s in range(0, n, batch_size)]
            )
        done_correct, _ = record.correct.get(network.name, (0, ""))
        if done_correct < n:
            record.correct[network.name] = (n, pack_bits(logits.argmax(1).cpu() == labels))
        for relaxation in todo:
            cell = record.cell(network.name, relaxation.label)
            digest = spec_hash(relaxation)
            if cell is not None and cell.spec_sha256 != digest:
                if log is not None:
                    log(
                        f"{network.name} × {relaxation.label}: begun with another definition of "
                        f"{relaxation.label} (its spec hash differs): started again"
                    )
                cell = None
            if cell is None:
                cell = Cell(
                    network=network.name,
                    relaxation=relaxation.label,
                    spec_sha256=digest,
                    threads=threads,
                    batch_size=batch_size,
                )
                record.cells[(network.name, relaxation.label)] = cell
            bits = cell.certified()
            loads = [cell.load] * (cell.done // batch_size) if cell.done else []
            for start in range(cell.done, n, batch_size):
                part = slice(start, min(start + batch_size, n))
                began = time.perf_counter()
                mask = certified_mask(
                    net,
                    images[part].to(device, dtype),
                    labels[part].to(device),
                    eps,
                    relaxation,
                    num_classes=10,
                    logits=logits[part],
                )
                cell.seconds += time.perf_counter() - began
                loads.append(_load_average())
                bits = np.concatenate([bits, mask.cpu().numpy()])
                cell.done, cell.bits, cell.load = part.stop, pack_bits(bits), float(np.mean(loads))
                cell.threads, cell.batch_size = threads, batch_size
                if time.monotonic() - saved >= SAVE_EVERY:
                    record.save(out)
                    saved = time.monotonic()
                if progress is not None:
                    progress(part.stop - part.start)
            record.save(out)
            saved = time.monotonic()
            if log is not None:
                percent = 100.0 * float(bits[:n].mean()) if n else float("nan")
                paper = paper_value(network.name, relaxation.label)
                log(
                    f"{network.name} × {relaxation.label}: {percent:.2f} % certified of {n}"
                    f"{'' if paper is None else f' (paper {paper:g})'}, {cell.seconds:.1f} s, load {cell.load:.1f}"
                )
        record.save(out)
    return record


def table10_rows(
    record: Table10Record,
    relaxations: Sequence[str],
    n: int,
    *,
    networks: Sequence[ReleasedNetwork] = RELEASED_NETWORKS,
) -> tuple[list[str], list[list[str]]]:
    """The matrix as text: one row per network, per relaxation ``ours (paper)`` in %.

    A cell not run on ``n`` images shows ``—``; a relaxation the paper does not report (nor
    :data:`PAPER_COLUMN_OF` maps to one it does) shows no parenthesis.

    :return: ``(headers, rows)``.
    """
    headers = ["network", "trained with", "Acc", *relaxations]
    rows = []
    for network in networks:
        accuracy = record.accuracy(network.name, n)
        row = [network.architecture, network.trained_with, _pair(accuracy, PAPER_ACCURACY.get(network.name))]
        for relaxation in relaxations:
            row.append(
                _pair(
                    record.certified_percent(network.name, relaxation, n),
                    paper_value(network.name, relaxation),
                )
            )
        rows.append(row)
    return headers, rows


def _pair(ours: float | None, paper: float | None) -> str:
    text = "—" if ours is None else f"{ours:.2f}"
    return text if paper is None else f"{text} ({paper:g})"
