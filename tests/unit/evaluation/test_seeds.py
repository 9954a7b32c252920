"""Seeds aggregated to mean, std and n; every relaxation against IBP in its own setting; selection on
validation numbers only; the looseness table (Table 4's layout)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import attrs
import pytest

from relaxlab.evaluation.report import render_markdown
from relaxlab.evaluation.seeds import (
    SWEEP_KIND,
    aggregate,
    compare_with_reference,
    looseness_table,
    seed_table,
    select,
    sweep_points,
)
from relaxlab.store import Store
from relaxlab.training.config import TrainConfig

# (relaxation, lr, seed) -> (test accuracy, test CR, validation CR, validation accuracy)
NUMBERS = {
    ("IBP", 0.1, 0): (0.80, 0.50, 0.40, 0.82),
    ("IBP", 0.1, 1): (0.70, 0.30, 0.50, 0.72),
    ("IBP", 0.2, 0): (0.90, 0.60, 0.30, 0.91),
    ("IBP", 0.2, 1): (0.60, 0.55, 0.45, 0.65),
    ("CROWN", 0.1, 0): (0.50, 0.20, 0.10, 0.55),
    ("CROWN", 0.1, 1): (0.55, 0.25, 0.20, 0.52),
    ("CROWN", 0.2, 0): (0.52, 0.10, 0.25, 0.51),
    ("CROWN", 0.2, 1): (0.58, 0.15, 0.35, 0.50),
}


def _fake_sweep(store: Store, *, select_over: list[str] | None = None) -> dict[str, Any]:
    runs = []
    for (relaxation, lr, seed), (acc, cr, val_cr, val_acc) in NUMBERS.items():
        key = f"{relaxation}-{lr}-{seed}"
        config = TrainConfig(relaxation=relaxation, lr=lr, seed=seed, validation=10).to_dict()
        train = store.create_run("train", config, key=key)
        store.finish_run(train)
        certify = store.create_run("certify", {"certifier": relaxation, "sweep": "fake"}, key=key)
        metrics = {"accuracy": acc, "certified": cr, "val_certified": val_cr, "val_accuracy": val_acc}
        store.log_metrics(certify, 0, metrics)
        store.finish_run(certify)
        runs.append({"key": key, "params": {"relaxation": relaxation, "lr": lr, "seed": seed}})
    record = {
        "name": "fake",
        "varying": ["relaxation", "lr", "seed"],
        "runs": runs,
        "select": {"over": select_over, "metric": "certified"} if select_over else None,
    }
    store.finish_run(store.create_run(SWEEP_KIND, record, name="fake", key="sweep-fake"))
    return record


def test_seeds_aggregate_to_mean_std_and_n(tmp_path: Path) -> None:
    with Store(tmp_path / "r.sqlite") as store:
        rows = seed_table(sweep_points(store, _fake_sweep(store)))
    assert [(r.cell, r.certifier) for r in rows] == [
        ((("relaxation", "IBP"), ("lr", 0.1)), "IBP"),
        ((("relaxation", "IBP"), ("lr", 0.2)), "IBP"),
        ((("relaxation", "CROWN"), ("lr", 0.1)), "CROWN"),
        ((("relaxation", "CROWN"), ("lr", 0.2)), "CROWN"),
    ]
    for row in rows:
        relaxation, lr = dict(row.cell)["relaxation"], dict(row.cell)["lr"]
        numbers = [NUMBERS[(relaxation, lr, seed)] for seed in (0, 1)]
        assert row.seeds == (0, 1) and row.certified.n == 2 and row.pgd is None
        assert row.accuracy.mean == pytest.approx(statistics.fmean(n[0] for n in numbers))
        assert row.certified.mean == pytest.approx(statistics.fmean(n[1] for n in numbers))
        assert row.certified.std == pytest.approx(statistics.stdev(n[1] for n in numbers))
        assert row.val_certified is not None
        assert row.val_certified.mean == pytest.approx(statistics.fmean(n[2] for n in numbers))
    single = aggregate([0.25])
    assert (single.mean, single.std, single.n, single.format()) == (0.25, None, 1, "25.0")
    assert aggregate([0.1, 0.3]).format() == f"20.0 ± {100 * statistics.stdev([0.1, 0.3]):.1f}"


def test_every_relaxation_is_set_against_ibp_in_its_own_setting(tmp_path: Path) -> None:
    with Store(tmp_path / "r.sqlite") as store:
        rows = seed_table(sweep_points(store, _fake_sweep(store)))
        text = render_markdown(store)
    comparisons = {c.rest: c for c in compare_with_reference(rows)}
    assert set(comparisons) == {(("lr", 0.1),), (("lr", 0.2),)}  # CROWN against IBP at each lr, never across
    for lr, comparison in ((0.1, comparisons[(("lr", 0.1),)]), (0.2, comparisons[(("lr", 0.2),)])):
        ibp = [NUMBERS[("IBP", lr, s)][1] for s in (0, 1)]
        crown = [NUMBERS[("CROWN", lr, s)][1] for s in (0, 1)]
        assert comparison.other == "CROWN"
        assert comparison.difference == pytest.approx(statistics.fmean(ibp) - statistics.fmean(crown))
        assert comparison.spread == pytest.approx(statistics.stdev(ibp) + statistics.stdev(crown))
    # lr 0.1: 17.5 points apart with 17.7 of spread; lr 0.2: 45 points apart with 7.1
    assert comparisons[(("lr", 0.1),)].verdict == "within the spread"
    assert comparisons[(("lr", 0.2),)].verdict == "IBP better, beyond the spread"
    assert "| CROWN | 0.2 | 12.5 ± 3.5 | 57.5 ± 3.5 | +45.0 | 7.1 | IBP better, beyond the spread |" in text
    one_seed = [attrs.evolve(r, certified=aggregate([r.certified.mean])) for r in rows]
    assert {c.verdict for c in compare_with_reference(one_seed)} == {"one seed: no spread"}


def test_selection_uses_validation_only_and_reports_test_numbers(tmp_path: Path) -> None:
    with Store(tmp_path / "r.sqlite") as store:
        points = sweep_points(store, _fake_sweep(store, select_over=["lr"]))
        text = render_markdown(store)
    picks = {dict(s.group)["relaxation"]: s for s in select(points, ["lr"])}
    for relaxation in ("IBP", "CROWN"):
        val = {lr: statistics.fmean(NUMBERS[(relaxation, lr, s)][2] for s in (0, 1)) for lr in (0.1, 0.2)}
        best = max(val, key=lambda lr: val[lr])
        test = {lr: statistics.fmean(NUMBERS[(relaxation, lr, s)][1] for s in (0, 1)) for lr in (0.1, 0.2)}
        assert test[best] != max(test.values()) or relaxation == "CROWN"  # IBP: test would pick the other lr
        pick = picks[relaxation]
        assert pick.picked == (("lr", best),) and pick.candidates == 2 and pick.certifier == relaxation
        assert pick.validation.mean == pytest.approx(val[best])
        assert pick.certified.mean == pytest.approx(test[best])
        accuracy = [NUMBERS[(relaxation, best, s)][0] for s in (0, 1)]
        assert pick.accuracy.mean == pytest.approx(statistics.fmean(accuracy))
        assert pick.accuracy.std == pytest.approx(statistics.stdev(accuracy))
    assert picks["IBP"].picked == (("lr", 0.1),) and picks["CROWN"].picked == (("lr", 0.2),)
    by_accuracy = {dict(s.group)["relaxation"]: s.picked for s in select(points, ["lr"], "accuracy")}
    assert by_accuracy == {"IBP": (("lr", 0.2),), "CROWN": (("lr", 0.1),)}
    assert "## Sweep fake: 8/8 runs done (done)" in text
    assert "| IBP | 0.1 | IBP | 2 | 45.0 ± 7.1 | 2 | 75.0 ± 7.1 | — | 40.0 ± 14.1 |" in text


def test_looseness_sweeps_are_laid_out_as_table_4(tmp_path: Path) -> None:
    # (relaxation as the sweep file names it, seed) -> CR; the certifier is written as its label
    crs = {
        ("IBP", 0): 0.60,
        ("IBP", 1): 0.62,
        ("LooseIBP-C(omega=0.5)", 0): 0.50,
        ("LooseIBP-C(omega=0.5)", 1): 0.54,
        ("LooseIBP-C", 0): 0.40,
        ("LooseIBP-C", 1): 0.44,  # omega left out: its default, 1
        ("LooseIBP-DC(omega=0.5, F=10)", 0): 0.52,
        ("LooseIBP-DC(omega=0.5, F=10)", 1): 0.50,
        ("LooseIBP-DC(F=10, omega=1)", 0): 0.30,
        ("LooseIBP-DC(F=10, omega=1)", 1): 0.20,
    }
    labels = {
        "LooseIBP-DC(omega=0.5, F=10)": "LooseIBP-DC(F=10, omega=0.5)",
        "LooseIBP-DC(F=10, omega=1)": "LooseIBP-DC(F=10)",
    }
    with Store(tmp_path / "r.sqlite") as store:
        runs = []
        for (relaxation, seed), cr in crs.items():
            key = f"{relaxation}-{seed}"
            store.finish_run(
                store.create_run("train", TrainConfig(relaxation=relaxation, seed=seed).to_dict(), key=key)
            )
            certify = store.create_run(
                "certify", {"certifier": labels.get(relaxation, relaxation), "sweep": "t4"}, key=key
            )
            store.log_metrics(certify, 0, {"accuracy": 0.9, "certified": cr})
            store.finish_run(certify)
            runs.append({"key": key, "params": {"relaxation": relaxation, "seed": seed}})
        record = {"name": "t4", "varying": ["relaxation", "seed"], "runs": runs, "select": None}
        store.finish_run(store.create_run(SWEEP_KIND, record, name="t4", key="sweep-t4"))
        rows = seed_table(sweep_points(store, record))
        text = render_markdown(store)
    table = looseness_table(rows)
    assert table is not None and table.columns == (0.5, 1.0)
    assert list(table.rows) == ["LooseIBP-C", "LooseIBP-DC(F=10)"]
    assert table.rows["LooseIBP-C"][0.5].mean == pytest.approx(0.52)
    assert table.rows["LooseIBP-C"][1.0].mean == pytest.approx(0.42)
    assert table.rows["LooseIBP-DC(F=10)"][1.0].std == pytest.approx(statistics.stdev([0.30, 0.20]))
    assert list(table.references) == ["IBP"] and table.references["IBP"].mean == pytest.approx(0.61)
    assert "| relaxation | ω = 0.5 | ω = 1 |" in text
    assert "| LooseIBP-DC(F=10) | 51.0 ± 1.4 | 25.0 ± 7.1 |" in text
    assert "Without looseness: IBP 61.0 ± 1.4." in text
    # one looseness value is no table; nor are relaxations without the parameter
    assert looseness_table([r for r in rows if dict(r.cell)["relaxation"] in ("IBP", "LooseIBP-C")]) is None
