"""Training configs (TOML, validation) and the schedule (warm-up, ramp-up, learning rate)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaxlab.training.config import (
    ConfigError,
    TrainConfig,
    from_dict,
    load_config,
    valid_keys,
    validate_names,
)
from relaxlab.training.schedule import learning_rate, schedule_at


def test_toml_with_a_train_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[train]\nname = "x"\nrelaxation = "DeepZ"\neps_train = 0.2\nlr_milestones = [3, 5]\nepochs = 6\n'
    )
    config = load_config(path)
    assert (config.name, config.relaxation, config.eps_train, config.lr_milestones) == (
        "x",
        "DeepZ",
        0.2,
        (3, 5),
    )
    assert load_config(path, epochs=9, relaxation=None).epochs == 9


def test_unknown_keys_are_refused_with_the_valid_keys_listed(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("epochz = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "'epochz'" in text and "did you mean 'epochs'" in text
    assert all(key in text for key in valid_keys())


@pytest.mark.parametrize(
    "data, message",
    [
        ({"eps_train": 1.5}, r"eps_train must be in \[0, 1\]"),
        ({"eps_test": -0.1}, r"eps_test must be >= 0"),
        ({"epochs": 0}, "epochs must be > 0"),
        ({"method": "pgd"}, "method must be one of"),
        ({"epochs": "3"}, "must be int"),
        ({"elision": 1}, "must be bool"),
        ({"epochs": 2, "warmup_epochs": 2, "rampup_epochs": 1}, "exceed epochs"),
        ({"eps_start": 0.3, "eps_train": 0.1}, "eps_start"),
        ({"name": "../x"}, "plain directory name"),
        (
            {"smoothing_samples": 4},
            r"smoothing_sigma must be > 0 when smoothing_samples > 0 .*set smoothing_sigma",
        ),
        ({"smoothing_sigma": 0.1}, "has no effect with smoothing_samples = 0"),
        ({"smoothing_samples": -1, "smoothing_sigma": 0.1}, "smoothing_samples must be >= 0"),
        ({"smoothing_samples": 2, "smoothing_sigma": -0.1}, "smoothing_sigma must be >= 0"),
        (
            {"smoothing_samples": 2, "smoothing_sigma": float("inf")},
            "smoothing_sigma must be a finite number",
        ),
        ({"smoothing_samples": 2.0, "smoothing_sigma": 0.1}, "must be int"),
        ({"loss_fusion": 1}, "must be bool"),
        ({"loss_fusion": True, "method": "natural"}, "method = 'natural' does not have"),
        ({"loss_fusion": True, "elision": False}, "set elision = true or loss_fusion = false"),
    ],
)
def test_bad_values_are_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(data)


def test_unknown_names_are_refused_with_suggestions() -> None:
    with pytest.raises(ConfigError, match="did you mean 'CROWN'"):
        validate_names(TrainConfig(relaxation="CROWM"))
    with pytest.raises(ConfigError, match="unknown architecture 'CONVV'"):
        validate_names(TrainConfig(architecture="CONVV"))
    with pytest.raises(ConfigError, match="unknown dataset 'mnst'"):
        validate_names(TrainConfig(dataset="mnst"))
    validate_names(TrainConfig(relaxation="crown ibp r"))  # case/punctuation-insensitive


def test_json_round_trip() -> None:
    config = TrainConfig(lr_milestones=(1, 2), relaxation="hBox")
    assert from_dict(__import__("json").loads(config.to_json())) == config
    on = TrainConfig(smoothing_samples=4, smoothing_sigma=0.01, loss_fusion=True, relaxation="CROWN-IBP (R)")
    assert from_dict(__import__("json").loads(on.to_json())) == on


def test_options_left_off_are_left_out_of_the_json() -> None:
    """Configs that do not use smoothing or fusion serialise (and hash: sweep ids) as before those keys existed."""
    data = TrainConfig(smoothing_samples=0, smoothing_sigma=0, loss_fusion=False).to_dict()
    assert not {"smoothing_samples", "smoothing_sigma", "loss_fusion"} & set(data)
    assert from_dict(data) == TrainConfig()
    on = TrainConfig(smoothing_samples=2, smoothing_sigma=0.5, loss_fusion=True).to_dict()
    assert (on["smoothing_samples"], on["smoothing_sigma"], on["loss_fusion"]) == (2, 0.5, True)
    assert from_dict({"smoothing_samples": 3, "smoothing_sigma": 1}).smoothing_sigma == 1.0  # TOML's 1


def test_loss_fusion_is_refused_for_backsubstitution_relaxations() -> None:
    with pytest.raises(ConfigError, match="'CROWN' computes them by backsubstitution"):
        validate_names(TrainConfig(relaxation="CROWN", loss_fusion=True))
    validate_names(TrainConfig(relaxation="CROWN-IBP (R)", loss_fusion=True))
    validate_names(TrainConfig(method="crown-ibp", loss_fusion=True))  # CROWN-IBP (R) and IBP


def test_schedule_warmup_rampup_and_end() -> None:
    config = TrainConfig(
        epochs=5, warmup_epochs=1, rampup_epochs=2, eps_train=0.4, kappa_start=1.0, kappa_end=0.5
    )
    steps = 10
    first = schedule_at(config, 0, steps)
    assert (first.eps, first.kappa, first.beta) == (0.0, 1.0, 1.0)
    assert schedule_at(config, 9, steps).eps == 0.0
    # ramp-up is linear per step over 20 steps: step 10 is 1/20 of the way, step 19 half-way
    assert schedule_at(config, 10, steps).eps == pytest.approx(0.4 / 20)
    mid = schedule_at(config, 19, steps)
    assert (
        mid.eps == pytest.approx(0.2) and mid.kappa == pytest.approx(0.75) and mid.beta == pytest.approx(0.5)
    )
    assert schedule_at(config, 29, steps).eps == pytest.approx(0.4)
    end = schedule_at(config, 49, steps)
    assert (end.eps, end.kappa, end.beta) == (0.4, 0.5, 0.0)


def test_learning_rate_schedules() -> None:
    milestones = TrainConfig(lr=1e-3, lr_schedule="milestones", lr_milestones=(130, 190), epochs=200)
    assert learning_rate(milestones, 129) == 1e-3
    assert learning_rate(milestones, 130) == pytest.approx(1e-4)
    assert learning_rate(milestones, 199) == pytest.approx(1e-5)
    steps = TrainConfig(lr=1e-3, lr_schedule="steps", lr_step_every=20, epochs=100)
    assert learning_rate(steps, 19) == 1e-3 and learning_rate(steps, 45) == pytest.approx(2.5e-4)
    assert learning_rate(TrainConfig(lr=2e-3), 50) == 2e-3


def test_natural_training_always_uses_the_natural_loss() -> None:
    config = TrainConfig(method="natural", epochs=3, kappa_start=0.5, kappa_end=0.0, eps_train=0.3)
    for step in (0, 10, 29):
        values = schedule_at(config, step, 10)
        assert (values.eps, values.kappa) == (0.0, 1.0)
