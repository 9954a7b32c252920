"""Small helpers shared by the CLI modules: tables and errors."""

from __future__ import annotations

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


def fail(message: str) -> NoReturn:
    """Stop the command with an error message and exit status 1."""
    raise click.ClickException(message)


#: Library errors that mean "bad input" (names, configs, files, checkpoints): shown as one line.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, LookupError)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Report library input errors as one line and exit status 1 (no traceback)."""
    try:
        yield
    except click.ClickException:
        raise
    except INPUT_ERRORS as error:
        fail(str(error))
