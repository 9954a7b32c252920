"""Reading torch models: what is bounded is what eager torch computes, or nothing.

In-place operations (issue 27, item 1): ``fx`` records ``h.relu_()`` as a new value while eager
torch changes the tensor every other name for it reads afterwards. The reference is always the
eager model itself: bounds must contain its outputs at sampled points of the box (float64), and at
a zero radius equal them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import relaxlab
from relaxlab.engine import UnsupportedNetworkError, parse_model
from relaxlab.nn import Normalize

F64 = torch.float64


def _assert_bounds_the_eager_model(
    model: nn.Module, shape: tuple[int, ...], eps: float, name: str = "CROWN", seed: int = 0
) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(3, *shape, generator=generator, dtype=F64)
    lb, ub = relaxlab.compute_bounds(model, x, eps, name)
    with torch.no_grad():
        points = x + eps * (2 * torch.rand(2000, *x.shape, generator=generator, dtype=F64) - 1)
        values = model(points.flatten(0, 1)).reshape(2000, 3, -1)
        exact = model(x)
    tol = 1e-9 * (1 + float(values.abs().max()))
    assert bool((values >= lb - tol).all()), float((lb - values).max())
    assert bool((values <= ub + tol).all()), float((values - ub).max())
    at_centre = relaxlab.compute_bounds(model, x, 0.0, name)
    torch.testing.assert_close(at_centre[0], exact.detach(), atol=1e-10, rtol=0)


class _InplaceModule(nn.Module):
    """``h = fc1(x); r = ReLU(inplace=True)(h); return fc2(r) + fc3(h)`` (the issue's example)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(4, 2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        r = self.relu(h)
        return self.fc2(r) + self.fc3(h)


class _InplaceForms(nn.Module):
    """Every in-place form: F.relu(inplace=True), .relu_(), ``identity = h; h += f(h)`` (torchvision)."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        identity = h
        if self.form == "functional":
            F.relu(h, inplace=True)
        elif self.form == "method":
            h.relu_()
        elif self.form == "iadd":
            h += self.fc2(torch.relu(h))
        elif self.form == "iadd-then-relu":
            out = self.fc2(h)
            out += identity
            h = F.relu(out, inplace=True)
        return self.fc3(h) + self.fc3(identity)


@pytest.mark.parametrize("name", ["IBP", "CROWN", "DeepZ", "hBox-Hybrid"])
def test_the_issues_inplace_example_is_bounded_as_eager_torch_computes_it(name: str) -> None:
    torch.manual_seed(3)
    _assert_bounds_the_eager_model(_InplaceModule().double(), (3,), 0.5, name)


@pytest.mark.parametrize("form", ["functional", "method", "iadd", "iadd-then-relu"])
def test_every_inplace_form_is_bounded_as_eager_torch_computes_it(form: str) -> None:
    torch.manual_seed(4)
    _assert_bounds_the_eager_model(_InplaceForms(form).double(), (3,), 0.4)


@st.composite
def _inplace_programs(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """A straight-line program over a few named tensors: (operation, target, source)."""
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["relu_", "relu_module", "iadd", "alias", "linear"]),
                st.integers(0, 3),
                st.integers(0, 3),
            ),
            min_size=2,
            max_size=8,
        )
    )
    return steps


class _Program(nn.Module):
    def __init__(self, steps: list[tuple[str, int, int]]) -> None:
        super().__init__()
        self.steps = steps
        self.fcs = nn.ModuleList(nn.Linear(4, 4) for _ in steps)
        self.relu = nn.ReLU(inplace=True)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        names = [x * 1.0, x * 1.0, x * 1.0, x * 1.0]  # four names (distinct tensors) to alias and modify
        for (operation, target, source), fc in zip(self.steps, self.fcs, strict=True):
            if operation == "relu_":
                names[target].relu_()
            elif operation == "relu_module":
                self.relu(names[target])
            elif operation == "iadd" and target != source:
                names[target] += names[source]
            elif operation == "alias":
                names[target] = names[source]
            elif operation == "linear":
                names[target] = fc(names[source])
        total = names[0] + names[1] + names[2] + names[3]
        return self.out(total)


@given(_inplace_programs(), st.integers(0, 2**16))
def test_random_programs_with_inplace_operations_and_aliases(
    steps: list[tuple[str, int, int]], seed: int
) -> None:
    """Random in-place operations on aliased names: the bounds are of the eager model, or the
    model is refused by name (never a bound of another function)."""
    torch.manual_seed(seed)
    model = _Program(steps).double()
    try:
        parse_model(model, (4,))
    except UnsupportedNetworkError as error:
        assert "in place" in str(error) or "is not supported" in str(error)
        return
    _assert_bounds_the_eager_model(model, (4,), 0.3, seed=seed)


class _ViewThenInplace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        v = h.view(h.size(0), 2, 2)
        h.relu_()  # v, a view of h, changes too
        return self.fc2(v.flatten(1))


def test_an_inplace_change_seen_through_a_view_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedNetworkError, match="in place.*view"):
        parse_model(_ViewThenInplace().double(), (4,))


def test_instance_level_forward_overrides_and_global_hooks_are_refused() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    model[2].forward = lambda x: 3.0 * F.linear(x, model[2].weight, model[2].bias)  # type: ignore[method-assign]
    for dtype in (torch.float32, torch.float64):
        with pytest.raises(UnsupportedNetworkError, match="forward"):
            relaxlab.compute_bounds(model.to(dtype), torch.rand(1, 2, dtype=dtype), 0.1, "IBP")
    plain = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, args, output: output)
    try:
        with pytest.raises(UnsupportedNetworkError, match="global forward hooks"):
            relaxlab.compute_bounds(plain, torch.rand(1, 2), 0.1, "IBP")
    finally:
        handle.remove()


def test_a_normalize_with_a_negative_std_is_bounded_soundly() -> None:
    """A crafted checkpoint may hold a negative std (the constructor refuses one); the engine's
    scale takes any sign (``|1/std|`` for radii), in both dtypes."""
    torch.manual_seed(5)
    model = nn.Sequential(
        Normalize([0.2, -0.1], [0.5, 0.5]), nn.Flatten(), nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 2)
    )
    with torch.no_grad():
        model[0].std.copy_(torch.tensor([-0.5, 2.0]))
    for dtype in (F64,):
        _assert_bounds_the_eager_model(model.to(dtype), (2, 2, 2), 0.3, "IBP")
        _assert_bounds_the_eager_model(model.to(dtype), (2, 2, 2), 0.3, "CROWN")


def test_windows_that_read_only_padding_are_bounded() -> None:
    """Issue 27, item 10: stride-3 convolutions whose padded windows read no pixel (``narrow()``
    crashed); patches equal full maps there."""
    model = nn.Sequential(
        nn.Conv2d(1, 1, 1, stride=3),
        nn.ReLU(),
        nn.Conv2d(1, 1, 1, stride=3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(1, 2),
    ).double()
    for name in ("CROWN", "DeepZ"):
        _assert_bounds_the_eager_model(model, (1, 3, 3), 0.2, name)


@pytest.mark.parametrize("name", ["IBP", "CROWN", "DeepZ", "CROWN-IBP (R)"])
def test_max_pooling_is_bounded_through_relus(name: str) -> None:
    """``MaxPool2d`` as ``max(a, b) = a + relu(b - a)``: bounded by the relaxation's own lines."""
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)
    ).double()
    _assert_bounds_the_eager_model(model, (1, 6, 6), 0.2, name)


class _Shapes(nn.Module):
    """Reshapes, permutes, slices, products with numbers and differences of branches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 2)
        self.fc = nn.Linear(12, 2)
        self.unflatten = nn.Unflatten(1, (3, 4))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x))  # (3, 3, 3)
        a = h.permute(0, 2, 3, 1)[:, 1:, :, :2]  # (2, 3, 2)
        b = 0.5 * a.reshape(a.size(0), -1) - 2.0  # (12,)
        c = self.unflatten(b).transpose(1, 2).flatten(1)
        return self.fc(-c) - self.fc(torch.relu(b / 3.0))


def test_shape_operations_and_numbers_are_bounded_exactly_as_computed() -> None:
    torch.manual_seed(7)
    _assert_bounds_the_eager_model(_Shapes().double(), (2, 4, 4), 0.3)
    _assert_bounds_the_eager_model(_Shapes().double(), (2, 4, 4), 0.3, "DeepZ")


_dims = st.lists(st.integers(0, 3), max_size=4).map(tuple)


@given(constant=_dims, shape=_dims)
def test_a_constant_is_taken_exactly_when_it_broadcasts_onto_the_input_keeping_its_shape(
    constant: tuple[int, ...], shape: tuple[int, ...]
) -> None:
    """The op table's own broadcast check (plain Python: it runs on every parse) against torch's."""
    from relaxlab.engine.optable import _check_broadcast

    try:
        keeps = torch.broadcast_shapes(constant, shape) == shape
    except RuntimeError:
        keeps = False
    if keeps:
        _check_broadcast(torch.zeros(constant), shape, "here")
    else:
        with pytest.raises(UnsupportedNetworkError, match="does not broadcast"):
            _check_broadcast(torch.zeros(constant), shape, "here")
