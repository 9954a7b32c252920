"""Flip-and-crop augmentation: each image is a flip and crop of its edge-padded self, drawn reproducibly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from relaxlab.training.augment import PADDING, flip_crop
from relaxlab.training.config import ConfigError, TrainConfig


def test_every_image_is_a_flip_and_crop_of_its_padded_self() -> None:
    x = torch.rand(24, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    out = flip_crop(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    seen = set()
    for image, result in zip(x, out, strict=True):
        matches = [
            (flip, r, c)
            for flip in (False, True)
            for r in range(2 * PADDING + 1)
            for c in range(2 * PADDING + 1)
            if torch.equal(
                F.pad((image.flip(-1) if flip else image)[None], (PADDING,) * 4, mode="replicate")[0][
                    :, r : r + 5, c : c + 6
                ],
                result,
            )
        ]
        assert matches, "an augmented image that is no flip and crop of its own"
        seen.add(matches[0][0])
    assert seen == {False, True}  # both flips occur in 24 draws


def test_the_draws_are_seeded() -> None:
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    first = flip_crop(x, torch.Generator().manual_seed(3))
    assert torch.equal(first, flip_crop(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, flip_crop(x, torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match="flip-crop augments"):
        flip_crop(x[:, 0], torch.Generator())


def test_the_config_key() -> None:
    assert "augment" not in TrainConfig().to_dict()  # off: run ids unchanged
    assert TrainConfig(augment="flip-crop").to_dict()["augment"] == "flip-crop"
    with pytest.raises(ConfigError, match="augment must be one of"):
        TrainConfig(augment="mixup")
