"""Resolve user-given names of relaxations, architectures and datasets through the registry.

Every lookup error becomes a :class:`~relaxlab.training.config.ConfigError` that names the kind of
thing, the unknown name and close known names, so the CLI can refuse bad input before any work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relaxlab.training.config import ConfigError

if TYPE_CHECKING:
    from relaxlab.core.relaxation import ReluRelaxation
    from relaxlab.data.datasets import Dataset
    from relaxlab.training.architectures import Architecture


def _lookup(kind: str, table: Any, name: str) -> Any:
    try:
        return table[name]
    except LookupError as error:  # the registry's message names close matches
        raise ConfigError(str(error) if str(error) else f"unknown {kind} {name!r}") from error


def _registry() -> Any:
    import relaxlab

    return relaxlab.get_registry()


def resolve_relaxation(name: str) -> ReluRelaxation:
    """The relaxation called ``name`` (case, spaces and punctuation ignored).

    :raises ConfigError: unknown name, with suggestions.
    """
    import relaxlab

    try:
        return relaxlab.get_relaxation(name)
    except LookupError as error:
        raise ConfigError(str(error)) from error


def resolve_architecture(name: str) -> Architecture:
    """The architecture called ``name``.

    :raises ConfigError: unknown name, with suggestions.
    """
    return _lookup("architecture", _registry().architectures, name)


def resolve_dataset(name: str) -> Dataset:
    """The dataset called ``name``.

    :raises ConfigError: unknown name, with suggestions.
    """
    return _lookup("dataset", _registry().datasets, name)


def relaxation_names() -> list[str]:
    """All registered relaxation names."""
    table = _registry().relaxations
    return list(table.names()) if hasattr(table, "names") else list(table)
