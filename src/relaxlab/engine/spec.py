"""Linear specifications ``C`` over network outputs.

Shapes: ``B`` batch, ``S`` specification rows, ``K`` classes/outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def margin_spec(
    labels: Tensor,
    num_classes: int,
    *,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Margin rows ``e_y - e_j`` for every ``j != y``: ``(B, K-1, K)``.

    A *lower* bound > 0 on every row certifies that class ``y`` wins against every
    other class for all inputs in the box (Sec. 2, Eq. 1 of the paper, with
    ``c = e_y - e_j`` the negated ``c_{y'}``).

    :param labels: ``(B,)`` integer class labels in ``[0, num_classes)``.
    :param num_classes: ``K`` (at least 2).
    :param dtype: floating dtype of the result; default ``torch.get_default_dtype()``.
    :return: ``(B, K-1, K)``; row ``i`` of example ``b`` compares ``y_b`` with the ``i``-th other class
        in increasing order.
    """
    if num_classes < 2:
        raise ValueError(f"margin specifications need at least 2 classes, got num_classes={num_classes}")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be a 1-d integer tensor, got shape {tuple(labels.shape)} {labels.dtype}"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    dtype = dtype or torch.get_default_dtype()
    eye = torch.eye(num_classes, dtype=dtype, device=labels.device)
    own = eye[labels]  # (B, K)
    # others[b] lists every class but labels[b], in increasing order.
    classes = torch.arange(num_classes, device=labels.device)
    others = classes.expand(labels.shape[0], num_classes)
    keep = others != labels.unsqueeze(1)
    others = others[keep].reshape(labels.shape[0], num_classes - 1)
    return own.unsqueeze(1) - eye[others]
