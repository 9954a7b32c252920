"""Everything that takes a relaxation takes an objective: config, train, CLI, sweep, screen, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from relaxlab.cli import cli
from relaxlab.evaluation.report import render_csv, render_markdown
from relaxlab.experiments.sweep import SweepError, parse_sweep
from relaxlab.store import open_store
from relaxlab.training.config import ConfigError, TrainConfig, from_dict, validate_names
from relaxlab.training.trainer import train


def test_the_objective_is_a_config_key_left_out_of_the_json_at_its_default() -> None:
    assert "objective" not in TrainConfig().to_dict()  # run ids of configs without objectives are unchanged
    config = TrainConfig(objective="SABR(lambda=0.6)")
    assert config.to_dict()["objective"] == "SABR(lambda=0.6)"
    assert from_dict(json.loads(config.to_json())) == config
    assert validate_names(config).objective.parameters["lambda"] == 0.6
    assert validate_names(TrainConfig(method="crown-ibp")).objective.name == "CROWN-IBP"
    assert TrainConfig(method="crown-ibp").objective_label == "CROWN-IBP"
    assert (
        TrainConfig(objective="sabr (lambda = 0.6)").objective_label == "SABR(lambda=0.6)"
    )  # as reports show it
    assert TrainConfig(method="natural").objective_label == "-"
    assert validate_names(TrainConfig(method="natural")).objective is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"objective": "SABR(lambda=2)"}, "SABR: parameter lambda must be <= 1, got 2"),
        ({"objective": "MTL"}, "unknown objective 'MTL'; did you mean 'MTL-IBP'?"),
        ({"objective": "SABR", "method": "natural"}, "objective 'SABR' needs method = 'certified'"),
        ({"objective": "SABR", "method": "crown-ibp"}, "is the CROWN-IBP objective already"),
        ({"objective": "SABR", "loss_fusion": True}, "which objective 'SABR' does not use"),
        ({"objective": "CC-IBP", "loss_fusion": True}, "which objective 'CC-IBP' does not use"),
    ],
)
def test_bad_objectives_are_refused_before_any_work(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(TrainConfig(**changes), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_fusable_objectives_train_fused() -> None:
    resolved = validate_names(
        TrainConfig(objective="MTL-IBP(alpha=0.5)", loss_fusion=True, architecture="FC-S")
    )
    assert resolved.objective is not None and resolved.objective.fusable


def test_the_train_command_takes_an_objective_and_list_shows_them(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "c.toml").write_text(
        "epochs = 1\ntrain_subset = 20\ntest_subset = 10\nbatch_size = 10\n"
        'rampup_epochs = 1\neps_train = 0.1\neps_test = 0.1\narchitecture = "FC-S"\n'
    )
    out = tmp_path / "run"
    result = runner.invoke(
        cli,
        [
            "train",
            str(tmp_path / "c.toml"),
            "--objective",
            "sabr(lambda=0.5, steps=2)",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "history.json").read_text())
    assert saved["history"][0]["train_loss_robust"] > 0
    from relaxlab.training.checkpoint import checkpoint_config

    assert checkpoint_config(out / "checkpoint.pt")["objective"] == "sabr(lambda=0.5, steps=2)"
    bad = runner.invoke(
        cli,
        [
            "train",
            str(tmp_path / "c.toml"),
            "--objective",
            "SABR(lambda=0)",
            "--out",
            str(tmp_path / "bad"),
            "--quiet",
        ],
    )
    assert bad.exit_code != 0 and "SABR: parameter lambda must be > 0, got 0" in bad.output
    assert not (tmp_path / "bad").exists()
    listed = runner.invoke(cli, ["list", "--objectives", "--json"])
    records = json.loads(listed.output)
    assert [r["name"] for r in records] == ["kappa-mix", "CROWN-IBP", "SABR", "MTL-IBP", "CC-IBP", "EXP-IBP"]
    assert records[2]["params"] == {"lambda": 0.1, "steps": 8.0, "step_size": 0.5} and records[2]["attack"]
    table = runner.invoke(cli, ["list", "--objectives", "--wide"])
    assert "lambda=0.1, steps=8, step_size=0.5" in table.output and "built-in" in table.output


def test_a_sweep_grid_crosses_objectives_relaxations_and_seeds() -> None:
    sweep = parse_sweep(
        {
            "base": {"epochs": 1, "architecture": "FC-S"},
            "grid": {
                "objective": ["kappa-mix", "sabr(lambda=0.6)", "MTL-IBP(alpha=0.5)"],
                "relaxation": ["ibp", "DeepZ"],
            },
            "seeds": [0, 1],
        },
        name="g",
    )
    assert len(sweep.runs) == 12 and len({r.key for r in sweep.runs}) == 12
    assert {dict(r.params)["objective"] for r in sweep.runs} == {
        "kappa-mix",
        "SABR(lambda=0.6)",
        "MTL-IBP(alpha=0.5)",
    }
    assert sweep.varying == ("objective", "relaxation", "seed")
    # the same objective spelled twice is the same run
    with pytest.raises(SweepError, match="is the same run as"):
        parse_sweep({"base": {"epochs": 1}, "grid": {"objective": ["SABR", "sabr(lambda=0.1)"]}}, name="g")
    with pytest.raises(SweepError, match="SABR: parameter lambda must be > 0"):
        parse_sweep({"base": {"epochs": 1}, "grid": {"objective": ["SABR(lambda=0)"]}}, name="g")
    # a configuration without an objective keeps its run id
    plain = parse_sweep({"base": {"epochs": 1}}, name="g").runs[0].key
    assert plain == parse_sweep({"base": {"epochs": 1, "objective": "kappa-mix"}}, name="g").runs[0].key


def _certify(store: Any, method: str, objective: str | None, cr: float, checkpoint: str) -> None:
    config = {
        "checkpoint": checkpoint,
        "certifier": method,
        "eps": 0.3,
        "dataset": "mnist",
        "architecture": "CONV",
        "method_label": method,
        "n": 100,
        **({} if objective is None else {"objective": objective}),
    }
    run = store.create_run("certify", config)
    store.log_metrics(run, 0, {"accuracy": 0.9, "pgd": 0.8, "certified": cr})
    store.finish_run(run)


def test_the_report_has_an_objective_column(tmp_path: Path) -> None:
    with open_store(tmp_path / "r.sqlite") as store:
        _certify(store, "IBP", None, 0.5, "a")
        _certify(store, "IBP", "SABR(lambda=0.6)", 0.6, "b")
        _certify(store, "DeepZ", "MTL-IBP", 0.2, "c")
        text, csv = render_markdown(store), render_csv(store)
    assert "| Method | Objective | n |" in text
    assert (
        "| IBP (a) | kappa-mix | 100 | 90.0 | 80.0 | 50.0 |" in text
    )  # older records: the paper's objective
    assert (
        "| IBP (b) | SABR(lambda=0.6) | 100 | 90.0 | 80.0 | 60.0 |" in text
    )  # not merged with the other IBP
    assert "mnist,CONV,0.30,DeepZ,MTL-IBP,100,90.00,80.00,20.00,DeepZ" in csv


def test_a_screen_schedule_takes_an_objective(tmp_path: Path) -> None:
    from relaxlab.experiments.screen import parse_screen

    screen = parse_screen(
        {
            "candidates": {"names": ["IBP", "DeepZ"]},
            "schedule": {"epochs": 1, "objective": "SABR(lambda=0.5)", "architecture": "FC-S"},
        },
        name="s",
    )
    objectives = {run.config.objective for run in screen.sweep.runs if run.config.method == "certified"}
    assert objectives == {"SABR(lambda=0.5)"}
    assert screen.natural is not None and screen.natural.config.method == "natural"
