"""Converters for attrs fields."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def as_tuple(items: Iterable[Any]) -> tuple[Any, ...]:
    """``tuple(items)``, for ``field(converter=as_tuple)``.

    ``converter=tuple`` behaves the same, but mypy's attrs plugin then types the ``__init__``
    argument as ``Iterable[_T_co]`` with the type variable unsolved, and refuses every argument.
    The field's own annotation still types what is read back.
    """
    return tuple(items)
