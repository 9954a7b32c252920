"""Sweeps in the results store: seeds aggregated per cell, hyper-parameters selected on validation.

A sweep (``relaxlab sweep``) records one run of kind :data:`SWEEP_KIND` whose config lists its runs
(``{"key", "params"}``: the run id and the values of the sweep's varying keys, ``seed`` among them)
and its ``select`` spec; every run's train and certify records carry the run id as their ``key``.
From these:

- :func:`seed_table` groups runs that differ only in the seed into a *cell* and gives mean ± std
  (sample standard deviation, n - 1) and n of accuracy, PGD accuracy and CR per cell and
  certifier (the layout of the paper's Tables 4 and 9);
- :func:`looseness_table` lays the cells of parameterised relaxations out as the paper's Table 4:
  one row per relaxation and its other parameters, one column per looseness ω;
- :func:`compare_with_reference` sets every relaxation's CR against IBP's in the same setting,
  saying whether the difference exceeds the seeds' spread (the paradox, measured);
- :func:`select` picks, within each group of cells that differ only in the ``over`` keys, the
  cell with the best mean *validation* metric (ties: the first in sweep order) and reports that
  cell's *test* numbers. The test set is never looked at to choose.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import attrs

from relaxlab.store import Store

#: Kind of the store record that describes a sweep.
SWEEP_KIND = "sweep"
Params = tuple[tuple[str, Any], ...]


@attrs.frozen
class Stat:
    """Mean, sample standard deviation (``None`` for one value) and count of some values."""

    mean: float
    std: float | None
    n: int

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``mean ± std`` scaled (percent by default); the mean alone for one value."""
        text = f"{scale * self.mean:.{digits}f}"
        return text if self.std is None else f"{text} ± {scale * self.std:.{digits}f}"


def aggregate(values: Sequence[float]) -> Stat:
    """Mean, sample standard deviation and count of ``values`` (non-empty)."""
    if not values:
        raise ValueError("aggregate needs at least one value")
    return Stat(
        mean=statistics.fmean(values),
        std=statistics.stdev(values) if len(values) > 1 else None,
        n=len(values),
    )


@attrs.frozen(kw_only=True)
class SweepPoint:
    """One finished run of a sweep with its certification numbers.

    :param key: run id.
    :param params: the sweep's varying keys (``seed`` among them) and their values.
    :param config: the train config.
    :param certs: certifier -> metrics (``accuracy``, ``pgd``, ``certified``, ``val_accuracy``, ...).
    """

    key: str
    params: Params
    config: dict[str, Any] = attrs.field(eq=False)
    certs: dict[str, dict[str, float]] = attrs.field(eq=False)

    @property
    def cell(self) -> Params:
        """The params without the seed."""
        return tuple((k, v) for k, v in self.params if k != "seed")


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def sweep_points(store: Store, record: dict[str, Any]) -> list[SweepPoint]:
    """The finished runs of the sweep ``record`` (a sweep run's config), in sweep order."""
    points = []
    for entry in record["runs"]:
        trains = store.runs(kind="train", status="done", key=entry["key"])
        if not trains:
            continue
        certs = {
            run.config["certifier"]: store.final_metrics(run.id)
            for run in store.runs(kind="certify", status="done", key=entry["key"])
        }
        params = tuple((k, _hashable(entry["params"][k])) for k in record["varying"])
        points.append(SweepPoint(key=entry["key"], params=params, config=trains[-1].config, certs=certs))
    return points


@attrs.frozen(kw_only=True)
class SeedRow:
    """One cell and certifier of the seeds table."""

    cell: Params
    certifier: str
    seeds: tuple[Any, ...]
    accuracy: Stat
    pgd: Stat | None
    certified: Stat
    val_certified: Stat | None


def _stat(points: Sequence[SweepPoint], certifier: str, metric: str) -> Stat | None:
    values = [p.certs[certifier][metric] for p in points if metric in p.certs.get(certifier, {})]
    return aggregate(values) if len(values) == len(points) and values else None


def _cells(points: Sequence[SweepPoint]) -> dict[Params, list[SweepPoint]]:
    cells: dict[Params, list[SweepPoint]] = {}
    for point in points:
        cells.setdefault(point.cell, []).append(point)
    return cells


def seed_table(points: Sequence[SweepPoint]) -> list[SeedRow]:
    """Mean ± std and n over seeds, per cell and certifier, in sweep order."""
    rows = []
    for cell, members in _cells(points).items():
        certifiers = list(dict.fromkeys(c for p in members for c in p.certs))
        for certifier in certifiers:
            have = [p for p in members if certifier in p.certs]
            accuracy, certified = _stat(have, certifier, "accuracy"), _stat(have, certifier, "certified")
            assert accuracy is not None and certified is not None
            rows.append(
                SeedRow(
                    cell=cell,
                    certifier=certifier,
                    seeds=tuple(dict(p.params).get("seed") for p in have),
                    accuracy=accuracy,
                    pgd=_stat(have, certifier, "pgd"),
                    certified=certified,
                    val_certified=_stat(have, certifier, "val_certified"),
                )
            )
    return rows


def own_certifiers(config: dict[str, Any], recorded: Sequence[str]) -> list[str]:
    """The recorded certifiers that are the run's own training relaxations (all recorded if none is)."""
    method = config.get("method", "certified")
    own: dict[str, list[Any]] = {
        "crown-ibp": ["CROWN-IBP (R)", "IBP"],
        "certified": [config.get("relaxation")],
    }
    return [c for c in recorded if c in own.get(method, [])] or list(recorded)


@attrs.frozen(kw_only=True)
class Selection:
    """The pick of one group: the chosen ``over`` values and the test numbers of that cell.

    :param group: the keys that stay fixed in the group (the varying keys but ``over`` and seed).
    :param picked: the chosen values of the ``over`` keys.
    :param certifier: the own certifier whose numbers are shown (best mean validation CR).
    :param validation: the validation metric of the pick (mean ± std over seeds).
    :param candidates: how many cells competed.
    """

    group: Params
    picked: Params
    certifier: str
    validation: Stat
    accuracy: Stat
    pgd: Stat | None
    certified: Stat
    candidates: int


def select(points: Sequence[SweepPoint], over: Sequence[str], metric: str = "certified") -> list[Selection]:
    """Per group, the cell with the best mean validation ``metric`` (``certified`` or ``accuracy``).

    A cell's certifier is its own training relaxation (the better on validation CR when it has two,
    as the CROWN-IBP defense does); cells without validation numbers cannot be selected.

    :raises ValueError: some run has no validation numbers (trained without ``validation``).
    """
    groups: dict[Params, list[tuple[Params, list[SweepPoint]]]] = {}
    for cell, members in _cells(points).items():
        group = tuple((k, v) for k, v in cell if k not in over)
        groups.setdefault(group, []).append((cell, members))
    selections = []
    for group, cells in groups.items():
        best: tuple[float, Params, str, list[SweepPoint]] | None = None
        for cell, members in cells:
            certifiers = own_certifiers(members[0].config, list(members[0].certs))
            scored = []
            for certifier in certifiers:
                val_cr = _stat(members, certifier, "val_certified")
                score = _stat(members, certifier, f"val_{metric}")
                if val_cr is None or score is None:
                    raise ValueError(
                        f"run {members[0].key} has no validation numbers; train with `validation` to select"
                    )
                scored.append((val_cr.mean, score.mean, certifier))
            _, score_mean, certifier = max(scored, key=lambda s: s[0])  # first of equals wins
            if best is None or score_mean > best[0]:
                best = (score_mean, cell, certifier, members)
        assert best is not None
        _, cell, certifier, members = best
        validation, accuracy = (
            _stat(members, certifier, f"val_{metric}"),
            _stat(members, certifier, "accuracy"),
        )
        certified = _stat(members, certifier, "certified")
        assert validation is not None and accuracy is not None and certified is not None
        selections.append(
            Selection(
                group=group,
                picked=tuple((k, v) for k, v in cell if k in over),
                certifier=certifier,
                validation=validation,
                accuracy=accuracy,
                pgd=_stat(members, certifier, "pgd"),
                certified=certified,
                candidates=len(cells),
            )
        )
    return selections


#: The parameter Table 4 puts in its columns: the looseness of the LooseIBP family.
LOOSENESS = "omega"


@attrs.frozen(kw_only=True)
class LoosenessTable:
    """CR (own certifier, mean ± std over seeds) of a sweep's relaxations by looseness: Table 4's layout.

    :param columns: the looseness values, ascending.
    :param rows: row label -> looseness -> CR; a row is a relaxation with its other parameters
        (``LooseIBP-DC(F=10)``) and the other varying keys of its cell.
    :param references: cells without the looseness parameter (``IBP``), label -> CR.
    """

    columns: tuple[float, ...]
    rows: dict[str, dict[float, Stat]]
    references: dict[str, Stat]


def _number(value: float) -> str:
    return f"{value:g}"


@attrs.frozen(kw_only=True)
class OwnRow:
    """A cell of the seeds table certified with the relaxation it trained with.

    :param relaxation: the relaxation object (parameters resolved, defaults filled in).
    :param name: the relaxation as the sweep file names it.
    :param rest: the cell's other varying keys and their values.
    :param certified: CR over seeds.
    """

    relaxation: Any
    name: str
    rest: Params
    certified: Stat

    @property
    def setting(self) -> list[str]:
        """The other varying keys as ``key=value`` texts."""
        return [f"{k}={v}" for k, v in self.rest]


def own_rows(rows: Sequence[SeedRow]) -> list[OwnRow]:
    """The rows of cells that vary ``relaxation``, each with its own certifier only, in table order.

    Names carry their parameters (``LooseIBP-DC(F=10, omega=0.5)``); the certifier may be written
    differently (its label, parameters in another order) and still be the cell's own relaxation.
    """
    from relaxlab.api import get_relaxation  # the facade's registry resolves names with parameters

    out = []
    for row in rows:
        cell = dict(row.cell)
        name = cell.pop("relaxation", None)
        if not isinstance(name, str):
            continue
        relaxation = get_relaxation(name, allow_unsound=True)
        if (
            row.certifier != name
            and get_relaxation(row.certifier, allow_unsound=True).label != relaxation.label
        ):
            continue  # certified with another relaxation than its own
        out.append(
            OwnRow(relaxation=relaxation, name=name, rest=tuple(cell.items()), certified=row.certified)
        )
    return out


def looseness_table(rows: Sequence[SeedRow], parameter: str = LOOSENESS) -> LoosenessTable | None:
    """Table 4's layout of a seeds table, or ``None`` when fewer than two looseness values were run.

    Cells take part as :func:`own_rows` gives them; a parameter a name leaves out has its declared
    default.
    """
    table: dict[str, dict[float, Stat]] = {}
    references: dict[str, Stat] = {}
    for own in own_rows(rows):
        values = own.relaxation.parameters
        if parameter not in values:
            references[", ".join([own.name, *own.setting])] = own.certified
            continue
        others = [f"{k}={_number(v)}" for k, v in values.items() if k != parameter]
        label = own.relaxation.name + (f"({', '.join(others)})" if others else "")
        table.setdefault(", ".join([label, *own.setting]), {})[values[parameter]] = own.certified
    columns = tuple(sorted({v for cells in table.values() for v in cells}))
    if len(columns) < 2:
        return None
    return LoosenessTable(columns=columns, rows=table, references=references)


#: The relaxation the paradox compares every other with.
REFERENCE = "IBP"


@attrs.frozen(kw_only=True)
class Comparison:
    """The reference relaxation's CR against another's, in one setting (the other varying keys).

    :param difference: mean CR of the reference minus the other's (a fraction; > 0: the reference
        certifies more).
    :param spread: the sum of the two sample standard deviations (``None`` when either has a
        single seed: no spread to compare with).
    """

    name: str
    other: str
    rest: Params
    reference: Stat
    against: Stat
    difference: float
    spread: float | None

    @property
    def verdict(self) -> str:
        """Whether the difference exceeds the seeds' spread, and which way."""
        if self.spread is None:
            return "one seed: no spread"
        if abs(self.difference) <= self.spread:
            return "within the spread"
        return f"{self.name} {'better' if self.difference > 0 else 'worse'}, beyond the spread"


def compare_with_reference(rows: Sequence[SeedRow], reference: str = REFERENCE) -> list[Comparison]:
    """Every other relaxation's CR against ``reference``'s in the same setting (own certifiers).

    "Beyond the spread" means the means differ by more than the two standard deviations added: the
    ``mean ± std`` ranges do not overlap. With three seeds this is a plain reading of the numbers,
    not a significance test.
    """
    owns = own_rows(rows)
    refs = {o.rest: o for o in owns if o.relaxation.label == reference}
    out = []
    for own in owns:
        ref = refs.get(own.rest)
        if ref is None or own is ref:
            continue
        stds = (ref.certified.std, own.certified.std)
        spread = None if None in stds else sum(s for s in stds if s is not None)
        out.append(
            Comparison(
                name=reference,
                other=own.name,
                rest=own.rest,
                reference=ref.certified,
                against=own.certified,
                difference=ref.certified.mean - own.certified.mean,
                spread=spread,
            )
        )
    return out


def _render_comparison(comparisons: Sequence[Comparison], reference: str) -> list[str]:
    out = [
        f"### {reference} against each other relaxation (own certifiers, CR in %)",
        "",
        f"Difference: mean CR of {reference} minus the other's; spread: the two sample standard deviations "
        "added (beyond it, the mean ± std ranges do not overlap).",
        "",
        "| relaxation | "
        + "".join(f"{k} | " for k, _ in comparisons[0].rest)
        + f"CR | {reference} CR | difference | spread | verdict |",
        "|---|" + "---|" * len(comparisons[0].rest) + "---:|---:|---:|---:|---|",
    ]
    for c in comparisons:
        out.append(
            f"| {c.other} | " + "".join(f"{v} | " for v in _cells_text(c.rest)) + f"{c.against.format()} | "
            f"{c.reference.format()} | {100 * c.difference:+.1f} | "
            f"{'—' if c.spread is None else f'{100 * c.spread:.1f}'} | {c.verdict} |"
        )
    out.append("")
    return out


def _render_looseness(table: LoosenessTable) -> list[str]:
    out = [
        "### CR by looseness ω (Table 4 layout; own certifier, mean ± std over seeds, in %)",
        "",
        "| relaxation | " + " | ".join(f"ω = {_number(c)}" for c in table.columns) + " |",
        "|---|" + "---:|" * len(table.columns),
    ]
    for label, cells in table.rows.items():
        out.append(
            f"| {label} | "
            + " | ".join(cells[c].format() if c in cells else "" for c in table.columns)
            + " |"
        )
    out.append("")
    if table.references:
        out += [
            "Without looseness: " + "; ".join(f"{k} {v.format()}" for k, v in table.references.items()) + ".",
            "",
        ]
    return out


def _cells_text(params: Params) -> list[str]:
    return [str(list(v)) if isinstance(v, tuple) else str(v) for _, v in params]


def render_sweeps(store: Store) -> list[str]:
    """Markdown sections for every sweep in the store: seeds table, selection, failed runs."""
    out: list[str] = []
    for record in store.runs(kind=SWEEP_KIND):
        sweep = record.config
        points = sweep_points(store, sweep)
        keys = [k for k in sweep["varying"] if k != "seed"]
        total = len(sweep["runs"])
        out += [f"## Sweep {record.name}: {len(points)}/{total} runs done ({record.status})", ""]
        rows = seed_table(points)
        if rows:
            out += [
                "Mean ± std over seeds (sample std), n seeds; values in %.",
                "",
                "| " + " | ".join([*keys, "certified with", "n", "Acc", "PGD", "CR", "val CR"]) + " |",
                "|" + "---|" * (len(keys) + 2) + "---:|" * 4,
            ]
            for row in rows:
                cells = [
                    *_cells_text(row.cell),
                    row.certifier,
                    str(row.certified.n),
                    row.accuracy.format(),
                    "—" if row.pgd is None else row.pgd.format(),
                    row.certified.format(),
                    "—" if row.val_certified is None else row.val_certified.format(),
                ]
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
            if "relaxation" in keys:
                if (loose := looseness_table(rows)) is not None:
                    out += _render_looseness(loose)
                if comparisons := compare_with_reference(rows):
                    out += _render_comparison(comparisons, REFERENCE)
        spec = sweep.get("select")
        if spec and points:
            over = spec["over"]
            group_keys = [k for k in keys if k not in over]
            out += [
                f"### Selected on the validation split (over {', '.join(over)}; by validation {spec['metric']})",
                "",
                "Test numbers of the picked configuration, mean ± std over seeds; values in %.",
                "",
                "| "
                + " | ".join(
                    [
                        *group_keys,
                        *(f"picked {k}" for k in over),
                        "certified with",
                        "candidates",
                        f"val {spec['metric']}",
                        "n",
                        "Acc",
                        "PGD",
                        "CR",
                    ]
                )
                + " |",
                "|" + "---|" * (len(group_keys) + len(over) + 1) + "---:|" * 6,
            ]
            try:
                selections = select(points, over, spec["metric"])
            except ValueError as error:
                out += [f"(no selection: {error})", ""]
                selections = []
            for pick in selections:
                cells = [
                    *_cells_text(pick.group),
                    *_cells_text(pick.picked),
                    pick.certifier,
                    str(pick.candidates),
                    pick.validation.format(),
                    str(pick.certified.n),
                    pick.accuracy.format(),
                    "—" if pick.pgd is None else pick.pgd.format(),
                    pick.certified.format(),
                ]
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
        failed = [r for e in sweep["runs"] for r in store.runs(kind="train", status="failed", key=e["key"])]
        if failed:
            out += ["Failed runs:", ""]
            out += [f"- `{run.key}`: {run.error}" for run in failed]
            out.append("")
    return out
