"""Small helpers shared by the CLI modules: tables and errors (exit 2: bad input; exit 1: the work failed)."""

from __future__ import annotations

import re
import sqlite3
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

import click

#: Columns a table may take unless a command is asked for ``--wide`` output.
TABLE_WIDTH = 100
#: Narrowest a wrapped column gets.
_MIN_COLUMN = 8


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, width: int | None = TABLE_WIDTH
) -> str:
    """A plain-text table with aligned columns that fits ``width`` characters.

    When the natural table is wider, the widest columns are narrowed and their cells wrapped
    onto continuation lines (at spaces, after commas, after the ``/`` of a path); only a word
    longer than its column with no such place is cut.

    :param headers: the column names.
    :param rows: the cells, one sequence per row.
    :param width: the most characters a line may take (``None``: no limit, as ``--wide``).
    :return: the table, lines joined by newlines.
    """
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    if width is not None:
        widths = _fit(widths, width - 2 * (len(widths) - 1))
    lines = []
    for index, row in enumerate(cells):
        wrapped = [_wrap(cell, w) for cell, w in zip(row, widths, strict=True)]
        for k in range(max(len(parts) for parts in wrapped)):
            parts = [p[k] if k < len(p) else "" for p in wrapped]
            lines.append("  ".join(c.ljust(w) for c, w in zip(parts, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fit(widths: list[int], room: int) -> list[int]:
    """Column widths summing to at most ``room``: the widest columns give up characters first."""
    widths = list(widths)
    while sum(widths) > room:
        widest = max(range(len(widths)), key=lambda i: widths[i])
        if widths[widest] <= _MIN_COLUMN:
            break
        widths[widest] -= 1
    return widths


class _PathWrapper(textwrap.TextWrapper):
    """Breaks at spaces and after each ``/`` (paths), never at hyphens (``CROWN-0-Tria``)."""

    wordsep_re = re.compile(r"(\s+|(?<=/)(?=[^\s/]))")


def _wrap(text: str, width: int) -> list[str]:
    """``text`` broken into lines of at most ``width`` characters (at spaces, after ", " and "/")."""
    if len(text) <= width:
        return [text]
    return _PathWrapper(width=width, break_long_words=True, break_on_hyphens=True).wrap(text) or [""]


class InputError(click.ClickException):
    """Bad input: a name, a value, a file. Exit status 2, as click's own usage errors."""

    exit_code = 2


def fail(message: str) -> NoReturn:
    """Stop the command because of bad input: the message and exit status 2."""
    raise InputError(message)


#: Library errors that mean "bad input" (names, configs, values, files, checkpoints): exit status 2.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, FileNotFoundError, TypeError)
#: Library errors that mean "the work failed" (a store, the file system, diverging training): exit status 1.
WORK_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, OSError, sqlite3.Error, ArithmeticError)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Report library errors as one line without a traceback: exit 2 for bad input, 1 for failed work."""
    try:
        yield
    except click.ClickException:
        raise
    except INPUT_ERRORS as error:
        fail(str(error))
    except WORK_ERRORS as error:
        raise click.ClickException(f"{type(error).__name__}: {error}") from error
