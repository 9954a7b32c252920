"""Running a screen: its sweep, CR-AUC, the rows, and the files of :data:`OUTPUTS`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import attrs

from relaxlab.experiments.executors import Executor
from relaxlab.experiments.screen.formats import screen_csv, screen_json, screen_markdown
from relaxlab.experiments.screen.model import Screen
from relaxlab.experiments.screen.plots import plot_genealogy, plot_screen
from relaxlab.experiments.screen.rows import ScreenRow, screen_rows
from relaxlab.experiments.screen.tightness import measure_tightness
from relaxlab.experiments.sweep import STORE_NAME, SweepSummary, run_sweep
from relaxlab.store import Store

#: Files :func:`run_screen` writes into the output directory.
OUTPUTS = ("screen.md", "screen.csv", "screen.json", "screen.png", "genealogy.png")


@attrs.frozen(kw_only=True, eq=False)
class ScreenReport:
    """What :func:`run_screen` did and found: the rows ranked by mean CR, the sweep's summary, the files."""

    rows: tuple[ScreenRow, ...]
    summary: SweepSummary
    files: tuple[Path, ...]
    markdown: str


def run_screen(
    screen: Screen,
    out_dir: str | Path,
    executor: Executor,
    *,
    device: str = "cpu",
    progress: Callable[[str, int], Callable[[float], None]] | None = None,
) -> ScreenReport:
    """Train, certify and measure every candidate; write the table and the plots into ``out_dir``.

    :param screen: a validated screen (:func:`load_screen`).
    :param out_dir: run directories, ``results.sqlite`` and the outputs (:data:`OUTPUTS`).
    :param executor: where the runs execute.
    :param device: where runs train and certify, and where CR-AUC is measured.
    :param progress: called with a phase name (``runs``, ``tightness``) and its size; returns the
        callback called with the units done.
    :return: the rows (also in the files), ranked by mean CR.
    """
    out_dir = Path(out_dir)
    summary = run_sweep(screen.sweep, out_dir, executor, progress=progress, device=device)
    with Store(out_dir / STORE_NAME) as store:
        aucs = measure_tightness(screen, out_dir, store, device=device, progress=progress)
        rows = screen_rows(screen, store, aucs)
    markdown = screen_markdown(screen, rows)
    files = [out_dir / name for name in OUTPUTS]
    files[0].write_text(markdown, encoding="utf-8")
    files[1].write_text(screen_csv(rows), encoding="utf-8")
    files[2].write_text(json.dumps(screen_json(screen, rows), indent=1, ensure_ascii=False), encoding="utf-8")
    plot_screen(screen, rows, files[3])
    plot_genealogy(screen, rows, files[4])
    return ScreenReport(rows=tuple(rows), summary=summary, files=tuple(files), markdown=markdown)
