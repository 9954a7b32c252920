"""Paper-style tables from the results store: Table 2 / Table 11 layout and the Table 10 matrix.

**What is a certification.** Two records hold one: a ``certify`` run (``relaxlab certify``, the
paradox experiment; accuracy, PGD accuracy and CR of one checkpoint with one relaxation on the
first ``n`` test images) and the final certification of a ``train`` run (its test accuracy and
CR with the training relaxation, no PGD). Nothing is ever replaced: every certification stays
in the store and is listed, with its ``n``, radius and source, under "All certifications".

**Which one a table shows.** Rows are networks, labelled by the method they were trained with
(the relaxation, ``CROWN-IBP`` for the defense, ``natural``) beside their training objective
(``kappa-mix``, ``SABR(lambda=0.6)``, ...); when several networks share a
method, the label adds the network's run directory, so distinct runs never share a name.
Columns are accuracy, PGD accuracy and CR (in %) per ``eps_test``, grouped by dataset and
architecture. A cell shows the network's certification with its own relaxation (for the
CROWN-IBP defense either of its two, for natural training any) chosen by one rule,
:func:`pick`: the most test images ``n``; among equal ``n`` the higher CR where the method has
two own certifiers, then one with PGD, then the latest. The Table 10 matrix picks per
(network, certifier) by the same rule. Sweeps (``relaxlab sweep``) get their own sections
(:mod:`relaxlab.evaluation.seeds`) and stay out of these tables.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from relaxlab.evaluation.seeds import render_sweeps
from relaxlab.registry import PAPER_RELAXATIONS
from relaxlab.store import Run, Store

#: Row order of the reports: natural training, the paper's five, the CROWN-IBP defense.
METHOD_ORDER = ("natural", *PAPER_RELAXATIONS, "CROWN-IBP")
#: The rule of :func:`pick`, as the report states it.
PICK_RULE = (
    "each cell is one certification of that network with its own relaxation: the one on the most test "
    "images (n); among equal n the higher CR where the method has two own certifiers (CROWN-IBP: IBP or "
    "CROWN-IBP (R)), then one with PGD, then the latest. Every certification is listed under "
    '"All certifications".'
)


@attrs.frozen(kw_only=True)
class CertifyRow:
    """One certification from the store: a ``certify`` run, or a training run's final certification.

    :param network: the certified network: its run directory (the checkpoint's directory), or
        ``train run <id>`` for a training record that does not say where it wrote.
    :param source: ``certify`` or ``train`` (the final certification of a training run, no PGD).
    :param run_id: the store record it comes from.
    :param n: test images behind the numbers (``None``: not recorded).
    """

    dataset: str
    architecture: str
    method: str
    eps: float
    certifier: str
    objective: str = "kappa-mix"
    accuracy: float
    pgd: float | None
    certified: float
    checkpoint: str
    run_id: int
    n: int | None = None
    network: str = ""
    source: str = "certify"
    name: str = ""


def _network(checkpoint: str) -> str:
    """A checkpoint's network, spelled one way: the run directory of a ``checkpoint.pt``, else the file."""
    path = os.path.normpath(checkpoint)
    return os.path.dirname(path) or "." if os.path.basename(path) == "checkpoint.pt" else path


def certify_rows(store: Store) -> list[CertifyRow]:
    """Every certification in the store but those of sweeps: ``certify`` runs and finished training runs."""
    rows = []
    for run in store.runs(kind="certify", status="done"):
        config = run.config
        if config.get("sweep"):
            continue
        metrics = store.final_metrics(run.id)
        checkpoint = str(config.get("checkpoint", "?"))
        rows.append(
            CertifyRow(
                dataset=config.get("dataset", "?"),
                architecture=config.get("architecture", "?"),
                method=_canonical_method(config.get("method_label", "?")),
                objective=config.get("objective", _objective_before(config.get("method_label", "?"))),
                eps=float(config.get("eps", 0.0)),
                certifier=config.get("certifier", "?"),
                accuracy=metrics.get("accuracy", float("nan")),
                pgd=metrics.get("pgd"),
                certified=metrics.get("certified", float("nan")),
                checkpoint=checkpoint,
                run_id=run.id,
                n=config.get("n"),
                network=_network(checkpoint),
                source="certify",
                name=run.name,
            )
        )
    rows += [
        row for run in store.runs(kind="train", status="done") if (row := _trained(store, run)) is not None
    ]
    return rows


def _objective_before(method: str) -> str:
    """The objective of a record written before objectives were recorded (the paper's or the defense)."""
    return {"CROWN-IBP": "CROWN-IBP", "natural": "-"}.get(method, "kappa-mix")


def _trained(store: Store, run: Run) -> CertifyRow | None:
    """A finished training run's final certification (``None`` for a sweep's run or none recorded)."""
    if run.key is not None:  # a sweep's run: its certify records are in the sweep's section
        return None
    config, metrics = run.config, store.final_metrics(run.id)
    if "test_certified" not in metrics:
        return None
    method = _method(config)
    run_dir = config.get("run_dir")
    n = metrics.get("test_n")
    return CertifyRow(
        dataset=config.get("dataset", "?"),
        architecture=config.get("architecture", "?"),
        method=method,
        objective=config.get("objective", _objective_before(method)),
        eps=float(config.get("eps_test", 0.0)),
        certifier={"natural": "IBP", "CROWN-IBP": "CROWN-IBP (R)"}.get(method, method),
        accuracy=metrics.get("test_accuracy", float("nan")),
        pgd=None,
        certified=metrics["test_certified"],
        checkpoint="?" if run_dir is None else os.path.join(run_dir, "checkpoint.pt"),
        run_id=run.id,
        n=None if n is None else int(n),
        network=f"train run {run.id}" if run_dir is None else os.path.normpath(run_dir),
        source="train",
        name=run.name,
    )


def _method(config: dict[str, Any]) -> str:
    """The row label of a training config (as :attr:`TrainConfig.label`, the relaxation as registered)."""
    label = {"natural": "natural", "crown-ibp": "CROWN-IBP"}.get(
        config.get("method", ""), config.get("relaxation", "?")
    )
    return _canonical_method(label)


def _canonical_method(label: str) -> str:
    """A method label with its relaxation spelled as the registry spells it (``ibp`` and ``IBP`` are one row)."""
    return label if label in ("natural", "CROWN-IBP", "?") else _canonical(label)


def _canonical(name: str) -> str:
    """A relaxation name as the registry spells it (the name itself when it does not resolve)."""
    from relaxlab.api import get_registry

    try:
        return get_registry().relaxations.select(name)[0]
    except (LookupError, ValueError):
        return name


def _own(method: str, certifier: str) -> bool:
    if method == "CROWN-IBP":
        return certifier in ("CROWN-IBP (R)", "IBP")
    if method == "natural":
        return True
    return certifier == method


def _order(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def pick(rows: Iterable[CertifyRow]) -> CertifyRow:
    """The certification a table shows among ``rows`` (of one network and radius): :data:`PICK_RULE`."""

    def rank(row: CertifyRow) -> tuple[int, float, bool, int]:
        several = row.method in ("CROWN-IBP", "natural")
        return (row.n or 0, row.certified if several else 0.0, row.pgd is not None, row.run_id)

    return max(rows, key=rank)


def display_names(rows: Sequence[CertifyRow]) -> dict[tuple[str, str, str, str], str]:
    """(dataset, architecture, method, network) -> the row label: the method, with the network where it is shared."""
    networks: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        key = (row.dataset, row.architecture, row.method)
        if row.network not in networks.setdefault(key, []):
            networks[key].append(row.network)
    return {
        (*key, network): key[2] if len(group) == 1 else f"{key[2]} ({network})"
        for key, group in networks.items()
        for network in group
    }


def main_table(rows: Sequence[CertifyRow]) -> list[dict[str, Any]]:
    """Table 2 / 11 records: per network and ``eps_test`` the certification :func:`pick` chooses."""
    names = display_names(rows)
    cells: dict[tuple[str, str, str, str, float], list[CertifyRow]] = {}
    for row in rows:
        if _own(row.method, row.certifier):
            cells.setdefault((row.dataset, row.architecture, row.method, row.network, row.eps), []).append(
                row
            )
    records = []
    for key in sorted(cells, key=lambda k: (k[0], k[1], k[4], _order(k[2]), names[k[:4]])):
        row = pick(cells[key])
        records.append(
            {
                "dataset": row.dataset,
                "architecture": row.architecture,
                "eps_test": row.eps,
                "method": row.method,
                "objective": row.objective,
                "network": names[key[:4]],
                "n": row.n,
                "accuracy": 100 * row.accuracy,
                "pgd": None if row.pgd is None else 100 * row.pgd,
                "certified": 100 * row.certified,
                "certifier": row.certifier,
                "source": row.source,
                "run": row.run_id,
            }
        )
    return records


def matrix_table(
    rows: Sequence[CertifyRow],
) -> dict[tuple[str, str, float], dict[str, dict[str, CertifyRow]]]:
    """Table 10: per (dataset, architecture, eps), network label -> certifier -> the picked certification.

    Networks come in the report's method order.
    """
    names = display_names(rows)
    groups: dict[tuple[str, str, float], dict[str, dict[str, list[CertifyRow]]]] = {}
    for row in sorted(rows, key=lambda r: (_order(r.method), r.network)):
        label = names[(row.dataset, row.architecture, row.method, row.network)]
        group = groups.setdefault((row.dataset, row.architecture, row.eps), {})
        group.setdefault(label, {}).setdefault(row.certifier, []).append(row)
    return {
        key: {label: {c: pick(found) for c, found in by.items()} for label, by in group.items()}
        for key, group in groups.items()
    }


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _n(values: Sequence[int | None]) -> str:
    """The test images behind some numbers: one count, or the distinct counts joined by '/'."""
    known = sorted({v for v in values if v is not None})
    return "/".join(str(v) for v in known) or "?"


def render_markdown(store: Store) -> str:
    """The main table (Table 2/11 layout), the matrices (Table 10), every certification, the train runs."""
    rows = certify_rows(store)
    out = ["# relaxlab results", ""]
    records = main_table(rows)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["dataset"], record["architecture"]), []).append(record)
    for (dataset, architecture), group in groups.items():
        epses = sorted({r["eps_test"] for r in group})
        networks = list(
            dict.fromkeys(
                r["network"] for r in sorted(group, key=lambda r: (_order(r["method"]), r["network"]))
            )
        )
        out += [f"## {dataset}, {architecture} (Table 2 / 11 layout; values in %)", ""]
        header = (
            "| Method | Objective | n | "
            + " | ".join(f"Acc ε={e:g} | PGD ε={e:g} | CR ε={e:g}" for e in epses)
            + " |"
        )
        out += [header, "|---|---|---:|" + "---:|" * (3 * len(epses))]
        for network in networks:
            mine = [r for r in group if r["network"] == network]
            cells = [_n([r["n"] for r in mine])]
            for eps in epses:
                match = [r for r in mine if r["eps_test"] == eps]
                cells += (
                    [_fmt(match[0]["accuracy"]), _fmt(match[0]["pgd"]), _fmt(match[0]["certified"])]
                    if match
                    else ["", "", ""]
                )
            out.append(f"| {network} | {mine[0]['objective']} | " + " | ".join(cells) + " |")
        out += [
            "",
            f"n: test images. Pick: {PICK_RULE} PGD —: a training run's own final certification (no attack).",
            "",
        ]
    for (dataset, architecture, eps), matrix in matrix_table(rows).items():
        certifiers = sorted({c for by in matrix.values() for c in by}, key=_order)
        if max(len(by) for by in matrix.values()) < 2:  # only the diagonal: nothing to add
            continue
        behind = [row.n for by in matrix.values() for row in by.values()]
        out += [
            f"## {dataset}, {architecture}, ε={eps:g}: CR (%) trained with (rows) × certified with (columns), "
            "Table 10 layout",
            "",
            f"n = {_n(behind)} test images (each cell picked as in the main table).",
            "",
            "| Trained \\ Certified | " + " | ".join(certifiers) + " |",
            "|---|" + "---:|" * len(certifiers),
        ]
        for label, by in matrix.items():
            out.append(
                f"| {label} | "
                + " | ".join(_fmt(100 * by[c].certified if c in by else None) for c in certifiers)
                + " |"
            )
        out.append("")
    out += _all_certifications(rows, records)
    out += render_sweeps(store)
    out += _training_runs(store)
    out += _tightness(store)
    return "\n".join(out)


def _all_certifications(rows: Sequence[CertifyRow], shown: Sequence[dict[str, Any]]) -> list[str]:
    """Every certification with its settings; ``✓`` where the main table shows it."""
    if not rows:
        return []
    names = display_names(rows)
    picked = {record["run"] for record in shown}
    out = [
        "## All certifications",
        "",
        "Every certification in the store (sweeps aside), oldest first; ✓: the one the main table shows.",
        "",
        "| run | network | trained | certified with | ε | n | Acc | PGD | CR | from | shown |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---|:-:|",
    ]
    for row in sorted(rows, key=lambda r: r.run_id):
        source = "certify" if row.source == "certify" else "training's final certification"
        out.append(
            f"| {row.run_id} | {row.network} | {names[(row.dataset, row.architecture, row.method, row.network)]} | "
            f"{row.certifier} | {row.eps:g} | {_n([row.n])} | {_fmt(100 * row.accuracy)} | "
            f"{_fmt(None if row.pgd is None else 100 * row.pgd)} | {_fmt(100 * row.certified)} | {source} | "
            f"{'✓' if row.run_id in picked else ''} |"
        )
    out.append("")
    return out


def _training_runs(store: Store) -> list[str]:
    """The training runs (sweeps' runs are in their sweep's section), each named with its directory."""
    trains = [run for run in store.runs(kind="train") if run.key is None]
    if not trains:
        return []
    out = [
        "## Training runs",
        "",
        "| id | name | directory | dataset | arch | method | objective | epochs | status |",
        "|---:|---|---|---|---|---|---|---:|---|",
    ]
    for run in trains:
        c = run.config
        out.append(
            f"| {run.id} | {run.name} | {c.get('run_dir', '?')} | {c.get('dataset')} | {c.get('architecture')} "
            f"| {_method(c)} | {c.get('objective', _objective_before(_method(c)))} | {c.get('epochs')} "
            f"| {run.status} |"
        )
    out.append("")
    return out


def _tightness(store: Store) -> list[str]:
    runs = store.runs(kind="tightness", status="done")
    if not runs:
        return []
    out = [
        "## Tightness (CR-AUC, Table 6 layout; relaxations in the paper's order)",
        "",
        "| id | checkpoint | n | relaxation | CR-AUC |",
        "|---:|---|---:|---|---:|",
    ]
    for run in runs:
        aucs = {
            name[7:]: value
            for name, value in store.final_metrics(run.id).items()
            if name.startswith("cr_auc/")
        }
        n = _n([run.config.get("n")])
        for name in sorted(aucs, key=_order):
            out.append(f"| {run.id} | {run.config.get('checkpoint')} | {n} | {name} | {aucs[name]:.2f} |")
    out.append("")
    return out


def render_csv(store: Store) -> str:
    """The main-table records as CSV (one row per dataset, architecture, eps, network)."""
    buffer = io.StringIO()
    fields = [
        "dataset",
        "architecture",
        "eps_test",
        "method",
        "objective",
        "n",
        "accuracy",
        "pgd",
        "certified",
        "certifier",
        "network",
        "source",
        "run",
    ]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for record in main_table(certify_rows(store)):
        writer.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in record.items()})
    return buffer.getvalue()
