"""Answer VNN-COMP instances (an ONNX network and a VNN-LIB property), as ``relaxlab verify`` does.

A property (:mod:`relaxlab.engine.vnnlib`) is a list of regions, each an input box with a
disjunction of output conjunctions; a counterexample is a point of some box whose outputs
satisfy every atom ``c·y <= b`` of some conjunction. The answer is

- ``unsat`` (proved safe) only when **every** conjunction over **every** box is refuted: a
  sound lower bound of ``λ·(C·y - b)`` over the box exceeds the certification tolerance of
  :func:`relaxlab.engine.spec.is_certified` for some ``λ >= 0`` (one atom: ``λ`` a unit vector;
  several: the plan also tries the average and, where the bound is differentiable, optimises
  ``λ`` on the simplex by gradient ascent; every ``λ >= 0`` is sound, so the optimised choice is
  as sound as the plain one);
- ``sat`` only with a counterexample that the network's own forward pass confirms, in float32
  (the ONNX weights as stored) and in float64, each output checked against the atoms exactly
  (every float taken at its exact rational value, the atoms' constants as the file wrote them);
- ``unknown`` when the plan ends without either, ``timeout`` when the time limit passed first,
  ``error`` (with the reason) when the files cannot be read or the network is not supported.

The plan runs **stages**, cheap to expensive (:data:`DEFAULT_PLAN`): bound stages
(:class:`BoundStage`, any registered relaxation by name, ``opt:NAME`` with its parameters optimised
per neuron; IBP, CROWN and ``opt:CROWN-alpha``, i.e. α-CROWN, by default) work on the
conjunctions not refuted yet, all atoms of a box batched as the rows of one specification
matrix ``C``; the attack stage (:class:`AttackStage`, ``"PGD"``) minimises the violation of
each remaining conjunction over its box from several starts (:func:`relaxlab.evaluation.pgd.pgd_minimize`).
The time limit is checked between stages, between boxes, at every PGD step and every
multiplier step; a bound computation that has started finishes.

Bounds are computed in float64 on a float64 copy of the network: the bound holds for the
network's function in exact arithmetic up to float64 rounding, far below the tolerance.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import attrs
import torch
from attrs import field, frozen
from torch import Tensor, nn

from relaxlab.core.relaxer import Relaxer
from relaxlab.engine.onnx import load_onnx
from relaxlab.engine.optimise import Optimise, Optimised
from relaxlab.engine.spec import is_certified
from relaxlab.engine.vnnlib import Atom, Property, Region, read_vnnlib, write_text_atomic
from relaxlab.evaluation.pgd import pgd_minimize

__all__ = [
    "DEFAULT_PLAN",
    "STATUSES",
    "AttackStage",
    "BoundStage",
    "SplitStage",
    "Counterexample",
    "Deadline",
    "Instance",
    "Result",
    "Stage",
    "contradictions",
    "read_expected",
    "read_instances",
    "relaxation_bound",
    "resolve_stage",
    "result_text",
    "summarise",
    "verify_instance",
    "verify_instances",
    "verify_property",
    "write_results",
]

#: Every answer, as the competition words them.
STATUSES = ("unsat", "sat", "unknown", "timeout", "error")
#: The default plan: cheap bounds, the attack, then input splitting (for few inputs only).
DEFAULT_PLAN = ("IBP", "CROWN", "PGD", "opt:CROWN-alpha", "split")
#: Gradient steps of the multiplier optimisation of one conjunction set, per bound stage.
MULTIPLIER_STEPS = 20
#: PGD rounds of the attack stage; starts per conjunction in each round; steps per start.
ATTACK_ROUNDS = 3
ATTACK_STARTS = 8
ATTACK_STEPS = 100
#: The split stage: most inputs, sub-boxes per bound computation, sub-boxes in all.
SPLIT_MAX_INPUTS = 16
SPLIT_BATCH = 256
SPLIT_MAX_BOXES = 200_000


# --- values ----------------------------------------------------------------------------------


@frozen
class Instance:
    """One VNN-COMP instance.

    :param network: the ``.onnx`` file.
    :param prop: the ``.vnnlib`` file.
    :param timeout: seconds allowed.
    :param benchmark: the benchmark's name (the folder of its ``instances.csv``).
    """

    network: Path = field(converter=Path)
    prop: Path = field(converter=Path)
    timeout: float = field(converter=float)
    benchmark: str = ""


@frozen
class Counterexample:
    """An input of the property's box and the outputs the network computes for it (float32)."""

    inputs: tuple[float, ...]
    outputs: tuple[float, ...]

    def text(self) -> str:
        """The assignment as VNN-COMP result files give it: ``((X_0 v) (X_1 v) ... (Y_0 v) ...)``, one per line."""
        pairs = [f"(X_{i} {v!r})" for i, v in enumerate(self.inputs)]
        pairs += [f"(Y_{j} {v!r})" for j, v in enumerate(self.outputs)]
        return "(" + "\n ".join(pairs) + ")"


@frozen
class Result:
    """The answer for one instance or property.

    :param status: one of :data:`STATUSES`.
    :param seconds: wall time from reading the files (or from the call) to the answer.
    :param method: what decided it: the bound stage that refuted the last conjunction (``"+λ"``
        when optimised multipliers were needed), the attack stage for a counterexample,
        ``"empty"`` for a property no input satisfies; empty for unknown, timeout and error.
    :param reason: why, for unknown, timeout and error.
    :param counterexample: for ``sat``, the input and the outputs the network computed for it.
    :param instance: the instance answered (``None`` for :func:`verify_property`).
    """

    status: str = field()
    seconds: float
    method: str = ""
    reason: str = ""
    counterexample: Counterexample | None = None
    instance: Instance | None = None

    @status.validator
    def _check_status(self, attribute: object, value: str) -> None:
        if value not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {value!r}")
        if value == "sat" and self.counterexample is None:
            raise ValueError("a sat result needs its counterexample")


def result_text(result: Result) -> str:
    """The result file of one instance as VNN-COMP tools write it: the status word, then for ``sat`` the counterexample."""
    if result.status == "sat":
        assert result.counterexample is not None
        return f"sat\n{result.counterexample.text()}\n"
    return f"{result.status}\n"


class Deadline:
    """A point in time (``time.monotonic``) ``seconds`` from now."""

    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.end = self.start + seconds

    def expired(self) -> bool:
        """Whether the time is up."""
        return time.monotonic() >= self.end

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.start


# --- stages ----------------------------------------------------------------------------------


class BoundFn(Protocol):
    """Sound lower bounds of ``C·model(x)`` for every ``x`` in each box ``[lower[i], upper[i]]``.

    :param model: the network in float64, eval mode.
    :param lower: ``(B, *input_shape)`` float64 lower ends of ``B`` boxes; ``upper`` likewise.
    :param C: ``(S, K)`` float64 rows over the ``K`` outputs, the same for every box.
    :param deadline: a long computation may stop early when it expires, returning any sound bound.
    :return: ``(B, S)`` lower bounds (differentiable in ``C`` where the stage allows the
        multiplier optimisation).
    """

    def __call__(
        self, model: nn.Module, lower: Tensor, upper: Tensor, C: Tensor, deadline: Deadline
    ) -> Tensor: ...


@frozen
class BoundStage:
    """A stage that refutes conjunctions with sound bounds.

    :param name: how results name it (``"CROWN"``).
    :param bound: the bound (:class:`BoundFn`).
    :param multipliers: optimise the multipliers of conjunctions of several atoms (needs ``bound``
        differentiable in ``C``).
    """

    name: str
    bound: BoundFn
    multipliers: bool = True


@frozen
class AttackStage:
    """A stage that searches counterexamples by PGD from several starts per conjunction."""

    name: str = "PGD"
    rounds: int = ATTACK_ROUNDS
    starts: int = ATTACK_STARTS
    steps: int = ATTACK_STEPS
    seed: int = 0


@frozen
class SplitStage:
    """Branch and bound on the input box, for networks with few inputs (ACAS Xu has 5).

    Every open conjunction is bounded over sub-boxes, a batch at a time; a sub-box where some
    conjunction stays open is halved along the input whose width times the gradient at its
    centre is largest. A conjunction is refuted when it is refuted on every leaf: the leaves
    cover the box exactly (the halves share their cut), so this is sound by construction. The
    centre of every sub-box is also tried as a counterexample.

    :param name: how results name it.
    :param bound: the bound used on each sub-box (:class:`BoundFn`, batched over the sub-boxes).
    :param max_inputs: inputs above this skip the stage (splitting does not scale with dimension).
    :param batch: sub-boxes bounded at once.
    :param max_boxes: sub-boxes bounded in all before the stage gives up.
    """

    name: str
    bound: BoundFn
    max_inputs: int = SPLIT_MAX_INPUTS
    batch: int = SPLIT_BATCH
    max_boxes: int = SPLIT_MAX_BOXES


Stage = BoundStage | AttackStage | SplitStage


def relaxation_bound(relaxation: str | Relaxer, optimise: Optimise | None = None) -> BoundFn:
    """The :class:`BoundFn` of a relaxation (an object or a registered name), through :func:`relaxlab.compute_bounds`;
    with ``optimise`` its parameters are optimised per neuron until the bound is certain or the deadline passes."""
    from relaxlab.api import compute_bounds

    def bound(model: nn.Module, lower: Tensor, upper: Tensor, C: Tensor, deadline: Deadline) -> Tensor:
        # centre and a radius of the full width, clipped to the box: exactly [lower, upper], rounded
        # outward, and bounds that hold in floating point (rigorous): an unsat claim rests on them
        centre = (lower + upper) / 2
        lb, _ = compute_bounds(
            model,
            centre,
            upper - lower,
            relaxation,
            C=C,
            domain=(lower, upper),
            lower_only=True,
            rigorous=True,
            optimise=optimise,
            stop=deadline.expired,
        )
        return lb

    return bound


def resolve_stage(name: str) -> Stage:
    """The stage called ``name``: ``"PGD"`` the attack, ``"split"`` input splitting with CROWN,
    ``"opt:NAME"`` a registered relaxation with its parameters optimised per neuron
    (:func:`relaxlab.api.optimisation`; ``opt:CROWN-alpha`` is α-CROWN), any other name a registered
    relaxation.

    :raises LookupError: an unknown name (the registry's message, with close matches).
    """
    if name.upper() == "PGD":
        return AttackStage()
    if name.lower() == "split":
        return SplitStage("split", relaxation_bound("CROWN"))
    from relaxlab.api import get_method

    method = get_method(name)
    if isinstance(method, Optimised):  # each bound is a search already: no multiplier search around it
        return BoundStage(
            method.name, relaxation_bound(method.relaxation, method.optimise), multipliers=False
        )
    return BoundStage(method.name, relaxation_bound(method))


# --- one instance ----------------------------------------------------------------------------


@frozen
class _Network:
    """A network to verify: the module as given (its own forward pass), a float64 copy, shapes."""

    model: nn.Module
    model64: nn.Module
    input_shape: tuple[int, ...]
    num_outputs: int
    dtype: torch.dtype


def _network(model: nn.Module, input_shape: Sequence[int]) -> _Network:
    shape = tuple(int(d) for d in input_shape)
    parameter = next(iter(model.parameters()), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    model64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        out = model64(torch.zeros(1, *shape, dtype=torch.float64))
    return _Network(model, model64, shape, int(out.reshape(1, -1).shape[1]), dtype)


def _load_network(path: Path) -> _Network:
    model = load_onnx(path)
    return _network(model.float().eval(), model.input_shape)


def _rows(conjunction: Sequence[Atom], num_outputs: int) -> tuple[Tensor, Tensor]:
    """``(A, K)`` rows and ``(A,)`` constants of the atoms, each scaled to a largest coefficient of 1.

    Scaling by a positive number keeps each inequality; the constants are rounded up, so
    ``c·y - b`` bounded from below is never larger than the exact value (the rows are the
    nearest floats of the exact coefficients: their rounding, 2^-53 relative, is far below
    the tolerance).
    """
    C = torch.zeros(len(conjunction), num_outputs, dtype=torch.float64)
    b = torch.zeros(len(conjunction), dtype=torch.float64)
    for row, atom in enumerate(conjunction):
        scale = max(abs(c) for _, c in atom.coefficients)
        for j, c in atom.coefficients:
            C[row, j] = float(c / scale)
        bound = atom.bound / scale
        value = float(bound)
        b[row] = value if Fraction(value) >= bound else math.nextafter(value, math.inf)
    return C, b


class _RegionWork:
    """One box of the property: its float tensors and which conjunctions are still open."""

    def __init__(self, region: Region, network: _Network) -> None:
        self.region = region
        lower, upper = region.box.float_bounds()
        self.lower = torch.tensor(lower, dtype=torch.float64).reshape(1, *network.input_shape)
        self.upper = torch.tensor(upper, dtype=torch.float64).reshape(1, *network.input_shape)
        self.rows = [_rows(conjunction, network.num_outputs) for conjunction in region.disjuncts]
        self.open = list(range(len(region.disjuncts)))
        with torch.no_grad():
            self.centre_outputs = network.model64((self.lower + self.upper) / 2).reshape(1, -1)

    def refuted(self, lb: Tensor, offsets: Tensor) -> Tensor:
        """Which rows are refuted: ``lb - offsets`` (a lower bound of ``λ·(C·y - b)``) above the tolerance.

        The tolerance is :func:`~relaxlab.engine.spec.is_certified`'s, relative to the larger of the
        outputs at the box centre and the row's constant.
        """
        scale = torch.cat(
            [self.centre_outputs.expand(lb.numel(), -1), offsets.detach().abs().reshape(-1, 1)], 1
        )
        return is_certified((lb - offsets).reshape(-1, 1), scale)


def _bound_step(stage: BoundStage, work: _RegionWork, network: _Network, deadline: Deadline) -> bool:
    """Refute what ``stage`` can of ``work``'s open conjunctions; whether multipliers were needed."""
    rows, offsets, owners = [], [], []
    for index in work.open:
        if not work.rows[index][1].numel():
            continue  # no atom: nothing to refute (any input of the box is a counterexample)
        C, b = work.rows[index]
        rows.append(C)
        offsets.append(b)
        owners += [index] * len(b)
        if len(b) > 1:  # the average of the atoms: λ uniform
            rows.append(C.mean(0, keepdim=True))
            offsets.append(b.mean(0, keepdim=True))
            owners.append(index)
    if not rows:
        return False
    with torch.no_grad():
        lb = stage.bound(network.model64, work.lower, work.upper, torch.cat(rows), deadline)[0]
    refuted = work.refuted(lb, torch.cat(offsets))
    done = {owner for owner, hit in zip(owners, refuted.tolist(), strict=True) if hit}
    work.open = [index for index in work.open if index not in done]
    several = [index for index in work.open if len(work.rows[index][1]) > 1]
    if not (stage.multipliers and several) or deadline.expired():
        return False
    before = set(work.open)
    _optimise_multipliers(stage, work, network, several, deadline)
    return set(work.open) != before


def _optimise_multipliers(
    stage: BoundStage, work: _RegionWork, network: _Network, indices: list[int], deadline: Deadline
) -> None:
    """Gradient ascent on ``λ = softmax(θ)`` (the simplex) of each conjunction in ``indices``."""
    width = max(len(work.rows[i][1]) for i in indices)
    K = network.num_outputs
    C = torch.zeros(len(indices), width, K, dtype=torch.float64)
    b = torch.zeros(len(indices), width, dtype=torch.float64)
    mask = torch.zeros(len(indices), width, dtype=torch.bool)
    for k, index in enumerate(indices):
        rows, offsets = work.rows[index]
        C[k, : len(offsets)], b[k, : len(offsets)], mask[k, : len(offsets)] = rows, offsets, True
    theta = torch.zeros(len(indices), width, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.Adam([theta], lr=0.5)
    alive = torch.ones(len(indices), dtype=torch.bool)
    for _ in range(MULTIPLIER_STEPS):
        if deadline.expired():
            break
        weights = torch.softmax(theta.masked_fill(~mask, -torch.inf), dim=1)
        rows = torch.einsum("da,dak->dk", weights[alive], C[alive])
        lb = stage.bound(network.model64, work.lower, work.upper, rows, deadline)[0]
        offsets = (weights[alive] * b[alive]).sum(1)
        if not lb.requires_grad:
            break  # the stage's bound is not differentiable in C: nothing to optimise
        margins = lb - offsets
        hit = work.refuted(lb.detach(), offsets.detach())
        if not bool(hit.all()):
            optimiser.zero_grad()
            (-margins[~hit].sum()).backward()
            optimiser.step()
        alive = alive.clone()
        alive[alive.clone()] = ~hit
        if not bool(alive.any()):
            break
    refuted = {index for index, open_ in zip(indices, alive.tolist(), strict=True) if not open_}
    work.open = [index for index in work.open if index not in refuted]


def _violation(C: Tensor, b: Tensor, mask: Tensor) -> Callable[[Tensor], Tensor]:
    """``y -> max_a (C_a·y - b_a)`` over each element's atoms: ``<= 0`` exactly when all atoms hold."""

    def objective(outputs: Tensor) -> Tensor:
        values = torch.einsum("bak,bk->ba", C, outputs.reshape(outputs.shape[0], -1).to(C.dtype)) - b
        return values.masked_fill(~mask, -torch.inf).amax(1)

    return objective


def _confirm(
    x: Tensor, conjunction: Sequence[Atom], region: Region, network: _Network
) -> Counterexample | None:
    """The counterexample at ``x`` if the network's own forward pass and its float64 copy confirm it.

    ``x`` is first snapped to the network's dtype inside the box (one step of ``nextafter``
    where rounding left it); both outputs must satisfy every atom exactly.
    """
    lower, upper = region.box.float_bounds(inward=True)
    lo = torch.tensor(lower, dtype=torch.float64)
    hi = torch.tensor(upper, dtype=torch.float64)
    point = x.reshape(-1).to(network.dtype)
    point = torch.where(point.double() < lo, torch.nextafter(point, torch.full_like(point, math.inf)), point)
    point = torch.where(point.double() > hi, torch.nextafter(point, torch.full_like(point, -math.inf)), point)
    inputs = point.tolist()
    if not region.box.contains(inputs):
        return None
    with torch.no_grad():
        own = network.model(point.reshape(1, *network.input_shape)).reshape(-1).tolist()
        wide = network.model64(point.double().reshape(1, *network.input_shape)).reshape(-1).tolist()
    if not all(math.isfinite(v) for v in [*own, *wide]):
        return None
    if all(atom.holds(own) and atom.holds(wide) for atom in conjunction):
        return Counterexample(tuple(inputs), tuple(own))
    return None


def _attack(
    stage: AttackStage, work: _RegionWork, network: _Network, deadline: Deadline
) -> Counterexample | None:
    """PGD on every open conjunction of one box; the first counterexample the network confirms.

    The descent runs on the network as given (float32 for an ONNX file: twice as fast as
    float64), inside the box rounded inward; every candidate is then confirmed exactly
    (:func:`_confirm`).
    """
    lower, upper = work.region.box.float_bounds(inward=True)
    if any(lo > hi for lo, hi in zip(lower, upper, strict=True)):
        return None  # no float64 point inside the box
    shape = network.input_shape
    dtype = network.dtype
    lo = torch.tensor(lower, dtype=dtype).reshape(1, *shape)
    hi = torch.tensor(upper, dtype=dtype).reshape(1, *shape)
    width = max(1, *(len(work.rows[i][1]) for i in work.open))
    count = len(work.open) * stage.starts
    C = torch.zeros(count, width, network.num_outputs, dtype=dtype)
    b = torch.zeros(count, width, dtype=dtype)
    mask = torch.zeros(count, width, dtype=torch.bool)
    owner = []
    for k, index in enumerate(work.open):
        rows, offsets = work.rows[index]
        span = slice(k * stage.starts, (k + 1) * stage.starts)
        C[span, : len(offsets)], b[span, : len(offsets)], mask[span, : len(offsets)] = rows, offsets, True
        owner += [index] * stage.starts
    generator = torch.Generator().manual_seed(stage.seed)
    lo_b, hi_b = lo.expand(count, *shape), hi.expand(count, *shape)
    objective = _violation(C, b, mask)
    for round_ in range(stage.rounds):
        if deadline.expired():
            return None
        start = lo_b + (hi_b - lo_b) * torch.rand(lo_b.shape, generator=generator, dtype=dtype)
        if round_ == 0:
            start[:: stage.starts] = (lo + hi) / 2  # one start per conjunction at the centre
        x, value = pgd_minimize(
            network.model,
            objective,
            lo_b,
            hi_b,
            start=start,
            steps=stage.steps,
            should_stop=deadline.expired,
            stop_below=0.0,
        )
        for k in torch.argsort(value).tolist():
            if float(value[k]) > 0:
                break
            found = _confirm(x[k].double(), work.region.disjuncts[owner[k]], work.region, network)
            if found is not None:
                return found
    return None


def _split(
    stage: SplitStage, work: _RegionWork, network: _Network, deadline: Deadline
) -> Counterexample | None:
    """Branch and bound on one box (see :class:`SplitStage`); refuted conjunctions leave ``work.open``."""
    chosen = [index for index in work.open if work.rows[index][1].numel()]
    if math.prod(network.input_shape) > stage.max_inputs or not chosen:
        return None
    rows, offsets, owners, is_atom = [], [], [], []
    for position, index in enumerate(chosen):
        C, b = work.rows[index]
        rows += [C, C.mean(0, keepdim=True)]  # the atoms, then their average
        offsets += [b, b.mean(0, keepdim=True)]
        owners += [position] * (len(b) + 1)
        is_atom += [True] * len(b) + [False]
    C, b = torch.cat(rows), torch.cat(offsets)
    owner, atom = torch.tensor(owners), torch.tensor(is_atom)
    belongs = owner.unsqueeze(0) == torch.arange(len(chosen)).unsqueeze(1)  # (D, S)
    pending_lo, pending_hi = work.lower, work.upper
    pending = torch.ones(1, len(chosen), dtype=torch.bool)  # which conjunctions are open on each sub-box
    bounded = 0
    while pending.shape[0] and not deadline.expired() and bounded < stage.max_boxes:
        lo, hi, mask = (
            pending_lo[-stage.batch :],
            pending_hi[-stage.batch :],
            pending[-stage.batch :],
        )  # depth first
        pending_lo, pending_hi, pending = (
            pending_lo[: -stage.batch],
            pending_hi[: -stage.batch],
            pending[: -stage.batch],
        )
        with torch.no_grad():
            lb = stage.bound(network.model64, lo, hi, C, deadline)
        bounded += lo.shape[0]
        refuted = work.refuted(lb.reshape(-1), b.repeat(lo.shape[0])).reshape(lo.shape[0], -1)  # (n, S)
        mask = mask & ~(refuted.unsqueeze(1) & belongs).any(2)
        keep = mask.any(1)
        lo, hi, mask = lo[keep], hi[keep], mask[keep]
        if not lo.shape[0]:
            continue
        centre = ((lo + hi) / 2).requires_grad_(True)
        values = (
            network.model64(centre).reshape(lo.shape[0], -1) @ C.T - b
        )  # (n, S): every row at the centres
        violation = values.detach().unsqueeze(1).masked_fill(~(belongs & atom), -math.inf).amax(2)  # (n, D)
        for box, position in (
            ((violation <= 0) & mask).nonzero().tolist()
        ):  # a centre that violates: confirm it
            found = _confirm(
                centre[box].detach(), work.region.disjuncts[chosen[position]], work.region, network
            )
            if found is not None:
                return found
        # halve each sub-box along the input of largest width x |gradient of its open conjunctions' averages|
        averages = values.unsqueeze(1).masked_fill(~(belongs & ~atom), 0.0).sum(2)  # (n, D)
        (grad,) = torch.autograd.grad((averages * mask).sum(), centre)
        width = (hi - lo).reshape(lo.shape[0], -1)
        score = width * grad.reshape(lo.shape[0], -1).abs()
        dim = torch.where(score.amax(1, keepdim=True) > 0, score, width).argmax(1)
        flat_lo, flat_hi = lo.reshape(lo.shape[0], -1), hi.reshape(hi.shape[0], -1)
        picked = torch.arange(lo.shape[0])
        cut = ((flat_lo + flat_hi) / 2)[picked, dim]  # both halves hold the cut: they cover the sub-box
        left_hi, right_lo = flat_hi.clone(), flat_lo.clone()
        left_hi[picked, dim] = cut
        right_lo[picked, dim] = cut
        pending_lo = torch.cat([pending_lo, lo, right_lo.reshape(lo.shape)])
        pending_hi = torch.cat([pending_hi, left_hi.reshape(hi.shape), hi])
        pending = torch.cat([pending, mask, mask])
    still = pending.any(0)
    refuted_all = {index for index, open_ in zip(chosen, still.tolist(), strict=True) if not open_}
    work.open = [index for index in work.open if index not in refuted_all]
    return None


def verify_property(
    model: nn.Module,
    prop: Property,
    *,
    input_shape: Sequence[int] | None = None,
    timeout: float = 300.0,
    plan: Sequence[Stage] | None = None,
) -> Result:
    """Answer a property of a torch network (see the module docstring).

    :param model: the network, put in eval mode; its own forward pass (in its dtype) confirms
        counterexamples, bounds are computed on a float64 copy.
    :param prop: the property (:func:`relaxlab.engine.vnnlib.read_vnnlib`).
    :param input_shape: the shape of one input (default: ``(prop.num_inputs,)``).
    :param timeout: seconds allowed.
    :param plan: the stages in order (default: :data:`DEFAULT_PLAN` resolved).
    :raises ValueError: the property's sizes do not match the network.
    """
    network = _network(model.eval(), input_shape if input_shape is not None else (prop.num_inputs,))
    _check_sizes(prop, network)
    return _answer(prop, network, Deadline(timeout), timeout, plan)


def verify_instance(
    instance: Instance,
    *,
    plan: Sequence[Stage] | None = None,
    networks: dict[Path, _Network] | None = None,
) -> Result:
    """Answer one instance; a file that cannot be read or a network that is not supported is an ``error`` result.

    :param plan: the stages in order (default: :data:`DEFAULT_PLAN` resolved).
    :param networks: a cache of loaded networks by path, shared between instances.
    """
    deadline = Deadline(instance.timeout)
    try:
        prop = read_vnnlib(instance.prop)
        cache = networks if networks is not None else {}
        if instance.network not in cache:
            cache[instance.network] = _load_network(instance.network)
        network = cache[instance.network]
        _check_sizes(prop, network)
    except Exception as error:  # a per-instance answer, never a crash of the batch
        outcome = Result("error", deadline.elapsed(), reason=f"{type(error).__name__}: {error}")
    else:
        outcome = _answer(prop, network, deadline, instance.timeout, plan)
    return attrs.evolve(outcome, instance=instance)


def _answer(
    prop: Property, network: _Network, deadline: Deadline, timeout: float, plan: Sequence[Stage] | None
) -> Result:
    """Run the plan; an answer that arrives after the limit is a ``timeout``; an exception an ``error``."""

    def result(
        status: str, method: str = "", reason: str = "", counterexample: Counterexample | None = None
    ) -> Result:
        seconds = deadline.elapsed()
        if status in ("unsat", "sat", "unknown") and seconds > timeout:
            reason = f"{status} after {seconds:.3g} s, beyond the limit of {timeout:g} s"
            status, method, counterexample = "timeout", "", None
        return Result(status, seconds, method, reason, counterexample)

    if not prop.regions:
        return result("unsat", "empty", "no input satisfies the property's input constraints")
    try:
        stages = list(plan) if plan is not None else [resolve_stage(name) for name in DEFAULT_PLAN]
        return _run_plan(prop, network, stages, deadline, result)
    except Exception as error:
        return result("error", reason=f"{type(error).__name__}: {error}")


def _check_sizes(prop: Property, network: _Network) -> None:
    inputs = math.prod(network.input_shape)
    if prop.num_inputs != inputs or prop.num_outputs != network.num_outputs:
        raise ValueError(
            f"the property declares {prop.num_inputs} inputs and {prop.num_outputs} outputs, "
            f"the network has {inputs} and {network.num_outputs}"
        )


def _run_plan(
    prop: Property,
    network: _Network,
    stages: Sequence[Stage],
    deadline: Deadline,
    result: Callable[..., Result],
) -> Result:
    works = [_RegionWork(region, network) for region in prop.regions]
    for work in works:  # an empty conjunction: every input of the box is a counterexample
        if any(not conjunction for conjunction in work.region.disjuncts):
            found = _confirm((work.lower + work.upper) / 2, (), work.region, network)
            if found is not None:
                return result("sat", "no output constraint", counterexample=found)
    tried: list[str] = []
    for stage in stages:
        if deadline.expired():
            return result(
                "timeout", reason=f"time limit reached after {', '.join(tried) or 'reading the files'}"
            )
        tried.append(stage.name)
        multipliers = False
        for work in works:
            if not work.open:
                continue
            if deadline.expired():
                return result("timeout", reason=f"time limit reached during {stage.name}")
            if isinstance(stage, (AttackStage, SplitStage)):
                found = (
                    _attack(stage, work, network, deadline)
                    if isinstance(stage, AttackStage)
                    else _split(stage, work, network, deadline)
                )
                if found is not None:
                    return result("sat", stage.name, counterexample=found)
            else:
                multipliers |= _bound_step(stage, work, network, deadline)
        if all(not work.open for work in works):
            return result("unsat", stage.name + ("+λ" if multipliers else ""))
    if deadline.expired():
        return result("timeout", reason=f"time limit reached after {', '.join(tried)}")
    left = sum(len(work.open) for work in works)
    total = sum(len(work.region.disjuncts) for work in works)
    return result(
        "unknown", reason=f"{left} of {total} conjunctions neither refuted nor violated by {', '.join(tried)}"
    )


# --- many instances --------------------------------------------------------------------------


def read_instances(path: str | Path, *, timeout: float | None = None) -> list[Instance]:
    """The instances of a competition ``instances.csv`` (``onnx,vnnlib,timeout`` rows, paths relative to its folder).

    :param timeout: replaces every row's timeout (``--timeout``).
    :raises ValueError: a malformed row, naming the file and line.
    """
    path = Path(path)
    folder = path.parent
    instances = []
    with open(path, encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != 3:
                raise ValueError(f"{path}:{number}: expected onnx,vnnlib,timeout, got {len(row)} fields")
            onnx_name, vnnlib_name, limit = (cell.strip() for cell in row)
            try:
                seconds = float(limit) if timeout is None else timeout
            except ValueError:
                raise ValueError(f"{path}:{number}: timeout {limit!r} is not a number") from None
            if not seconds > 0 or not math.isfinite(seconds):
                raise ValueError(
                    f"{path}:{number}: the timeout must be a positive number of seconds, got {seconds}"
                )
            instances.append(Instance(folder / onnx_name, folder / vnnlib_name, seconds, folder.name))
    return instances


def verify_instances(
    instances: Iterable[Instance],
    *,
    plan: Sequence[Stage] | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Answer every instance in order; each network is loaded once.

    :param on_result: called with each result as soon as it is known (progress, files).
    """
    networks: dict[Path, _Network] = {}
    results = []
    for instance in instances:
        outcome = verify_instance(instance, plan=plan, networks=networks)
        results.append(outcome)
        if on_result is not None:
            on_result(outcome)
    return results


def _instance(outcome: Result) -> Instance:
    if outcome.instance is None:
        raise ValueError("this needs the results of instances (verify_instance), not of verify_property")
    return outcome.instance


def write_results(results: Sequence[Result], directory: str | Path) -> None:
    """``results.csv`` and one competition result file per instance in ``directory`` (each written atomically).

    The result file of an instance is ``<benchmark>__<onnx stem>__<vnnlib stem>.txt``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["benchmark,onnx,vnnlib,result,method,time_s,reason"]
    for outcome in results:
        instance = _instance(outcome)
        name = "__".join(filter(None, (instance.benchmark, instance.network.stem, instance.prop.stem)))
        write_text_atomic(directory / f"{name}.txt", result_text(outcome))
        reason = outcome.reason.replace('"', "'").replace("\n", " ")
        lines.append(
            f"{instance.benchmark},{instance.network.name},{instance.prop.name},{outcome.status},"
            f'{outcome.method},{outcome.seconds:.3f},"{reason}"'
        )
    write_text_atomic(directory / "results.csv", "\n".join(lines) + "\n")


@frozen
class Summary:
    """The counts of one benchmark: answers, what proved them, time."""

    benchmark: str
    instances: int
    counts: dict[str, int]
    methods: dict[str, int]
    seconds: float


def summarise(results: Iterable[Result]) -> list[Summary]:
    """One :class:`Summary` per benchmark, in order of first appearance."""
    groups: dict[str, list[Result]] = {}
    for outcome in results:
        groups.setdefault(_instance(outcome).benchmark, []).append(outcome)
    summaries = []
    for benchmark, group in groups.items():
        counts = {status: sum(r.status == status for r in group) for status in STATUSES}
        methods: dict[str, int] = {}
        for outcome in group:
            if outcome.status in ("unsat", "sat"):
                methods[outcome.method] = methods.get(outcome.method, 0) + 1
        summaries.append(Summary(benchmark, len(group), counts, methods, sum(r.seconds for r in group)))
    return summaries


def read_expected(path: str | Path) -> dict[tuple[str, str, str], tuple[str, int, int]]:
    """The competition's answers: ``(benchmark, onnx, vnnlib) -> (consensus, tools_sat, tools_unsat)``.

    Reads a csv with the columns ``benchmark,onnx,vnnlib,consensus,tools_sat,tools_unsat``
    (``consensus``: ``SAT``, ``UNSAT`` or ``unknown``).
    """
    expected = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            key = (row["benchmark"], row["onnx"], row["vnnlib"])
            expected[key] = (row["consensus"], int(row["tools_sat"]), int(row["tools_unsat"]))
    return expected


def contradictions(
    results: Iterable[Result], expected: dict[tuple[str, str, str], tuple[str, int, int]]
) -> Iterator[tuple[Result, str]]:
    """Every answer that contradicts the competition's: ``unsat`` where it is SAT, ``sat`` where it is UNSAT.

    A ``sat`` whose counterexample the network confirmed contradicts an UNSAT consensus all the
    same: one of the two is wrong, and it must be looked at.
    """
    for outcome in results:
        instance = _instance(outcome)
        consensus = expected.get(
            (instance.benchmark, instance.network.name, instance.prop.name), ("unknown", 0, 0)
        )[0]
        if outcome.status == "unsat" and consensus == "SAT":
            yield outcome, "proved safe where the competition found a counterexample"
        elif outcome.status == "sat" and consensus == "UNSAT":
            yield outcome, "a counterexample where the competition proved safety"
