"""Small helpers shared by the CLI modules: tables and errors (exit 2: bad input; exit 1: the work failed)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

import click


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
