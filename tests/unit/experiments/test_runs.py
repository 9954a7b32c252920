"""One sweep run on each device: trained, certified and described where it ran."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from relaxlab.experiments.runs import RunTask, execute_run
from relaxlab.training.config import TrainConfig


def test_a_run_trains_and_certifies_on_the_device(device: torch.device, tmp_path: Path) -> None:
    config = TrainConfig(
        name="r",
        architecture="FC-S",
        relaxation="CROWN-IBP (R)",
        epochs=1,
        rampup_epochs=1,
        eps_train=0.02,
        eps_test=0.02,
        batch_size=50,
        max_batches=2,
        train_subset=100,
        test_subset=20,
    )
    task = RunTask(
        key="r",
        config=config.to_dict(),
        certifiers=("CROWN-IBP (R)", "IBP"),
        eps=0.02,
        n=20,
        pgd=True,
        run_dir=str(tmp_path / "r"),
        device=str(device),
    )
    outcome = execute_run(task)
    assert outcome.status == "done", outcome.error
    assert outcome.environment["device"] == str(device)
    assert [c.certifier for c in outcome.certify] == ["CROWN-IBP (R)", "IBP"]
    for result in outcome.certify:
        assert result.n == 20 and 0.0 <= result.certified <= result.accuracy <= 1.0
        assert result.pgd is not None and math.isfinite(result.pgd)
