"""Sweep files, run ids, seeds aggregation, validation-based selection, the store migration, the split."""

from __future__ import annotations

import sqlite3
import statistics
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch

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
from relaxlab.experiments.executors import InProcessExecutor, make_executor
from relaxlab.experiments.sweep import SweepError, load_sweep, parse_sweep
from relaxlab.store import SCHEMA_VERSION, Store, StoreError
from relaxlab.training.config import ConfigError, TrainConfig
from relaxlab.training.trainer import Data, subset, validation_split

BASE = {"architecture": "FC-S", "epochs": 2, "rampup_epochs": 1, "eps_train": 0.1, "eps_test": 0.1}


def test_grid_runs_and_seeds_expand_in_order_with_stable_ids() -> None:
    data = {
        "base": BASE,
        "grid": {"relaxation": ["IBP", "crown"], "lr": [1e-3, 5e-3]},
        "runs": [{"relaxation": "DeepZ", "lr": 1e-2}],
        "seeds": [0, 1],
    }
    sweep = parse_sweep(data, name="s")
    assert len(sweep.runs) == (2 * 2 + 1) * 2
    assert [r.params for r in sweep.runs[:3]] == [
        (("relaxation", "IBP"), ("lr", 1e-3), ("seed", 0)),
        (("relaxation", "IBP"), ("lr", 1e-3), ("seed", 1)),
        (("relaxation", "IBP"), ("lr", 5e-3), ("seed", 0)),
    ]
    assert sweep.runs[4].config.relaxation == "CROWN"  # names as the registry spells them
    assert all(r.config.name == r.key and len(r.key) == 16 for r in sweep.runs)
    assert len({r.key for r in sweep.runs}) == len(sweep.runs)
    # the same resolved config gets the same id, however it is written
    again = parse_sweep(
        {"base": {**BASE, "lr": 1e-3, "relaxation": "ibp", "batch_size": 100}, "seeds": [1]}, name="other"
    )
    assert again.runs[0].key == sweep.runs[1].key
    # the certification is part of the id
    other = parse_sweep({**data, "certify": {"relaxations": ["IBP", "CROWN"]}}, name="s")
    assert other.runs[0].key != sweep.runs[0].key
    assert other.runs[0].certifiers == ("IBP", "CROWN")


def test_base_config_file_and_certify_defaults(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[train]\nname = "x"\nrelaxation = "DeepZ"\nepochs = 4\nseed = 7\n')
    (tmp_path / "s.toml").write_text('seeds = [3]\n[base]\nconfig = "c.toml"\nepochs = 2\n')
    sweep = load_sweep(tmp_path / "s.toml")
    (run,) = sweep.runs
    assert (run.config.relaxation, run.config.epochs, run.config.seed) == ("DeepZ", 2, 3)
    assert sweep.name == "s" and run.certifiers == ("DeepZ",) and run.eps == run.config.eps_test


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"base": {"lrr": 1}}, "[base]: unknown key(s) 'lrr' (did you mean 'lr'"),
        ({"base": {"name": "x"}}, "`name` is set by the sweep"),
        ({"grid": {"seed": [1, 2]}}, "`seed` is set by the sweep; list the seeds in the top-level `seeds"),
        ({"grid": {"lr": 0.1}}, "[grid] lr must be a non-empty list"),
        ({"grid": {"lr": []}}, "[grid] lr must be a non-empty list"),
        ({"grid": {"lr": [0.1, -1.0]}}, "run lr=-1.0, seed 0: lr must be > 0"),
        ({"grid": {"method": ["certified", "natral"]}}, "method must be one of"),
        ({"seeds": []}, "`seeds` must be a non-empty list"),
        ({"seeds": [1, 1]}, "lists a seed twice"),
        ({"certify": {"n": -1}}, "[certify] n must be an int >= 0"),
        ({"certify": {"eps": 3}}, "[certify] eps must be a number in [0, 1]"),
        ({"certify": {"relaxations": ["CROWM"]}}, "unknown relaxation 'CROWM'"),
        ({"certify": {"epsilon": 0.1}}, "[certify]: unknown key(s) 'epsilon' (did you mean 'eps'?)"),
        ({"grid": {"lr": [0.1, 0.2]}, "select": {"over": ["lr"]}}, "[select] needs a validation split"),
        ({"grid": {"lr": [0.1, 0.2]}, "select": {"over": ["kappa_end"]}}, "[select] over must list keys"),
        ({"runs": [{"lr": 0.1}, {"lr": 0.1}]}, "is the same run as lr=0.1, seed 0"),
        ({"runs": {"lr": 0.1}}, "write each as [[runs]]"),
        ({"base": 3}, "`base` must be a table"),
        ({"name": ".."}, "`name` must be a plain name"),  # the output directory would be runs/.. itself
        ({"name": "."}, "`name` must be a plain name"),
        ({"name": "a\\b"}, "`name` must be a plain name"),
        ({"seeds": [2**64]}, "seeds"),
        ({"grid": {"lr": [float("nan")]}}, "lr must be a finite number > 0"),
        ({"grid": {"lr_milestones": [[-1]]}}, "lr_milestones must be"),
    ],
)
def test_invalid_sweeps_name_the_key_and_the_fix(data: dict[str, Any], message: str) -> None:
    data = {
        **data,
        "base": {**BASE, **data["base"]} if isinstance(data.get("base"), dict) else data.get("base", BASE),
    }
    with pytest.raises(SweepError) as error:
        parse_sweep(data, name="s")
    assert message in str(error.value)


def test_bad_file_and_executor_choice(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text("[base\n")
    with pytest.raises(SweepError, match="sweep file .* is not valid TOML"):
        load_sweep(tmp_path / "s.toml")
    with pytest.raises(SweepError, match="does not exist"):
        load_sweep(tmp_path / "missing.toml")
    assert isinstance(make_executor("inprocess", workers=4), InProcessExecutor)
    with pytest.raises(ValueError, match="executor must be one of"):
        make_executor("dask")


# --------------------------------------------------------------------------- seeds and selection

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
        ("IBP", 0): 0.60, ("IBP", 1): 0.62,
        ("LooseIBP-C(omega=0.5)", 0): 0.50, ("LooseIBP-C(omega=0.5)", 1): 0.54,
        ("LooseIBP-C", 0): 0.40, ("LooseIBP-C", 1): 0.44,  # omega left out: its default, 1
        ("LooseIBP-DC(omega=0.5, F=10)", 0): 0.52, ("LooseIBP-DC(omega=0.5, F=10)", 1): 0.50,
        ("LooseIBP-DC(F=10, omega=1)", 0): 0.30, ("LooseIBP-DC(F=10, omega=1)", 1): 0.20,
    }
    labels = {"LooseIBP-DC(omega=0.5, F=10)": "LooseIBP-DC(F=10, omega=0.5)", "LooseIBP-DC(F=10, omega=1)": "LooseIBP-DC(F=10)"}
    with Store(tmp_path / "r.sqlite") as store:
        runs = []
        for (relaxation, seed), cr in crs.items():
            key = f"{relaxation}-{seed}"
            store.finish_run(store.create_run("train", TrainConfig(relaxation=relaxation, seed=seed).to_dict(), key=key))
            certify = store.create_run("certify", {"certifier": labels.get(relaxation, relaxation), "sweep": "t4"}, key=key)
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


# --------------------------------------------------------------------------- store schema

OLD_SCHEMA = """
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, name TEXT NOT NULL,
    created REAL NOT NULL, finished REAL, status TEXT NOT NULL, config TEXT NOT NULL, environment TEXT NOT NULL);
CREATE TABLE metrics (run_id INTEGER NOT NULL REFERENCES runs(id), step INTEGER NOT NULL, name TEXT NOT NULL,
    value REAL NOT NULL);
INSERT INTO runs VALUES (1, 'train', 'old', 0.0, 1.0, 'done', '{"relaxation": "IBP"}', '{}');
INSERT INTO metrics VALUES (1, 0, 'loss', 2.5);
"""


def test_a_store_from_before_versioning_migrates_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.sqlite")
    conn.executescript(OLD_SCHEMA)
    conn.close()
    with Store(tmp_path / "old.sqlite") as store:
        (old,) = store.runs()
        assert (old.name, old.key, old.error, store.metrics(1, "loss")) == ("old", None, None, [(0, 2.5)])
        new = store.create_run("train", {}, key="k")
        store.finish_run(new, "failed", error="boom")
        assert store.runs(key="k")[0].error == "boom"
    conn = sqlite3.connect(tmp_path / "old.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this relaxlab understands"):
        Store(tmp_path / "old.sqlite")


def test_transaction_is_all_or_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / "r.sqlite") as store:
        with pytest.raises(RuntimeError), store.transaction():
            run = store.create_run("train", {}, key="k")
            store.log_metric(run, 0, "x", 1.0)
            raise RuntimeError
        assert store.runs() == [] and store.query("SELECT COUNT(*) FROM metrics") == [(0,)]


# --------------------------------------------------------------------------- validation split


def test_validation_split_is_disjoint_fixed_and_never_trained_on() -> None:
    train, held = validation_split(100, 0.2)
    assert len(held) == 20 and len(train) == 80
    assert set(train.tolist()).isdisjoint(held.tolist()) and set(train.tolist()) | set(held.tolist()) == set(
        range(100)
    )
    assert torch.equal(validation_split(100, 20)[1], held)  # a count and a fraction agree; fixed permutation
    x = torch.arange(100, dtype=torch.float32).view(100, 1, 1, 1)
    y = torch.arange(100)
    data = Data(dataset=None, train_x=x, train_y=y, test_x=x[:5], test_y=y[:5])  # type: ignore[arg-type]
    split = subset(data, TrainConfig(validation=20, train_subset=30))
    assert split.val_y is not None and torch.equal(split.val_y, held)
    assert split.train_y.tolist() == train[:30].tolist()  # train_subset counts after the hold-out
    assert torch.equal(subset(split, TrainConfig(validation=20)).val_y, held)  # not held out twice
    for bad in (100, 0.999):
        with pytest.raises(ConfigError, match="training images"):
            validation_split(100, bad)
    with pytest.raises(ConfigError, match="fraction of the training split"):
        TrainConfig(validation=1.5)
    assert (
        TrainConfig(validation=0.0).validation == 0
        and TrainConfig(validation=0.0).to_json() == TrainConfig().to_json()
    )


def test_nothing_below_experiments_imports_it_and_ray_is_imported_lazily() -> None:
    import ast

    src = Path(__file__).resolve().parents[3] / "src" / "relaxlab"
    for path in src.rglob("*.py"):
        parts = path.relative_to(src).parts
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        if parts[0] not in ("experiments", "cli"):
            assert not [n for n in names if n.startswith("relaxlab.experiments")], path
        top_level = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        assert "ray" not in top_level, path


# --------------------------------------------------------------------------- large sweeps


def test_a_large_sweep_is_not_started_without_a_word(tmp_path: Path) -> None:
    """More than LARGE_SWEEP runs to train: the count and an estimate first, and without a terminal to
    confirm on, a refusal naming --yes (nothing is created)."""
    from click.testing import CliRunner

    from relaxlab.cli import cli
    from relaxlab.experiments.sweep import LARGE_SWEEP, SweepPlan, plan

    values = ", ".join(f"{1e-4 * (i + 1):.6g}" for i in range(LARGE_SWEEP + 1))
    (tmp_path / "big.toml").write_text(f'[base]\narchitecture = "FC-S"\nepochs = 1\n[grid]\nlr = [{values}]\n')
    result = CliRunner().invoke(cli, ["sweep", str(tmp_path / "big.toml"), "--out", str(tmp_path / "out"),
                                      "--executor", "inprocess"])
    assert result.exit_code == 2, result.output
    assert f"{LARGE_SWEEP + 1:,} runs to train" in result.output and "--yes" in result.output
    assert "no time estimate yet" in result.output
    assert not (tmp_path / "out").exists()
    # the estimate comes from the runs the store holds as done
    sweep = parse_sweep({"base": BASE, "seeds": [0, 1, 2]}, name="s")
    with Store(tmp_path / "s" / "results.sqlite") as store:
        run = store.create_run("train", {}, key=sweep.runs[0].key, created=1000.0)
        store.finish_run(run)
        store._conn.execute("UPDATE runs SET finished = 1030.0 WHERE id = ?", (run,))
        store._conn.commit()
    planned = plan(sweep, tmp_path / "s")
    assert planned == SweepPlan(todo=2, done=1, seconds_per_run=30.0)
    assert "about 0m30s with 2 at a time (30 s per run, the mean of the 1 done)" in planned.describe(2)
