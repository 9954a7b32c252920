"""The screening table's rows: each candidate's CR, accuracy and wall time over its seeds, from the store.

CR and accuracy are the seeds table's (:func:`relaxlab.evaluation.seeds.seed_table`: mean and
sample standard deviation over the finished seeds) for the candidate's own relaxation; rows are
ranked by mean CR.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from relaxlab.evaluation.seeds import Stat, aggregate, seed_table, sweep_points
from relaxlab.experiments.screen.model import Candidate, Screen
from relaxlab.experiments.sweep import run_status
from relaxlab.store import Store


@attrs.frozen(kw_only=True)
class ScreenRow:
    """One candidate's line of the screening table.

    :param cr_auc: tightness (``None``: not measured, e.g. the natural run failed).
    :param certified: CR with its own relaxation, over the seeds that finished (fractions).
    :param accuracy: clean accuracy on the same images.
    :param seconds: wall time per run (training and certification; a resumed run: its last part).
    :param seeds: the seeds that finished.
    :param failed: runs that failed.
    """

    candidate: Candidate
    cr_auc: float | None
    certified: Stat | None
    accuracy: Stat | None
    seconds: Stat | None
    seeds: tuple[int, ...]
    failed: int


def screen_rows(screen: Screen, store: Store, aucs: Mapping[str, float]) -> list[ScreenRow]:
    """One row per candidate from the store's records, ranked by mean CR (unfinished last).

    CR, accuracy and their spread are the seeds table's (:func:`relaxlab.evaluation.seeds.seed_table`:
    mean and sample standard deviation over the finished seeds) for the candidate's own relaxation.
    """
    table = {(row.cell, row.certifier): row for row in seed_table(sweep_points(store, screen.sweep.record()))}
    rows = []
    for candidate in screen.candidates:
        seeds = table.get(((("relaxation", candidate.name),), candidate.name))
        runs = screen.runs_of(candidate)
        times = []
        for run in runs:
            trains = store.runs(kind="train", status="done", key=run.key)
            if trains and trains[-1].finished is not None:
                times.append(trains[-1].finished - trains[-1].created)
        rows.append(
            ScreenRow(
                candidate=candidate,
                cr_auc=aucs.get(candidate.name),
                certified=None if seeds is None else seeds.certified,
                accuracy=None if seeds is None else seeds.accuracy,
                seconds=aggregate(times) if times else None,
                seeds=() if seeds is None else tuple(seeds.seeds),
                failed=sum(run_status(store, run.key) == "failed" for run in runs),
            )
        )
    return sorted(rows, key=lambda r: -r.certified.mean if r.certified is not None else float("inf"))
