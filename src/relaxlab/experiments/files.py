"""The TOML files of experiments (sweeps, screens): read and checked one way.

Each kind of file has its own error class (a :class:`~relaxlab.training.config.ConfigError`), and
every helper takes it, so a message names the file's kind, the key and the fix the same way for
all of them: :func:`load_file` reads a file (missing, unreadable, not UTF-8, not TOML: one line)
and prefixes what its parser refuses with the file's name; :func:`check_keys` refuses unknown keys
with close names suggested; :func:`subtable` reads a ``[table]``; :func:`plain_name` checks a name that
becomes a directory name; :func:`name_list` reads a name or a list of names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from relaxlab.training.config import ConfigError, read_toml, unknown_keys

T = TypeVar("T")


def load_file(
    path: str | Path, what: str, error: type[ConfigError], parse: Callable[[dict[str, Any], Path], T]
) -> T:
    """Read the TOML file ``path`` and parse it; every refusal is an ``error`` naming the file.

    :param what: the file's kind for messages (``"sweep file"``).
    :param error: the exception class of this kind of file.
    :param parse: ``parse(data, path)``: the validated value.
    """
    path = Path(path)
    try:
        data = read_toml(path, what)
    except ConfigError as problem:
        raise error(str(problem)) from problem
    try:
        return parse(data, path)
    except ConfigError as problem:
        raise error(f"{what} {path}: {problem}") from problem


def check_keys(keys: Iterable[str], valid: Sequence[str], where: str, error: type[ConfigError]) -> None:
    """Refuse the keys not in ``valid``, suggesting close ones.

    :param keys: the keys given (a table itself: its keys).
    :param where: the table, for the message (``"[certify]"``, ``"top level"``).
    """
    unknown = unknown_keys(list(keys), valid)
    if unknown:
        raise error(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(valid)}")


def subtable(data: Mapping[str, Any], key: str, error: type[ConfigError]) -> dict[str, Any]:
    """The table ``[key]`` of ``data`` (empty when absent)."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise error(f"`{key}` must be a table ([{key}]), got {value!r}")
    return value


def plain_name(value: Any, error: type[ConfigError]) -> str:
    """A name that is used as a directory name (``runs/<name>``): not empty, no path separator, not ``.``
    or ``..`` (which would name the directory itself or its parent)."""
    if not isinstance(value, str) or not value or "/" in value or "\\" in value or value in (".", ".."):
        raise error(f"`name` must be a plain name (it names the output directory runs/<name>), got {value!r}")
    return value


def name_list(value: Any) -> list[str] | None:
    """A name or a list of names (``"IBP"``, ``["IBP", "CROWN"]``) as a list; ``None`` when ``value`` is
    anything else (a number, a table, an empty name), for the caller to refuse in its own words."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        return None
    return names
