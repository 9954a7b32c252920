"""Data augmentation of training batches: CTBench's random flip and crop, seeded per step.

``flip-crop`` flips each image horizontally with probability 1/2, then crops a window of the
image's own size from the image padded by :data:`PADDING` pixels on every side by repeating its
edge pixels (CTBench's CIFAR-10 loader: ``RandomHorizontalFlip()``, ``RandomCrop(32, 2,
padding_mode='edge')``). Edge padding keeps every pixel a pixel of the image, so the batch stays in
``[0, 1]`` and the ε-box of an augmented image is an ordinary one.

The draws come from a CPU generator seeded by a hash of ``(seed, step)``
(:func:`relaxlab.training.schedule.step_seed` with ``"augmentation"``): a
run stays a function of its config and a resumed run augments exactly as an uninterrupted one,
with nothing in the checkpoint.

Shapes: ``(B, C, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: What the config key ``augment`` accepts.
AUGMENTATIONS = ("none", "flip-crop")
#: Pixels of edge padding before the random crop.
PADDING = 2


def flip_crop(x: Tensor, generator: torch.Generator, padding: int = PADDING) -> Tensor:
    """Each image flipped horizontally with probability 1/2, then a random crop of its size from it
    edge-padded by ``padding`` (module docstring).

    :param x: ``(B, C, H, W)`` images.
    :param generator: CPU generator of the flips and offsets.
    :param padding: pixels of edge padding on every side.
    :return: ``(B, C, H, W)`` augmented images (new tensor; ``x`` is not changed).
    """
    if x.dim() != 4:
        raise ValueError(
            f"flip-crop augments (batch, channels, height, width) images, got shape {tuple(x.shape)}"
        )
    batch, _, height, width = x.shape
    flips = torch.rand(batch, generator=generator) < 0.5
    rows = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    cols = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    flipped = torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(flipped, (padding,) * 4, mode="replicate")
    r = (rows[:, None] + torch.arange(height)[None, :]).to(x.device)  # (B, H)
    c = (cols[:, None] + torch.arange(width)[None, :]).to(x.device)  # (B, W)
    index = torch.arange(batch, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, r[:, :, None], c[:, None, :]].permute(0, 3, 1, 2).contiguous()
