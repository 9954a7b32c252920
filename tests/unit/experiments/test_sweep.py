"""Sweep files, run ids, the executor choice, large sweeps; the layering of experiments and Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relaxlab.experiments.executors import InProcessExecutor, make_executor
from relaxlab.experiments.sweep import SweepError, load_sweep, parse_sweep
from relaxlab.store import Store

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
        ({"certify": {"relaxations": 5}}, "[certify] relaxations must be a non-empty list of names"),
        ({"certify": {"relaxations": {"IBP": 1}}}, "[certify] relaxations must be a non-empty list of names"),
        ({"grid": {"lr": [0.1, 0.2]}, "select": {"over": 7}}, "[select] over must list keys"),
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
    (tmp_path / "big.toml").write_text(
        f'[base]\narchitecture = "FC-S"\nepochs = 1\n[grid]\nlr = [{values}]\n'
    )
    result = CliRunner().invoke(
        cli, ["sweep", str(tmp_path / "big.toml"), "--out", str(tmp_path / "out"), "--executor", "inprocess"]
    )
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
    # a store another sweep is creating (the file exists, SQLite has not written it yet): nothing done
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "results.sqlite").touch()
    assert plan(sweep, tmp_path / "t") == SweepPlan(todo=3, done=0, seconds_per_run=None)
