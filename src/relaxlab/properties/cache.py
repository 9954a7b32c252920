"""The verdict cache: soundness verdicts and derived properties of relaxations, kept between runs.

Proving a relaxation sound and deriving its flags take a few hundred milliseconds of CPU each
and depend on nothing but the relaxation's spec and the code that judges it, so one process
writes them down and the next reads them back (``relaxlab list`` then starts without torch).

- **Key:** the SHA-256 of the cache format, relaxlab's version, a fingerprint of the judging
  code and the spec's canonical JSON (:meth:`~relaxlab.core.relaxation.ReluRelaxation.canonical`:
  name, lines per case, intermediate mode, transform, parameters and values). A spec that
  changes in any of these gets a new key and is judged afresh; a spec without a canonical form
  (opaque callables, classes from outside ``relaxlab.core``) is never cached. The code
  fingerprint is the hash of the sources of ``relaxlab.core``, ``relaxlab.engine`` and
  ``relaxlab.properties``: a checkout whose prover changed under the same version number
  does not reuse the old prover's verdicts (worktrees share one cache directory).
- **File:** ``verdicts.json`` in ``$RELAXLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/relaxlab``,
  else ``~/.cache/relaxlab``: ``{"format", "checksum", "entries"}``, the checksum a SHA-256
  of the entries. A file that cannot be read or parsed, fails its checksum or has another
  format is ignored (every look-up misses) and replaced at the next write; a value that does
  not decode is a miss. Nothing here raises into the caller: at worst the verdict is computed.
- **Writes** re-read the file, merge, write a temporary file in the same directory and
  ``os.replace`` it: a reader sees the old file or the new one, never part of one. Two
  processes writing at once may drop each other's new entries (computed again next time), never
  corrupt the file. The newest :data:`MAX_ENTRIES` entries are kept.
- ``RELAXLAB_NO_CACHE=1`` (any value but empty or ``0``) turns the cache off: nothing is read
  or written, every verdict is computed.
- **Trust:** the file is untrusted input (its checksum detects torn and corrupt files, it
  authenticates nothing: anyone who can write the file can recompute it). A soundness verdict is
  used only after the reading process checked it (:func:`relaxlab.properties.check_soundness_cached`):
  "sound" only if its own prover proves every part again, a counterexample only if it is one. So a
  verdict written by a patched prover, or edited into the file, is recomputed, never believed.

Values are JSON: ``None``, numbers, strings, tuples and instances of the attrs classes the
caller names (a class is found by name among those only, never imported from the file).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import attrs

from relaxlab import __version__
from relaxlab.core.relaxation import ReluRelaxation

#: Bumped whenever the file layout or the encoding of values changes.
CACHE_FORMAT = 1
#: Entries kept in the file (the most recently written); about 1 KiB each.
MAX_ENTRIES = 512
FILE_NAME = "verdicts.json"
#: Packages whose source decides a verdict: their hash is part of every key.
JUDGING_PACKAGES = ("core", "engine", "properties")

T = TypeVar("T")


class _Miss(Exception):
    """No usable value under a key (absent, or stored in a form that does not decode)."""


def cache_dir() -> Path | None:
    """Where the cache lives: ``$RELAXLAB_CACHE_DIR``, ``$XDG_CACHE_HOME/relaxlab`` or ``~/.cache/relaxlab``."""
    if os.environ.get("RELAXLAB_CACHE_DIR"):
        return Path(os.environ["RELAXLAB_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "relaxlab"
    try:
        return Path.home() / ".cache" / "relaxlab"
    except RuntimeError:  # no home directory to be found: no cache
        return None


def enabled() -> bool:
    """Whether the cache is used (``RELAXLAB_NO_CACHE`` unset, empty or ``0``)."""
    return os.environ.get("RELAXLAB_NO_CACHE", "") in ("", "0")


@functools.cache
def code_fingerprint() -> str | None:
    """SHA-256 of the judging packages' sources (``None`` if they cannot be read: then no cache)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    try:
        for package in JUDGING_PACKAGES:
            for path in sorted((root / package).rglob("*.py")):
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    except OSError:
        return None
    return digest.hexdigest()


def content_key(relaxation: ReluRelaxation) -> str | None:
    """The cache key of ``relaxation``'s verdicts, or ``None`` when it cannot be cached."""
    canonical = relaxation.canonical() if type(relaxation) is ReluRelaxation else None
    fingerprint = code_fingerprint()
    if canonical is None or fingerprint is None:
        return None
    text = json.dumps([CACHE_FORMAT, __version__, fingerprint, canonical], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def remember(
    relaxation: ReluRelaxation,
    slot: str,
    compute: Callable[[ReluRelaxation], T],
    types: Iterable[type],
    verify: Callable[[ReluRelaxation, T], bool] | None = None,
) -> T:
    """``compute(relaxation)``, read from the cache when this spec's ``slot`` is there, else stored.

    :param slot: what is kept (``"soundness"``, ``"derive"``): one entry holds several.
    :param compute: the function whose result is cached; it runs exactly as uncached on a miss.
    :param types: the attrs classes a value may contain (others are not cached).
    :param verify: what a value must pass to be used when read, and to be written: the file is
        untrusted input, and a value that fails is recomputed (and the entry overwritten).
    """
    key = content_key(relaxation) if enabled() else None
    store = _store() if key is not None else None
    if store is None or key is None:
        return compute(relaxation)
    classes = {cls.__name__: cls for cls in types}
    try:
        found: T = store.get(key, slot, classes)
        if verify is None or verify(relaxation, found):
            return found
    except _Miss:
        pass
    value = compute(relaxation)
    if verify is not None and not verify(relaxation, value):  # not what the genuine judge would write
        return value
    try:
        encoded = encode(value, classes)
    except TypeError:  # something the cache cannot hold faithfully: keep it uncached
        return value
    store.put(key, slot, encoded)
    return value


def encode(value: Any, classes: dict[str, type]) -> Any:
    """``value`` as JSON data; ``TypeError`` for anything but plain values, tuples and ``classes``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return [encode(item, classes) for item in value]
    cls = type(value)
    if classes.get(cls.__name__) is not cls:
        raise TypeError(f"the verdict cache does not hold {cls.__qualname__} values")
    return {
        "class": cls.__name__,
        "fields": {f.alias: encode(getattr(value, f.name), classes) for f in attrs.fields(cls) if f.init},
    }


def decode(data: Any, classes: dict[str, type]) -> Any:
    """The value :func:`encode` gave ``data`` for; :class:`_Miss` when ``data`` is not such a value."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return tuple(decode(item, classes) for item in data)
    try:
        cls = classes[data["class"]]
        return cls(**{name: decode(item, classes) for name, item in data["fields"].items()})
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise _Miss(str(error)) from None


def _checksum(entries: dict[str, Any]) -> str:
    text = json.dumps(entries, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class VerdictStore:
    """The cache file, read once per process and rewritten (merged, atomically) on every new value."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries = self.read()

    def read(self) -> dict[str, Any]:
        """The entries on disk; empty for a missing, unreadable, corrupt or foreign-format file."""
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            return {}
        entries = data.get("entries")
        if not isinstance(entries, dict) or data.get("checksum") != _checksum(entries):
            return {}
        return {
            key: entry
            for key, entry in entries.items()
            if isinstance(entry, dict) and isinstance(entry.get("written"), (int, float))
        }

    def get(self, key: str, slot: str, classes: dict[str, type]) -> Any:
        entry = self.entries.get(key)
        if not isinstance(entry, dict) or slot not in entry:
            raise _Miss(key)
        return decode(entry[slot], classes)

    def put(self, key: str, slot: str, value: Any) -> None:
        """Store one value and write the file (a failed write only costs the next process a miss)."""
        entry = self.entries.setdefault(key, {})
        entry[slot], entry["written"] = value, time.time()
        merged = self.read()
        for other_key, other in self.entries.items():
            merged[other_key] = {**merged.get(other_key, {}), **other}
        if len(merged) > MAX_ENTRIES:
            newest = sorted(merged, key=lambda k: merged[k].get("written", 0.0), reverse=True)[:MAX_ENTRIES]
            merged = {k: merged[k] for k in newest}
        self.entries = merged
        text = json.dumps(
            {"format": CACHE_FORMAT, "checksum": _checksum(merged), "entries": merged}, ensure_ascii=False
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{FILE_NAME}.", suffix=".tmp")
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as stream:
                    stream.write(text)
                os.replace(temporary, self.path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError:
            pass


_STORES: dict[Path, VerdictStore] = {}


def _store() -> VerdictStore | None:
    """The store of the current cache directory (one per directory and process)."""
    directory = cache_dir()
    if directory is None:
        return None
    path = directory / FILE_NAME
    if path not in _STORES:
        _STORES[path] = VerdictStore(path)
    return _STORES[path]
