"""Progress of long commands: one reporter for the whole CLI.

On a terminal a tqdm bar with an ETA; when stderr is not a terminal (a log file, a pipe, CI) a
one-line status at most every :data:`DEFAULT_EVERY` seconds and at every tenth of the work::

    certify: 300/500 (60%), 12 s, ETA 8 s

Work that ends within :data:`FIRST_LINE_AFTER` seconds prints no status line at all (a fast
phase has nothing to report). With ``quiet`` nothing at all. Units may be fractions (a sweep
counts runs, and a run in progress counts as the share of its steps done).

:func:`interruptible` turns Ctrl-C and SIGTERM into one line that says how to resume. Library functions never see this class: they take plain
callbacks (``progress: Callable[[int], None]``, called with the units just done), and the
command passes :meth:`Progress.update`, or :meth:`Phases.start` where the library learns the
size of its work only once it runs (``Callable[[str, int], Callable[[int], None]]``: a phase
name and its total in, the per-unit callback out).

The environment variable ``RELAXLAB_PROGRESS_EVERY`` sets the interval of the status lines in
seconds (``0``: a line after every update; the tests use it).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, TextIO

#: Seconds between two status lines when stderr is not a terminal.
DEFAULT_EVERY = 10.0
#: The environment variable that overrides :data:`DEFAULT_EVERY`.
EVERY_VARIABLE = "RELAXLAB_PROGRESS_EVERY"
#: Seconds of work before the first status line (less when the interval is shorter).
FIRST_LINE_AFTER = 2.0


def duration(seconds: float) -> str:
    """A short human duration: ``"12 s"``, ``"4 min 42 s"``, ``"1 h 05 min"``.

    :param seconds: a non-negative number of seconds.
    :return: the duration in words of at most two units.
    """
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def status_every() -> float:
    """Seconds between status lines: ``$RELAXLAB_PROGRESS_EVERY`` or :data:`DEFAULT_EVERY`."""
    raw = os.environ.get(EVERY_VARIABLE, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_EVERY
    return value if math.isfinite(value) and value >= 0 else DEFAULT_EVERY


class Progress:
    """The progress of one piece of work: a bar on a terminal, status lines otherwise, or nothing.

    Use it as a context manager; :meth:`update` counts units done, :meth:`write` prints a line
    without breaking the bar.

    :param desc: what is being done, the start of every status line (``"certify"``).
    :param total: units of work (``None``: unknown, no percentage or ETA).
    :param quiet: show nothing (``--quiet``).
    :param unit: what one unit is, for the bar (``"img"``, ``"step"``).
    :param stream: where it goes (default: stderr).
    :param tty: draw a bar (default: when ``stream`` is a terminal).
    :param every: seconds between status lines (default: :func:`status_every`).
    :param first: seconds of work before the first status line (default: :data:`FIRST_LINE_AFTER`,
        or ``every`` when that is shorter).
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        *,
        quiet: bool = False,
        unit: str = "it",
        stream: TextIO | None = None,
        tty: bool | None = None,
        every: float | None = None,
        first: float | None = None,
    ) -> None:
        self.desc, self.total, self.quiet, self.unit = desc, total, quiet, unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.every = status_every() if every is None else every
        self.first = min(self.every, FIRST_LINE_AFTER) if first is None else first
        self.done: float = 0
        self.start = time.monotonic()
        self._last_time = self.start
        self._last_tenth = 0
        self._last_line_done: float = -1
        self._bar: Any = None
        self._closed = False

    def __enter__(self) -> Progress:
        self.start = self._last_time = time.monotonic()
        if not self.quiet and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                desc=self.desc,
                unit=self.unit,
                file=self.stream,
                dynamic_ncols=True,
                leave=False,
            )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close(finished=kind is None)

    def close(self, *, finished: bool = True) -> None:
        """Remove the bar, or print the last status line if the last count was not shown yet.

        :param finished: the work ended normally (a failed one gets no final line).
        """
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif (
            finished
            and not self.quiet
            and not self.tty
            and self.done != self._last_line_done
            and (self._last_line_done >= 0 or time.monotonic() - self.start >= self.first)
        ):
            self._emit()

    @property
    def callback(self) -> Callable[[int], None]:
        """:meth:`update` as the plain callback library functions take."""
        return self.update

    def set_total(self, total: int | None) -> None:
        """Change the number of units (a library learnt it only once it started).

        :param total: the new total.
        """
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units done; show the bar or, when due, a status line.

        :param n: units just finished (a fraction for work counted in shares).
        """
        self.done += n
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self.start < self.first:
            return
        tenth = int(10 * self.done // self.total) if self.total else 0
        if now - self._last_time >= self.every or tenth > self._last_tenth:
            self._emit(now)

    def write(self, line: str) -> None:
        """Print one line (a per-epoch summary, a note) without breaking the bar; nothing when quiet.

        :param line: the text, without a newline.
        """
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        """The status line now: ``"certify: 300/500 (60%), 12 s, ETA 8 s"``.

        :param now: the ``time.monotonic()`` of the line (default: now).
        """
        now = time.monotonic() if now is None else now
        elapsed = now - self.start
        done = f"{self.done:g}" if float(self.done).is_integer() else f"{self.done:.1f}"
        if not self.total:
            return f"{self.desc}: {done} {self.unit} done, {duration(elapsed)}"
        text = (
            f"{self.desc}: {done}/{self.total} ({int(100 * self.done // self.total)}%), {duration(elapsed)}"
        )
        if 0 < self.done < self.total:
            text += f", ETA {duration(elapsed / self.done * (self.total - self.done))}"
        return text

    def _emit(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        print(self.line(now), file=self.stream, flush=True)
        self._last_time = now
        self._last_line_done = self.done
        if self.total:
            self._last_tenth = int(10 * self.done // self.total)


class Phases:
    """Consecutive pieces of work whose sizes a library announces as it reaches them.

    :meth:`start` is the callback such a library takes (``train``: its steps; ``paradox``: each
    training run, the tightness curves, each certification); each call closes the previous
    phase's reporter and opens a new one.

    :param quiet: show nothing.
    :param prefix: put before every phase name (``"paradox: "``).
    :param stream: where it goes (default: stderr).
    """

    def __init__(self, *, quiet: bool = False, prefix: str = "", stream: TextIO | None = None) -> None:
        self.quiet, self.prefix, self.stream = quiet, prefix, stream
        self.current: Progress | None = None

    def __enter__(self) -> Phases:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.current is not None:
            self.current.close(finished=kind is None)
            self.current = None

    def start(self, desc: str, total: int) -> Callable[[float], None]:
        """Open the reporter of the next phase.

        :param desc: the phase's name.
        :param total: its units of work.
        :return: the per-unit callback of that phase.
        """
        if self.current is not None:
            self.current.close()
        self.current = Progress(
            f"{self.prefix}{desc}", total, quiet=self.quiet, stream=self.stream
        ).__enter__()
        return self.current.update

    def write(self, line: str) -> None:
        """Print one line without breaking the current bar; nothing when quiet.

        :param line: the text, without a newline.
        """
        if self.current is not None:
            self.current.write(line)
        elif not self.quiet:
            print(line, file=self.stream if self.stream is not None else sys.stderr, flush=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program runs so that ``finally`` blocks and atomic writes finish."""


@contextmanager
def interruptible(resume: str, stream: TextIO | None = None) -> Iterator[None]:
    """Ctrl-C or SIGTERM inside the block: one line that says so and how to go on, exit 130 / 143.

    The work itself stops as an exception would stop it (checkpoints are written atomically, a
    sweep's store commits each run in one transaction), so nothing finished is lost.

    :param resume: what to do to resume, e.g. ``"rerun the same command"``.
    :param stream: where the line goes (default: stderr).
    """
    previous = None
    if threading.current_thread() is threading.main_thread():

        def terminate(signum: int, frame: FrameType | None) -> None:
            raise Terminated

        previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print(
            f"\n{'terminated (SIGTERM)' if terminated else 'interrupted (Ctrl-C)'}: {resume}",
            file=stream if stream is not None else sys.stderr,
            flush=True,
        )
        raise SystemExit(143 if terminated else 130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
