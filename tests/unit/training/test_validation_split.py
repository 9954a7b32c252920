"""The held-out validation split: disjoint from the training images, fixed, never trained on."""

from __future__ import annotations

import pytest
import torch

from relaxlab.training.config import ConfigError, TrainConfig
from relaxlab.training.trainer import Data, subset, validation_split


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
