"""Paper-style tables from the results store: Table 2 / Table 11 layout and the Table 10 matrix.

Rows are training methods (the relaxation a model was trained with, ``CROWN-IBP`` for the defense,
``natural``) and the training objective (``kappa-mix``, ``SABR(lambda=0.6)``, ...), columns are standard accuracy, PGD accuracy and certified robustness (in %) per
``eps_test``, grouped by dataset and architecture. CR in the main table is the model certified
with its own training relaxation; for the CROWN-IBP defense the better of CROWN-IBP (R) and IBP
(the two relaxations it trains with), for natural training the best certifier recorded.
Sweeps (``relaxlab sweep``) get their own sections (:mod:`relaxlab.evaluation.seeds`): seeds
aggregated per cell and the configuration picked on the validation split; their certify runs are
left out of the main table and the matrices, which show one checkpoint per setting.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import attrs

from relaxlab.evaluation.seeds import render_sweeps
from relaxlab.registry import PAPER_RELAXATIONS
from relaxlab.store import Store

#: Row order of the reports: natural training, the paper's five, the CROWN-IBP defense.
METHOD_ORDER = ("natural", *PAPER_RELAXATIONS, "CROWN-IBP")


@attrs.frozen(kw_only=True)
class CertifyRow:
    """One certification record from the store."""

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


def certify_rows(store: Store) -> list[CertifyRow]:
    """All finished certify runs but those of sweeps, one row per (checkpoint, certifying relaxation, eps)."""
    rows = []
    for run in store.runs(kind="certify", status="done"):
        config = run.config
        if config.get("sweep"):
            continue
        metrics = store.final_metrics(run.id)
        rows.append(
            CertifyRow(
                dataset=config.get("dataset", "?"),
                architecture=config.get("architecture", "?"),
                method=config.get("method_label", "?"),
                objective=config.get("objective", _objective_before(config.get("method_label", "?"))),
                eps=float(config.get("eps", 0.0)),
                certifier=config.get("certifier", "?"),
                accuracy=metrics.get("accuracy", float("nan")),
                pgd=metrics.get("pgd"),
                certified=metrics.get("certified", float("nan")),
                checkpoint=config.get("checkpoint", "?"),
                run_id=run.id,
                n=config.get("n"),
            )
        )
    return rows


def _objective_before(method: str) -> str:
    """The objective of a record written before objectives were recorded (the paper's or the defense)."""
    return {"CROWN-IBP": "CROWN-IBP", "natural": "-"}.get(method, "kappa-mix")


def _own(method: str, certifier: str) -> bool:
    if method == "CROWN-IBP":
        return certifier in ("CROWN-IBP (R)", "IBP")
    if method == "natural":
        return True
    return certifier == method


def _order(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def main_table(rows: Sequence[CertifyRow]) -> list[dict[str, Any]]:
    """Table 2 / 11 records: per (dataset, architecture, method, objective, eps) the latest checkpoint's numbers."""
    # the latest record per (setting, checkpoint, certifier) ...
    latest: dict[tuple[str, str, str, str, float, str, str], CertifyRow] = {}
    for row in sorted(rows, key=lambda r: r.run_id):
        if _own(row.method, row.certifier):
            key = (row.dataset, row.architecture, row.method, row.objective, row.eps, row.checkpoint, row.certifier)
            latest[key] = row
    # ... then per setting the most recently certified checkpoint, and its best own certifier
    newest: dict[tuple[str, str, str, str, float], str] = {}
    for key7, row in sorted(latest.items(), key=lambda kv: kv[1].run_id):
        newest[key7[:5]] = row.checkpoint
    best: dict[tuple[str, str, str, str, float], CertifyRow] = {}
    for key7, row in latest.items():
        key = key7[:5]
        if row.checkpoint == newest[key] and (key not in best or row.certified > best[key].certified):
            best[key] = row
    records = []
    for (dataset, architecture, method, objective, eps), row in sorted(
        best.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][4], _order(kv[0][2]), kv[0][3])
    ):
        records.append(
            {
                "dataset": dataset,
                "architecture": architecture,
                "eps_test": eps,
                "method": method,
                "objective": objective,
                "accuracy": 100 * row.accuracy,
                "pgd": None if row.pgd is None else 100 * row.pgd,
                "certified": 100 * row.certified,
                "certifier": row.certifier,
                "n": row.n,
            }
        )
    return records


def matrix_table(rows: Sequence[CertifyRow]) -> dict[tuple[str, str, float], dict[str, dict[str, float]]]:
    """Table 10: per (dataset, architecture, eps), trained-with -> certified-with -> CR in %."""
    out: dict[tuple[str, str, float], dict[str, dict[str, float]]] = {}
    for row in rows:
        group = out.setdefault((row.dataset, row.architecture, row.eps), {})
        group.setdefault(row.method, {})[row.certifier] = 100 * row.certified
    return out


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _n(values: Sequence[int | None]) -> str:
    """The test images behind some numbers: one count, or the distinct counts joined by '/'."""
    known = sorted({v for v in values if v is not None})
    return "/".join(str(v) for v in known) or "?"


def render_markdown(store: Store) -> str:
    """The main table (Table 2/11 layout), the train x certify matrices (Table 10) and the train runs."""
    rows = certify_rows(store)
    out = ["# relaxlab results", ""]
    records = main_table(rows)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["dataset"], record["architecture"]), []).append(record)
    for (dataset, architecture), group in groups.items():
        epses = sorted({r["eps_test"] for r in group})
        methods = sorted({(r["method"], r["objective"]) for r in group}, key=lambda m: (_order(m[0]), m[1]))
        out += [f"## {dataset}, {architecture} (Table 2 / 11 layout; values in %)", ""]
        header = ("| Method | Objective | n | " + " | ".join(f"Acc ε={e:g} | PGD ε={e:g} | CR ε={e:g}" for e in epses)
                  + " |")
        out += [header, "|---|---|---:|" + "---:|" * (3 * len(epses))]
        for method, objective in methods:
            mine = [r for r in group if (r["method"], r["objective"]) == (method, objective)]
            cells = [_n([r["n"] for r in mine])]
            for eps in epses:
                match = [r for r in mine if r["eps_test"] == eps]
                if match:
                    r = match[0]
                    cells += [_fmt(r["accuracy"]), _fmt(r["pgd"]), _fmt(r["certified"])]
                else:
                    cells += ["", "", ""]
            out.append(f"| {method} | {objective} | " + " | ".join(cells) + " |")
        out.append("")
    for (dataset, architecture, eps), matrix in matrix_table(rows).items():
        certifiers = sorted({c for row in matrix.values() for c in row}, key=_order)
        if max(len(row) for row in matrix.values()) < 2:  # only the diagonal: nothing to add
            continue
        behind = [r.n for r in rows if (r.dataset, r.architecture, r.eps) == (dataset, architecture, eps)]
        out += [
            f"## {dataset}, {architecture}, ε={eps:g}: CR (%) trained with (rows) × certified with (columns), Table 10 layout",
            "",
            f"n = {_n(behind)} test images.",
            "",
        ]
        out += [
            "| Trained \\ Certified | " + " | ".join(certifiers) + " |",
            "|---|" + "---:|" * len(certifiers),
        ]
        for method in sorted(matrix, key=_order):
            out.append(f"| {method} | " + " | ".join(_fmt(matrix[method].get(c)) for c in certifiers) + " |")
        out.append("")
    out += render_sweeps(store)
    trains = store.runs(kind="train")
    if trains:
        out += [
            "## Training runs",
            "",
            "| id | name | dataset | arch | method | objective | epochs | status |",
            "|---:|---|---|---|---|---|---:|---|",
        ]
        for run in trains:
            c = run.config
            label = {"natural": "natural", "crown-ibp": "CROWN-IBP"}.get(
                c.get("method", ""), c.get("relaxation", "?")
            )
            objective = c.get("objective", _objective_before(label))
            out.append(
                f"| {run.id} | {run.name} | {c.get('dataset')} | {c.get('architecture')} | {label} | {objective} "
                f"| {c.get('epochs')} | {run.status} |"
            )
        out.append("")
    tightness = store.runs(kind="tightness", status="done")
    if tightness:
        out += [
            "## Tightness (CR-AUC, Table 6 layout; relaxations in the paper's order)",
            "",
            "| id | checkpoint | n | relaxation | CR-AUC |",
            "|---:|---|---:|---|---:|",
        ]
        for run in tightness:
            aucs = {name[7:]: value for name, value in store.final_metrics(run.id).items()
                    if name.startswith("cr_auc/")}
            n = _n([run.config.get("n")])
            for name in sorted(aucs, key=_order):
                out.append(f"| {run.id} | {run.config.get('checkpoint')} | {n} | {name} | {aucs[name]:.2f} |")
        out.append("")
    return "\n".join(out)


def render_csv(store: Store) -> str:
    """The main-table records as CSV (one row per dataset, architecture, eps, method, objective)."""
    buffer = io.StringIO()
    fields = ["dataset", "architecture", "eps_test", "method", "objective", "n", "accuracy", "pgd", "certified",
              "certifier"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for record in main_table(certify_rows(store)):
        writer.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in record.items()})
    return buffer.getvalue()
