"""The screening table in three formats: Markdown (the Table 3 analogue), CSV and JSON.

Each takes the rows of :mod:`relaxlab.experiments.screen.rows`; :func:`table_cells` gives one row's
cells as the Markdown table (and the CLI's terminal table) shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from relaxlab.evaluation.seeds import Stat
from relaxlab.experiments.screen.model import Screen
from relaxlab.experiments.screen.rows import ScreenRow


def _schedule_text(screen: Screen) -> str:
    config = screen.sweep.runs[0].config
    batches = f"at most {config.max_batches} batches" if config.max_batches else "all batches"
    subset = (
        f"the first {config.train_subset} training images" if config.train_subset else "all training images"
    )
    return (
        f"{config.architecture} on {config.dataset} ({subset}), {config.epochs} epoch"
        f"{'s' if config.epochs != 1 else ''} of {batches} of "
        f"{config.batch_size} ({config.warmup_epochs} warm-up, {config.rampup_epochs} ramp-up), "
        f"ε_train = {config.eps_train:g}, κ {config.kappa_start:g} → {config.kappa_end:g}, lr {config.lr:g}"
    )


def _fmt_stat(stat: Stat | None, scale: float = 100.0, digits: int = 1) -> str:
    return "—" if stat is None else stat.format(scale=scale, digits=digits)


def _fmt_seconds(stat: Stat | None) -> str:
    if stat is None:
        return "—"
    return f"{stat.mean:.1f} s" if stat.std is None else f"{stat.mean:.1f} ± {stat.std:.1f} s"


def table_cells(row: ScreenRow, rank: int) -> list[str]:
    """The cells of a row, in :data:`TABLE_HEADERS` order."""
    c = row.candidate
    cr = _fmt_stat(row.certified)
    if row.failed:
        cr += f" ({row.failed} failed)"
    unstable = c.lines[1] + (f" on {c.bounds}" if c.bounds else "")
    return [
        str(rank),
        c.name,
        c.lines[0],
        unstable,
        c.lines[2],
        *c.flags,
        "—" if row.cr_auc is None else f"{row.cr_auc:.2f}",
        cr,
        str(len(row.seeds)),
        _fmt_stat(row.accuracy),
        _fmt_seconds(row.seconds),
    ]


#: Columns of the screening table.
TABLE_HEADERS = (
    "#",
    "relaxation",
    "negative",
    "unstable",
    "positive",
    "C",
    "S",
    "CR-AUC",
    "CR (%)",
    "seeds",
    "Acc (%)",
    "time / run",
)


def screen_markdown(screen: Screen, rows: Sequence[ScreenRow]) -> str:
    """The Table 3 analogue: lines per case, flags, CR-AUC and CR (mean ± std over seeds), ranked by CR."""
    spec = screen.tightness
    eps = screen.sweep.runs[0].eps
    network = (
        "the given naturally trained network"
        if spec.checkpoint
        else (
            f"a naturally trained {screen.sweep.runs[0].config.architecture} (same schedule, seed {screen.seeds[0]})"
        )
    )
    lines = [
        f"Screen `{screen.name}`: {len(screen.candidates)} candidates × {len(screen.seeds)} seeds "
        f"({', '.join(map(str, screen.seeds))}); {_schedule_text(screen)}.",
        "",
        f"CR: certified with the candidate's own relaxation on {screen.images} at ε = {eps:g}; "
        "mean ± sample std over the seeds that finished (seeds: how many). "
        f"CR-AUC: area under the CR curve on {network}, {spec.points} radii in [0, {spec.eps_max:g}], "
        f"n = {spec.n}. Lines `lower..upper` per stability case. Ranked by mean CR.",
        "",
        "| " + " | ".join(TABLE_HEADERS) + " |",
        "|---:|---|---|---|---|:-:|:-:|---:|---:|---:|---:|---:|",
    ]
    for rank, row in enumerate(rows, 1):
        cells = [cell.replace("|", "\\|") for cell in table_cells(row, rank)]
        cells[1] = f"`{cells[1]}`" if row.candidate.generated else cells[1]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "C: continuous (✓ favourable); S: not sensitive (✓ favourable). Time: wall time per run, "
        "training and certification, one torch thread.",
    ]
    return "\n".join(lines) + "\n"


def screen_csv(rows: Sequence[ScreenRow]) -> str:
    """The table as CSV (CR and accuracy in %, ``not_sensitive`` True where the table has ✓S)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "rank",
            "relaxation",
            "family",
            "negative",
            "unstable",
            "positive",
            "bounds",
            "continuous",
            "not_sensitive",
            "cr_auc",
            "cr_mean",
            "cr_std",
            "seeds",
            "accuracy_mean",
            "accuracy_std",
            "seconds_mean",
            "seconds_std",
            "failed",
        ]
    )

    def number(value: float | None, scale: float = 1.0) -> str:
        return "" if value is None else f"{scale * value:.4f}"

    def mean_std(stat: Stat | None, scale: float = 1.0) -> list[str]:
        return ["", ""] if stat is None else [number(stat.mean, scale), number(stat.std, scale)]

    for rank, row in enumerate(rows, 1):
        c = row.candidate
        writer.writerow(
            [
                rank,
                c.name,
                c.family,
                *c.lines,
                c.bounds,
                "" if c.continuous is None else c.continuous,
                "" if c.sensitive is None else not c.sensitive,
                number(row.cr_auc),
                *mean_std(row.certified, 100),
                len(row.seeds),
                *mean_std(row.accuracy, 100),
                *mean_std(row.seconds),
                row.failed,
            ]
        )
    return out.getvalue()


def screen_json(screen: Screen, rows: Sequence[ScreenRow]) -> dict[str, Any]:
    """Everything of the table as plain data, with the schedule and the tightness settings."""

    def stat(value: Stat | None) -> dict[str, Any] | None:
        return None if value is None else attrs.asdict(value)

    return {
        "screen": screen.name,
        "seeds": list(screen.seeds),
        "schedule": {
            k: v
            for k, v in screen.sweep.runs[0].config.to_dict().items()
            if k not in ("name", "seed", "relaxation")
        },
        "certify": {
            "n": screen.sweep.certify.n,
            "eps": screen.sweep.runs[0].eps,
            "pgd": screen.sweep.certify.pgd,
        },
        "tightness": attrs.asdict(screen.tightness),
        "rows": [
            {
                "relaxation": r.candidate.name,
                "family": r.candidate.family,
                "lines": list(r.candidate.lines),
                "bounds": r.candidate.bounds,
                "continuous": r.candidate.continuous,
                "sensitive": r.candidate.sensitive,
                "cr_auc": r.cr_auc,
                "certified": stat(r.certified),
                "accuracy": stat(r.accuracy),
                "seconds": stat(r.seconds),
                "seeds": list(r.seeds),
                "failed": r.failed,
            }
            for r in rows
        ],
    }
