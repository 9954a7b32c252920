"""Every operation of the operator protocol against the exact reference of its own ``forward``.

For each affine operation, with ``J`` the dense Jacobian of ``forward`` (autograd, float64) and
``b = forward(0)``:

- ``linear`` is ``J``, ``linear_abs`` is ``|J|`` (on several maps per example);
- ``backward(A)`` is ``A·J`` per input and ``A·b`` as its constant;
- ``interval`` is the exact image of a box: ``J·c + b ± |J|·r``, which the vertices attain;
- ``diagonal`` operations have at most one non-zero per row of ``J``;
- patch operations pull a patch back as ``backward`` pulls the same row (:mod:`relaxlab.engine.patches`).

The meta test at the end fails when an operation class exists that no case here exercises.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from relaxlab.engine import ops
from relaxlab.engine.ops import (
    AffineOp,
    Cat,
    Conv,
    Linear,
    Pad,
    PatchOp,
    Reshape,
    Scale,
    Shift,
    Slice,
    Sum,
    Transpose,
)

F64 = torch.float64
G = torch.Generator().manual_seed(0)


def _r(*shape: int) -> Tensor:
    return torch.randn(*shape, generator=G, dtype=F64)


def _cases() -> list[tuple[str, AffineOp, list[tuple[int, ...]]]]:
    """(id, operation, input shapes)."""
    w = _r(3, 2, 3, 3)
    return [
        ("linear", Linear(_r(4, 5), _r(4), (5,), (4,)), [(5,)]),
        ("linear-no-bias", Linear(_r(4, 5), None, (5,), (4,)), [(5,)]),
        ("linear-leading-dims", Linear(_r(3, 5), _r(3), (2, 5), (2, 3)), [(2, 5)]),
        ("linear-widening", Linear(_r(6, 3), _r(6), (3,), (6,)), [(3,)]),
        ("conv", Conv(w, _r(3), (2, 2), (1, 1), 1, (2, 6, 7), (3, 3, 4)), [(2, 6, 7)]),
        ("conv-stride3", Conv(_r(2, 2, 2, 3), None, (3, 2), (0, 1), 1, (2, 7, 6), (2, 2, 3)), [(2, 7, 6)]),
        ("conv-grouped", Conv(_r(4, 1, 3, 3), _r(4), (1, 1), (1, 1), 2, (2, 5, 5), (4, 5, 5)), [(2, 5, 5)]),
        ("scale-channel", Scale(_r(2, 1, 1), False, (2, 3, 3)), [(2, 3, 3)]),
        ("scale-divide", Scale(_r(2, 1, 1).abs() + 0.5, True, (2, 3, 3)), [(2, 3, 3)]),
        ("scale-full", Scale(_r(1, 3, 3), False, (2, 3, 3)), [(2, 3, 3)]),
        ("shift-channel", Shift(_r(2, 1, 1), (2, 3, 3)), [(2, 3, 3)]),
        ("shift-full", Shift(_r(5), (5,)), [(5,)]),
        ("reshape", Reshape((2, 3, 3), (18,)), [(2, 3, 3)]),
        ("transpose", Transpose((2, 0, 1), (3, 2, 3)), [(2, 3, 3)]),
        ("pad", Pad((1, 2, 0, 1), 0.5, (2, 3, 3), (2, 4, 6)), [(2, 3, 3)]),
        ("slice", Slice((0, 1, 0), (2, 3, 3), (1, 1, 2), (2, 3, 3), (2, 2, 2)), [(2, 3, 3)]),
        ("sum", Sum((1.0, 1.0), (4,)), [(4,), (4,)]),
        ("difference", Sum((1.0, -1.0), (4,)), [(4,), (4,)]),
        ("combination", Sum((2.0, -0.5, 3.0), (2, 2)), [(2, 2), (2, 2), (2, 2)]),
        ("cat", Cat(0, (2, 1), (3, 2, 2)), [(2, 2, 2), (1, 2, 2)]),
        ("cat-last", Cat(2, (2, 3), (2, 2, 5)), [(2, 2, 2), (2, 2, 3)]),
    ]


CASES = _cases()


def _jacobian(op: AffineOp, shapes: list[tuple[int, ...]]) -> tuple[list[Tensor], Tensor]:
    """Per input, ``J_i`` as ``(out, in_i)``, and ``b = forward(0)`` flattened."""
    zeros = [torch.zeros(1, *s, dtype=F64) for s in shapes]
    offset = op.forward(*zeros).reshape(-1)
    jacobians = []
    for k in range(len(shapes)):

        def part(v: Tensor, k: int = k) -> Tensor:
            inputs = list(zeros)
            inputs[k] = v
            return op.forward(*inputs).reshape(-1)

        jacobians.append(torch.autograd.functional.jacobian(part, zeros[k]).reshape(offset.numel(), -1))
    return jacobians, offset


@pytest.mark.parametrize(("name", "op", "shapes"), CASES, ids=[c[0] for c in CASES])
def test_operation_matches_its_forward(name: str, op: AffineOp, shapes: list[tuple[int, ...]]) -> None:
    jacobians, offset = _jacobian(op, shapes)
    batch, maps = 2, 3
    xs = [_r(batch, *s) for s in shapes]
    expected = sum(x.reshape(batch, -1) @ j.T for x, j in zip(xs, jacobians, strict=True)) + offset
    torch.testing.assert_close(op.forward(*xs).reshape(batch, -1), expected, atol=1e-12, rtol=1e-12)
    # the linear part and its absolute value, on several maps per example
    forms = [_r(batch, maps, *s) for s in shapes]
    linear = sum(f.reshape(batch, maps, -1) @ j.T for f, j in zip(forms, jacobians, strict=True))
    absolute = sum(f.reshape(batch, maps, -1) @ j.abs().T for f, j in zip(forms, jacobians, strict=True))
    torch.testing.assert_close(op.linear(*forms).reshape(batch, maps, -1), linear, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(
        op.linear_abs(*forms).reshape(batch, maps, -1), absolute, atol=1e-12, rtol=1e-12
    )
    # rows pulled back: per input A·J_i, and the constant A·b (rows shared by the batch included)
    for rows_batch in (batch, 1):
        rows = _r(rows_batch, 4, *op.out_shape)
        pulled, constant = op.backward(rows)
        assert len(pulled) == len(shapes)
        for part, j, shape in zip(pulled, jacobians, shapes, strict=True):
            want = rows.reshape(rows_batch, 4, -1) @ j
            got = torch.zeros_like(want) if part is None else part.reshape(rows_batch, 4, -1)
            assert part is None or tuple(part.shape[2:]) == shape
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
        want_constant = rows.reshape(rows_batch, 4, -1) @ offset
        got_constant = torch.zeros_like(want_constant) if constant is None else constant
        torch.testing.assert_close(got_constant, want_constant, atol=1e-12, rtol=1e-12)
    # the interval image is exact: J·c + b ± |J|·r, attained at vertices
    boxes = [(x - 0.3, x + 0.3) for x in xs]
    low, high = op.interval(*boxes)
    centre = sum(
        ((lo + hi) / 2).reshape(batch, -1) @ j.T for (lo, hi), j in zip(boxes, jacobians, strict=True)
    )
    radius = sum(
        ((hi - lo) / 2).reshape(batch, -1) @ j.abs().T for (lo, hi), j in zip(boxes, jacobians, strict=True)
    )
    torch.testing.assert_close(low.reshape(batch, -1), centre + offset - radius, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(high.reshape(batch, -1), centre + offset + radius, atol=1e-12, rtol=1e-12)
    if op.diagonal:
        for j in jacobians:
            assert int((j != 0).sum(1).max()) <= 1
    assert tuple(op.forward(*xs).shape[1:]) == op.out_shape


@pytest.mark.parametrize(
    ("name", "op", "shapes"),
    [c for c in CASES if isinstance(c[1], PatchOp)],
    ids=[c[0] for c in CASES if isinstance(c[1], PatchOp)],
)
def test_patches_are_the_rows_in_a_window(name: str, op: AffineOp, shapes: list[tuple[int, ...]]) -> None:
    """A patch of size ``h × w`` at the output, pulled back by ``patch_linear``, is the full row pulled
    back by ``backward`` read at the window ``patch_geometry`` gives (top-left window)."""
    assert isinstance(op, PatchOp)
    if not op.per_channel:
        return
    channels = op.out_shape[0]
    size = (2, 2)
    new_size, _, origin = op.patch_geometry(size, (1, 1), (0, 0))
    patch = _r(1, 3, channels * size[0] * size[1])
    moved = op.patch_linear(patch, size, new_size).reshape(3, -1, *new_size)
    full = torch.zeros(1, 3, *op.out_shape, dtype=F64)
    full[..., : size[0], : size[1]] = patch.reshape(1, 3, channels, *size)
    (pulled,), _ = op.backward(full)
    # the window on the input starts at -origin (padding): compare where it overlaps the map
    in_shape = shapes[0]
    o_h, o_w = origin
    rows_h = range(max(0, o_h), min(new_size[0], in_shape[1] + o_h))
    rows_w = range(max(0, o_w), min(new_size[1], in_shape[2] + o_w))
    for a in rows_h:
        for b in rows_w:
            torch.testing.assert_close(
                moved[:, :, a, b], pulled[0, :, :, a - o_h, b - o_w], atol=1e-12, rtol=1e-12
            )
    offset = op.offset_map()
    zero = op.forward(torch.zeros(1, *in_shape, dtype=F64))
    if offset is None:
        assert float(zero.abs().max()) == 0.0
    else:
        torch.testing.assert_close(offset.unsqueeze(0).expand_as(zero), zero, atol=1e-12, rtol=0)


def test_every_operation_class_is_exercised() -> None:
    """Adding an operation means adding its case above (and a rule in the op table)."""
    classes = {
        cls
        for cls in vars(ops).values()
        if isinstance(cls, type)
        and issubclass(cls, AffineOp)
        and cls is not AffineOp
        and not getattr(cls, "__abstractmethods__", None)
    }
    covered = {type(op) for _, op, _ in CASES}
    assert classes == covered, f"not exercised: {sorted(c.__name__ for c in classes - covered)}"
