"""Checkpoints: plain-data files that load with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain Python values (no pickled code): a format tag, the run's
config as a JSON string, the architecture name, input shape, class count and normalisation, the
model and optimizer state dicts, the RNG states (torch's global generator and the data-order
generator), the number of finished epochs and the per-epoch history (JSON). Writes are atomic:
the file is written next to its destination and moved into place with ``os.replace``, so a crash
never leaves a truncated checkpoint under the real name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relaxlab.api import get_registry

FORMAT = "relaxlab-checkpoint"
#: Version 2 adds ``sha256``, a digest of the content checked on every load; version 1 files still load.
VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, or does not fit what it is loaded into."""


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` (plain data and tensors) atomically to ``path``.

    :param path: destination; its directory is created if missing.
    :param payload: the checkpoint dict (see :func:`make_payload`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    payload = {**payload, "sha256": content_digest(payload)}
    try:
        torch.save(payload, tmp)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def make_payload(
    *,
    config_json: str,
    architecture: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    generator: torch.Generator | None,
    epoch: int,
    step: int,
    history: list[dict[str, float]],
    run_id: int | None = None,
) -> dict[str, Any]:
    """Assemble a checkpoint dict of plain data (see the module docstring)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": config_json,
        "architecture": architecture,
        "input_shape": list(input_shape),
        "num_classes": int(num_classes),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng_torch": torch.get_rng_state(),
        "rng_generator": generator.get_state() if generator is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "history": json.dumps(history),
        "run_id": run_id,
    }


def content_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's content (every value, tensor bytes included; ``sha256`` itself left out)."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous()
            digest.update(f"T{data.dtype}{tuple(data.shape)}".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            keys = sorted((k for k in value if k != "sha256"), key=repr)
            digest.update(f"D{len(keys)}".encode())
            for key in keys:
                feed(key)
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{len(value)}".encode())
            for item in value:
                feed(item)
        else:
            digest.update(f"{type(value).__name__}:{value!r};".encode())

    feed(payload)
    return digest.hexdigest()


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check a checkpoint with ``torch.load(weights_only=True)``.

    :raises CheckpointError: missing, truncated or corrupt file, or not a relaxlab checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = next((ln.strip() for ln in str(error).splitlines() if "GLOBAL" in ln), "")
        detail = detail or _code_it_names(path)
        if detail:  # a pickle that names a Python callable: malicious or foreign, never loaded
            raise CheckpointError(
                f"{path} was refused as unsafe: it holds Python objects that loading would have to run"
                f" ({detail[:200]}); relaxlab loads only plain tensors and data"
            ) from error
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be loaded ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); use an intact checkpoint or retrain"
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be loaded ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); use an intact checkpoint or retrain"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a relaxlab checkpoint (no '{FORMAT}' tag)")
    if payload.get("version") not in (1, VERSION):
        raise CheckpointError(f"{path}: checkpoint format version {payload.get('version')} is not supported")
    if payload.get("version") == VERSION and payload.get("sha256") != content_digest(payload):
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its content does not match the digest written with it (a changed "
            "byte); use an intact copy or retrain"
        )
    missing = [
        k
        for k in ("config", "architecture", "input_shape", "num_classes", "mean", "std", "model")
        if k not in payload
    ]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it is incomplete")
    return payload


#: Pickle opcodes that import a Python object by name (to be called or built when the file loads).
_IMPORTING = {"GLOBAL", "STACK_GLOBAL", "INST"}
#: What a plain torch checkpoint names: its tensor rebuilders and the containers they fill.
_PLAIN = ("torch.", "collections.OrderedDict", "_codecs.encode")


def _code_it_names(path: Path) -> str:
    """The first Python object the pickle in ``path`` would import that a plain checkpoint does not (``""``
    when none): read with :mod:`pickletools`, which lists opcodes and runs nothing.

    Torch's safe loader stops at the first opcode it does not support (protocol 0 and 4 pickles stop
    before naming any import), so a file it refuses is looked at here before it is called corrupt.
    """
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(member) if member is not None else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile, KeyError):
        return ""
    strings: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):  # a legacy torch file is several pickles in a row
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if isinstance(arg, str):
                    strings.append(arg)
                name = ""
                if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    name = arg.replace(" ", ".")
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    name = f"{strings[-2]}.{strings[-1]}"
                if opcode.name in _IMPORTING and not name.startswith(_PLAIN):
                    return f"it imports {name or 'a Python object'}"
        except (ValueError, EOFError, pickle.UnpicklingError, UnicodeDecodeError):
            return ""  # not (or no longer) a pickle: corrupt, not unsafe
    return ""


def build_model(payload: dict[str, Any], source: str = "checkpoint") -> nn.Sequential:
    """Rebuild the network recorded in ``payload`` and load its weights.

    :raises CheckpointError: the weights do not fit the named architecture.
    """
    try:
        architecture = get_registry().architectures[payload["architecture"]]
    except LookupError as error:
        raise CheckpointError(f"{source}: {error}") from error
    model = architecture.build(
        payload["input_shape"], payload["num_classes"], payload["mean"], payload["std"]
    )
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in payload["model"].items()}
    if expected != found:
        raise CheckpointError(
            f"{source}: the weights do not fit architecture {architecture.name!r} "
            f"(expected {len(expected)} tensors {_describe(expected)}, found {len(found)} {_describe(found)}); "
            "the checkpoint comes from another architecture"
        )
    model.load_state_dict(payload["model"])
    return model


def _describe(shapes: dict[str, tuple[int, ...]]) -> str:
    return "[" + ", ".join(f"{k}:{'x'.join(map(str, s))}" for k, s in list(shapes.items())[:6]) + "]"


def load_model(path: str | os.PathLike[str], architecture: str | None = None) -> nn.Sequential:
    """Rebuild the network saved in a checkpoint, in eval mode.

    :param path: checkpoint file.
    :param architecture: when given, refuse a checkpoint of another architecture.
    :return: the ``nn.Sequential`` (starting with its :class:`~relaxlab.nn.Normalize`).
    :raises CheckpointError: missing/corrupt/truncated file or an architecture mismatch.
    """
    payload = read_checkpoint(path)
    if architecture is not None and _norm(architecture) != _norm(payload["architecture"]):
        raise CheckpointError(
            f"checkpoint {path} holds a {payload['architecture']!r} network, not {architecture!r}"
        )
    model = build_model(payload, source=f"checkpoint {path}")
    model.eval()
    return model


def checkpoint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The training config stored in a checkpoint, as a dict."""
    return json.loads(read_checkpoint(path)["config"])


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum() or ch == "+")
