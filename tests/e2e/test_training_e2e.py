"""End to end on the embedded data: training raises CR, resume is exact, store/report/CLI, paradox."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import relaxlab
from relaxlab.cli import cli
from relaxlab.evaluation.certify import certify
from relaxlab.store import Store
from relaxlab.training.checkpoint import load_model
from relaxlab.training.config import TrainConfig
from relaxlab.training.trainer import load_data, train


@pytest.fixture(scope="module")
def tiny_data() -> Any:
    return load_data(TrainConfig())  # all of mnist-mini; each run takes its configured subset


def test_ibp_training_raises_certified_robustness(tmp_path: Path, tiny_data: Any) -> None:
    config = TrainConfig(
        name="ibp",
        architecture="CONV",
        relaxation="IBP",
        epochs=3,
        rampup_epochs=1,
        eps_train=0.05,
        eps_test=0.05,
        kappa_start=1.0,
        kappa_end=0.5,
        lr=1e-3,
        batch_size=50,
        train_subset=1000,
        test_subset=100,
    )
    torch.manual_seed(config.seed)
    dataset = tiny_data.dataset
    untrained = (
        relaxlab.get_registry()
        .architectures["CONV"]
        .build(dataset.input_shape, 10, dataset.mean, dataset.std)
    )
    ibp = relaxlab.get_relaxation("IBP")
    x, y = tiny_data.test_x[:100], tiny_data.test_y[:100]
    before = certify(untrained, x, y, 0.05, [ibp], pgd=False)[0]
    result = train(config, tmp_path / "ibp", data=tiny_data)
    after = certify(result.model, x, y, 0.05, [ibp], pgd=True)[0]
    assert before.certified <= 0.15
    assert after.certified >= before.certified + 0.3
    assert after.accuracy >= after.pgd >= after.certified  # certified implies robust implies correct
    assert result.final["test_certified"] == pytest.approx(after.certified)


def test_resume_reproduces_the_uninterrupted_run_bitwise(tmp_path: Path, tiny_data: Any) -> None:
    config = TrainConfig(
        name="r",
        architecture="FC-S",
        method="crown-ibp",
        epochs=3,
        warmup_epochs=0,
        rampup_epochs=2,
        eps_train=0.1,
        eps_test=0.1,
        batch_size=50,
        train_subset=200,
        test_subset=50,
        l1=1e-5,
        grad_clip=1.0,
        lr_schedule="steps",
        lr_step_every=1,
    )
    with Store(tmp_path / "a.sqlite") as store:
        full = train(config, tmp_path / "full", data=tiny_data, store=store)
    with Store(tmp_path / "b.sqlite") as store:
        part = train(config, tmp_path / "part", data=tiny_data, store=store, stop_after=1)
        assert not part.finished and len(part.history) == 1
        assert store.run(part.run_id).status == "interrupted"
        resumed = train(config, tmp_path / "part", data=tiny_data, store=store, resume=True)
        assert resumed.run_id == part.run_id and store.run(part.run_id).status == "done"
        assert [s for s, _ in store.metrics(part.run_id, "train_loss")] == [
            3,
            7,
            11,
        ]  # last step of each epoch
    assert resumed.history == full.history
    assert resumed.final == full.final
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(full_state[k], resumed_state[k]) for k in full_state)
    with pytest.raises(ValueError, match="different config"):
        train(config.replace(lr=1e-2), tmp_path / "part", data=tiny_data, resume=True)
    with pytest.raises(ValueError, match="already exists"):
        train(config, tmp_path / "part", data=tiny_data)


@pytest.mark.parametrize(
    ("objective", "augment"),
    [("SABR(lambda=0.5, steps=3)", "none"), ("MTL-IBP(alpha=0.5, steps=2)", "flip-crop")],
)
def test_resume_with_an_attacking_objective_is_bitwise_the_uninterrupted_run(
    tmp_path: Path, tiny_data: Any, objective: str, augment: str
) -> None:
    """The attacks' random starts and the augmentation come from generators seeded per step: nothing
    to save, nothing lost."""
    config = TrainConfig(
        name="o",
        architecture="FC-S",
        relaxation="CROWN-IBP (R)",
        objective=objective,
        epochs=3,
        rampup_epochs=1,
        eps_train=0.1,
        eps_test=0.1,
        kappa_start=0.5,
        kappa_end=0.0,
        batch_size=50,
        train_subset=150,
        test_subset=30,
        lr=1e-3,
        augment=augment,
    )
    full = train(config, tmp_path / "full", data=tiny_data)
    train(config, tmp_path / "part", data=tiny_data, stop_after=1)
    train(config, tmp_path / "part", data=tiny_data, stop_after=2, resume=True)
    resumed = train(config, tmp_path / "part", data=tiny_data, resume=True)
    assert resumed.history == full.history and resumed.final == full.final
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(full_state[k], resumed_state[k]) for k in full_state)
    assert "train_loss_certified" in full.history[-1] or "train_loss_robust" in full.history[-1]
    other = config.replace(objective="SABR(lambda=0.25, steps=3)")
    with pytest.raises(ValueError, match="different config.*objective"):
        train(other, tmp_path / "part", data=tiny_data, resume=True)


def test_callbacks_see_every_step(tmp_path: Path, tiny_data: Any) -> None:
    seen: list[dict[str, Any]] = []
    config = TrainConfig(
        architecture="FC-S",
        relaxation="CROWN-IBP (R)",
        epochs=2,
        rampup_epochs=1,
        batch_size=100,
        train_subset=300,
        test_subset=20,
        eps_train=0.1,
    )
    with Store(tmp_path / "s.sqlite") as store:
        result = train(
            config,
            tmp_path / "cb",
            data=tiny_data,
            store=store,
            callbacks=[lambda **kw: seen.append(kw)],
        )
    assert [s["step"] for s in seen] == list(range(6))
    assert seen[0]["relaxation"].name == "CROWN-IBP (R)" and seen[-1]["eps"] == pytest.approx(0.1)
    assert seen[0]["run_id"] == result.run_id and seen[0]["store"] is not None
    assert seen[0]["batch"][0].shape == (100, 1, 28, 28)


TINY_TOML = """
[train]
name = "cli-ibp"
architecture = "FC-S"
relaxation = "IBP"
epochs = 2
rampup_epochs = 1
eps_train = 0.1
eps_test = 0.1
batch_size = 100
train_subset = 300
test_subset = 40
"""


def test_cli_train_certify_report_and_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "c.toml").write_text(TINY_TOML)
    out = tmp_path / "runs" / "cli-ibp"
    result = runner.invoke(cli, ["train", str(tmp_path / "c.toml"), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "cli-ibp: test accuracy" in result.output and (out / "checkpoint.pt").is_file()
    result = runner.invoke(cli, ["certify", str(out / "checkpoint.pt"), "-r", "IBP,CROWN", "--n", "20"])
    assert result.exit_code == 0, result.output
    assert "Table 10 layout" in result.output
    store_path = tmp_path / "runs" / "results.sqlite"
    with Store(store_path) as store:
        assert [r.name for r in store.runs(kind="train")] == ["cli-ibp"]
        certs = store.runs(kind="certify")
        assert sorted(r.config["certifier"] for r in certs) == ["CROWN", "IBP"]
        ibp_cr = next(store.final_metrics(r.id)["certified"] for r in certs if r.config["certifier"] == "IBP")
    result = runner.invoke(cli, ["report", "--store", str(store_path)])
    assert (
        result.exit_code == 0 and "| IBP | kappa-mix | 40 | " in result.output
    )  # training's final certification: 40 images
    certifications = result.output.split("## All certifications")[1]
    assert "| IBP | 0.1 | 20 | " in certifications and f"{100 * ibp_cr:.1f} | certify |  |" in certifications
    assert f"| 1 | cli-ibp | {out} | mnist-mini | FC-S | IBP | kappa-mix | 2 | done |" in result.output

    # bad input, refused before any work
    (tmp_path / "bad.toml").write_text(TINY_TOML.replace('"IBP"', '"CROWM"'))
    result = runner.invoke(cli, ["train", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "did you mean 'CROWN'" in result.output and not (tmp_path / "x").exists()
    (tmp_path / "key.toml").write_text(TINY_TOML + "learning_rate = 0.1\n")
    result = runner.invoke(cli, ["train", str(tmp_path / "key.toml"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown config key(s) 'learning_rate'" in result.output
    result = runner.invoke(cli, ["train", str(tmp_path / "c.toml"), "--set", "architecture='\"VGG\"'"])
    assert result.exit_code == 2 and "unknown architecture" in result.output
    result = runner.invoke(cli, ["certify", str(out / "checkpoint.pt"), "--eps", "1.5"])
    assert result.exit_code == 2 and "eps must be in [0, 1]" in result.output
    result = runner.invoke(cli, ["certify", str(out / "checkpoint.pt"), "-r", "DeepZZ"])
    assert result.exit_code == 2 and "unknown relaxation 'DeepZZ'" in result.output
    broken = tmp_path / "broken.pt"
    broken.write_bytes((out / "checkpoint.pt").read_bytes()[:1000])
    result = runner.invoke(cli, ["certify", str(broken)])
    assert result.exit_code == 2 and "corrupt or truncated" in result.output
    result = runner.invoke(cli, ["tightness", str(out / "checkpoint.pt"), "--eps-max", "2"])
    assert result.exit_code == 2 and "eps must be in [0, 1]" in result.output


def test_cli_resume_after_interruption(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "c.toml").write_text(TINY_TOML.replace("epochs = 2", "epochs = 3"))
    args = ["train", str(tmp_path / "c.toml"), "--quiet"]
    assert runner.invoke(cli, [*args, "--out", str(tmp_path / "a")]).exit_code == 0
    stopped = runner.invoke(cli, [*args, "--out", str(tmp_path / "b"), "--stop-after", "2"])
    assert stopped.exit_code == 0 and "resume with --resume" in stopped.output
    again = runner.invoke(cli, [*args, "--out", str(tmp_path / "b")])
    assert again.exit_code == 2 and "--resume" in again.output
    assert runner.invoke(cli, [*args, "--out", str(tmp_path / "b"), "--resume"]).exit_code == 0
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(
        load_model(tmp_path / "a" / "checkpoint.pt")(x), load_model(tmp_path / "b" / "checkpoint.pt")(x)
    )


def test_paradox_pipeline_on_a_tiny_schedule(tmp_path: Path) -> None:
    from relaxlab.experiments.paradox import run_paradox

    overrides = {"train_subset": 40, "test_subset": 10, "max_batches": 1, "batch_size": 20}
    rows = run_paradox(
        tmp_path / "p",
        quick=True,
        tightness_points=2,
        log=lambda _s: None,
        overrides=overrides,
    )
    assert [r.relaxation for r in rows] == ["IBP", "hBox", "DeepZ", "CROWN", "CROWN-IBP (R)"]
    flags = {r.relaxation: (r.continuous, r.sensitive) for r in rows}
    assert (
        flags["IBP"] == (True, False) and flags["CROWN"] == (False, True) and flags["DeepZ"] == (True, True)
    )
    assert flags["hBox"] == (False, False)
    for name in ("paradox.md", "paradox.csv", "tightness.png", "paradox.png", "results.sqlite"):
        assert (tmp_path / "p" / name).is_file()
    assert all(0.0 <= r.certified <= r.accuracy <= 100.0 for r in rows)
    # Tightness on the same network: the backsubstitution relaxations certify at least as much as IBP at
    # every radius is not a theorem, but the AUCs are finite and within [0, 100 * eps_max].
    assert all(0.0 <= r.cr_auc <= 100 * 0.07 for r in rows)
    with Store(tmp_path / "p" / "results.sqlite") as store:
        assert len(store.runs(kind="train", status="done")) == 6 and len(store.runs(kind="certify")) == 5
    # a second call reuses the finished runs, and refuses ones made with another config
    again = run_paradox(
        tmp_path / "p", quick=True, tightness_points=2, log=lambda _s: None, overrides=overrides
    )
    assert [r.certified for r in again] == [r.certified for r in rows]
    with pytest.raises(ValueError, match="another config"):
        run_paradox(
            tmp_path / "p", quick=True, eps=0.2, tightness_points=2, log=lambda _s: None, overrides=overrides
        )
    shutil.rmtree(tmp_path / "p")


def test_natural_training_learns(tmp_path: Path, tiny_data: Any) -> None:
    config = TrainConfig(
        method="natural",
        architecture="FC-S",
        epochs=2,
        batch_size=50,
        train_subset=1000,
        test_subset=200,
        kappa_end=0.0,
        eps_train=0.3,
        eps_test=0.01,
    )
    result = train(config, tmp_path / "nat", data=tiny_data)
    assert result.history[-1]["train_loss"] == pytest.approx(result.history[-1]["train_loss_natural"])
    assert result.final["test_accuracy"] >= 0.6


def test_paradox_default_configs() -> None:
    from relaxlab.experiments.paradox import paradox_configs

    configs = paradox_configs()
    assert [c.label for c in configs] == ["IBP", "hBox", "DeepZ", "CROWN", "CROWN-IBP (R)", "natural"]
    assert all(c.dataset == "mnist-mini" and c.architecture == "CONV" for c in configs)
    assert {(c.epochs, c.warmup_epochs, c.rampup_epochs, c.kappa_end) for c in configs[:5]} == {
        (6, 1, 3, 0.5)
    }
