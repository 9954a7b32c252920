"""Screening: candidate relaxations trained with k seeds, certified with their own, ranked (Table 3).

A screen file (TOML) names the candidates and one screening schedule:

- ``name``: the screen's name (default: the file's stem; the output directory is ``runs/<name>``);
- ``seeds``: every candidate trains once per seed (default ``[0]``);
- ``[candidates]``: ``discovered = true`` (every kept result of ``relaxlab discover``), ``families``
  (the kept results of these discovery families: ``combination``, ``switch``, ``soft``,
  ``interval``), ``names`` (registered names, parameters allowed, or names ``relaxlab discover``
  generated) and ``exclude`` (names to leave out); at least one of the first three;
- ``[schedule]``: the train-config keys of every screening run (a sweep's ``[base]``, ``config =
  "file.toml"`` allowed); ``name``, ``seed``, ``method`` and ``relaxation`` are the screen's;
- ``[certify]``: ``n``, ``eps`` and ``pgd`` as in a sweep; each candidate certifies with its own
  relaxation;
- ``[tightness]``: ``eps_max``, ``points`` and ``n`` of the CR curves whose area (CR-AUC) measures
  each candidate's tightness on one naturally trained network, and optionally ``checkpoint``: that
  network, instead of one the screen trains naturally with the schedule and the first seed.

:func:`load_screen` validates everything before any work (a :class:`ScreenError` names the key and
the fix) and runs discovery once (for candidates, lines, flags and the genealogy). The runs *are* a
sweep (:mod:`relaxlab.experiments.sweep`): candidates × seeds plus the natural run, with run ids,
resuming, failures and executors (in-process or Ray) as ``relaxlab sweep`` has them. The generated
candidates, which no plugin provides, travel with the tasks and are known by name only where they
are used (:func:`relaxlab.api.extended_registry`: while the sweep is built, in each run, in any
process, and while CR-AUC is measured); no registry is changed. :func:`run_screen` runs it,
measures CR-AUC per candidate (recorded in the store, so a resumed screen measures only what is
missing), aggregates CR over seeds from the store's records and writes ``screen.md`` / ``.csv`` /
``.json``, ``screen.png`` (CR against tightness with the Pareto front) and ``genealogy.png`` (the
genealogy coloured by CR).

One module per concept:

- :mod:`~relaxlab.experiments.screen.model`: the values (:class:`Screen`, :class:`Candidate`,
  :class:`TightnessSpec`, :class:`ScreenError`);
- :mod:`~relaxlab.experiments.screen.file`: reading and validating a screen file;
- :mod:`~relaxlab.experiments.screen.candidates`: the candidates ``[candidates]`` selects;
- :mod:`~relaxlab.experiments.screen.tightness`: CR-AUC on the natural network;
- :mod:`~relaxlab.experiments.screen.rows`: the rows, aggregated over seeds from the store;
- :mod:`~relaxlab.experiments.screen.formats`: Markdown, CSV and JSON;
- :mod:`~relaxlab.experiments.screen.plots`: the two plots;
- :mod:`~relaxlab.experiments.screen.run`: :func:`run_screen`.
"""

from __future__ import annotations

from relaxlab.experiments.screen.candidates import choose
from relaxlab.experiments.screen.file import (
    CANDIDATE_KEYS,
    CERTIFY_KEYS,
    DISCOVERY_FAMILIES,
    SCREEN_KEYS,
    SET_BY_SCREEN,
    TIGHTNESS_KEYS,
    load_screen,
    parse_screen,
)
from relaxlab.experiments.screen.formats import (
    TABLE_HEADERS,
    screen_csv,
    screen_json,
    screen_markdown,
    table_cells,
)
from relaxlab.experiments.screen.model import (
    NATURAL,
    Candidate,
    Screen,
    ScreenError,
    Selection,
    TightnessSpec,
)
from relaxlab.experiments.screen.plots import pareto_front, plot_genealogy, plot_screen
from relaxlab.experiments.screen.rows import ScreenRow, screen_rows
from relaxlab.experiments.screen.run import OUTPUTS, ScreenReport, run_screen
from relaxlab.experiments.screen.tightness import measure_tightness, tightness_checkpoint

__all__ = [
    "CANDIDATE_KEYS",
    "CERTIFY_KEYS",
    "DISCOVERY_FAMILIES",
    "NATURAL",
    "OUTPUTS",
    "SCREEN_KEYS",
    "SET_BY_SCREEN",
    "TABLE_HEADERS",
    "TIGHTNESS_KEYS",
    "Candidate",
    "Screen",
    "ScreenError",
    "ScreenReport",
    "ScreenRow",
    "Selection",
    "TightnessSpec",
    "choose",
    "load_screen",
    "measure_tightness",
    "parse_screen",
    "pareto_front",
    "plot_genealogy",
    "plot_screen",
    "run_screen",
    "screen_csv",
    "screen_json",
    "screen_markdown",
    "screen_rows",
    "table_cells",
    "tightness_checkpoint",
]
