"""The facade: the process-wide registry, relaxations by name, and bounds by name.

Everything below this module takes objects and is wired by its caller; this module does the
wiring once for the user:

- :func:`get_registry` builds the registry of all installed plugins with the soundness check
  of :mod:`relaxlab.properties` (the prover's verdict, kept in the verdict cache of
  :mod:`relaxlab.properties.cache`; the registry itself takes the check as an argument);
- :func:`extended_registry` adds relaxations (discovery's, which no plugin provides) for the
  length of a ``with`` block: inside it every name look-up of the facade sees them, outside it
  nothing has changed;
- :func:`get_relaxation` and :func:`select_relaxations` resolve what a user typed, refusing
  relaxations that failed the check;
- :func:`compute_bounds` is :func:`relaxlab.engine.compute_bounds` with registered names
  resolved first;
- :func:`optimisation` is the request to optimise a relaxation's parameters per neuron, made only
  for parameters whose whole range the prover has proved sound; :func:`get_method` and
  :func:`select_methods` also resolve ``opt:NAME`` (the relaxation with its parameters optimised).

``relaxlab.get_registry``, ``relaxlab.get_relaxation`` and ``relaxlab.compute_bounds`` are these.

State: this module alone holds and changes the process-wide registry (``_REGISTRY``, built once;
changed only by :func:`get_registry` ``(refresh=True)`` and :func:`register_relaxation`, which a
user calls) and the registry extended for the current block (``_EXTENDED``, a context variable
set and reset by :func:`extended_registry` only). Library code never registers into the
process-wide registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import attrs

from relaxlab.core.relaxation import ReluRelaxation
from relaxlab.core.relaxer import Relaxer, check_relaxer
from relaxlab.properties import check_soundness_cached
from relaxlab.registry import Registry, UnsoundRelaxationError, build_registry

if TYPE_CHECKING:
    from torch import Tensor, nn

    from relaxlab.engine.network import Network
    from relaxlab.engine.optimise import Optimise

__all__ = [
    "compute_bounds",
    "extended_registry",
    "get_method",
    "get_registry",
    "get_relaxation",
    "optimisation",
    "register_relaxation",
    "select_methods",
    "select_relaxations",
]

_REGISTRY: Registry | None = None
#: The registry of the innermost :func:`extended_registry` block (``None`` outside every block).
_EXTENDED: ContextVar[Registry | None] = ContextVar("relaxlab_extended_registry", default=None)


def get_registry(*, refresh: bool = False) -> Registry:
    """The registry in force: inside an :func:`extended_registry` block its extension, else the
    process-wide one (built on first use, soundness-checked; ``refresh=True`` rebuilds that one)."""
    extended = _EXTENDED.get()
    process = _process_registry(refresh)
    return process if extended is None else extended


def _process_registry(refresh: bool = False) -> Registry:
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = build_registry(check=check_soundness_cached)
    return _REGISTRY


@contextmanager
def extended_registry(relaxations: Iterable[ReluRelaxation], source: str) -> Iterator[Registry]:
    """Inside the block, the registry in force plus ``relaxations``; the block's end restores the one before.

    What discovery generated, which no plugin provides, is used this way by name (a screen's
    candidates, the runs of its sweep in any process): each relaxation is soundness-checked as a
    plugin's is, and one the registry already holds by name is left as it is. The registry the
    block extends is never changed, so nothing outlives the block.

    :param source: the name shown as the relaxations' plugin (``"relaxlab screen"``).
    :raises UnsoundRelaxationError: the check refutes one of them (the reason is in the message).
    """
    base = get_registry()
    missing = [r for r in relaxations if r.name not in base.relaxations]
    if not missing:
        yield base
        return
    extended = attrs.evolve(
        base, relaxations=base.relaxations.extended(missing, source, check=check_soundness_cached)
    )
    token = _EXTENDED.set(extended)
    try:
        yield extended
    finally:
        _EXTENDED.reset(token)


def register_relaxation(relaxation: ReluRelaxation, source: str = "runtime") -> None:
    """Add a relaxation to the process-wide registry at run time, for the rest of the process (a user's
    choice; library code uses :func:`extended_registry`).

    :raises UnsoundRelaxationError: the soundness check refutes it (the reason is in the message).
    """
    _process_registry().relaxations.register(relaxation, source, check=check_soundness_cached)


def get_relaxation(relaxation: str | Relaxer, *, allow_unsound: bool = False) -> Any:
    """Resolve a name (with optional parameters) or pass a relaxation object through.

    :raises UnknownNameError: for an unknown name, with close matches suggested.
    :raises UnsoundRelaxationError: for a registered relaxation that failed the soundness check, or that
        passed it only by sampling (opaque lines: not proved; ``allow_unsound=True`` takes it anyway).
    :raises TypeError: an object without the :class:`~relaxlab.core.relaxer.Relaxer` contract.
    """
    if not isinstance(relaxation, str):
        return check_relaxer(relaxation)
    relaxations = get_registry().relaxations
    found = relaxations.get(relaxation)
    if not allow_unsound and found.name in relaxations.unsound:
        raise UnsoundRelaxationError(
            f"relaxation {found.name!r} (plugin {relaxations.source(found.name)!r}) is unsound and cannot be used: "
            f"{relaxations.unsound[found.name]}"
        )
    if not allow_unsound and relaxations.soundness(found.name) == "sampled":  # this one only: not all 31
        raise UnsoundRelaxationError(
            f"relaxation {found.name!r} (plugin {relaxations.source(found.name)!r}) is only sampled, not proved "
            "sound (its lines are opaque callables), and is not used for bounds; declare its lines with "
            "relaxlab.core.expr so they can be proved, or pass allow_unsound=True to use it anyway"
        )
    return found


def select_relaxations(spec: str | list[str] | tuple[str, ...]) -> list[ReluRelaxation]:
    """The relaxations a user selected: names, comma lists, ``all`` or ``paper`` (see
    :meth:`relaxlab.registry.RelaxationRegistry.select`)."""
    return [get_relaxation(name) for name in get_registry().relaxations.select(spec)]


def compute_bounds(
    model: nn.Module | Network,
    x: Tensor,
    eps: float | Tensor,
    relaxation: str | Relaxer,
    C: Tensor | None = None,
    domain: tuple[float | Tensor, float | Tensor] | None = None,
    **options: Any,
) -> tuple[Tensor, Tensor]:
    """Sound bounds of ``C·model(x')`` over the eps-box of ``x``: :func:`relaxlab.engine.compute_bounds`
    with ``relaxation`` also given as a registered name (``"CROWN-IBP (R)"``,
    ``"LooseIBP-C(omega=0.5)"``).

    :param options: ``lower_only``, ``mode``, ``chunk_size``, ``max_elements`` (see the engine's).
    """
    from relaxlab.engine import bounds as engine_bounds  # torch: names resolve without it

    return engine_bounds.compute_bounds(model, x, eps, get_relaxation(relaxation), C, domain, **options)


def optimisation(
    relaxation: str | ReluRelaxation,
    *,
    steps: int | None = None,
    lr: float | None = None,
    target: float | None = None,
) -> Optimise:
    """The request to optimise ``relaxation``'s parameters per neuron (:mod:`relaxlab.engine.optimise`),
    for ``optimise=`` of :func:`compute_bounds`, certification and verification.

    Only parameters the lines use are optimised, over the range :func:`~relaxlab.properties.prove_soundness`
    proved them sound on (the declared range; an unbounded end clipped as the prover clips it). Because
    the proof covers every value of that range, every per-neuron choice the search makes is sound.

    :param steps: gradient steps (default :data:`~relaxlab.engine.optimise.DEFAULT_STEPS`).
    :param lr: Adam's step size (default :data:`~relaxlab.engine.optimise.DEFAULT_LR`).
    :param target: rows whose bound reaches it stop pulling (default: none; certification uses 0).
    :raises ValueError: a relaxation without parameters in its lines, or one the prover has not
        proved sound over the whole range (its verdict named).
    """
    from relaxlab.core.expr import BOUND_VARIABLES
    from relaxlab.engine import optimise as engine_optimise
    from relaxlab.properties.prover import parameter_ranges, prove_soundness

    found = get_relaxation(relaxation)
    if not isinstance(found, ReluRelaxation):
        raise TypeError(
            f"only declared relaxations (ReluRelaxation) have parameters to optimise, got {type(found).__name__}"
        )
    used = frozenset().union(*(e.variables() for e in found.expressions())) - BOUND_VARIABLES
    if not used:
        raise ValueError(
            f"{found.name} has no parameters in its lines to optimise; "
            "CROWN-alpha is CROWN with its lower slope as one"
        )
    verdict = prove_soundness(found)
    if not verdict.proved:
        raise ValueError(
            f"{found.name} is {verdict.outcome}, not proved sound over its parameter ranges; "
            "only proved relaxations are optimised (see relaxlab check)"
        )
    specs = {p.name: p for p in found.params}
    ranges = [
        engine_optimise.ParameterRange(specs[r.name], found.parameters[r.name], r.lo, r.hi, r.open_lo)
        for r in parameter_ranges(found.params, found.parameters, used)
    ]
    options: dict[str, Any] = {"steps": steps, "lr": lr, "target": target}
    return engine_optimise.Optimise(ranges, **{k: v for k, v in options.items() if v is not None})


def get_method(name: str | Relaxer) -> Any:
    """What certifies or verifies: a relaxation (:func:`get_relaxation`), or for ``opt:NAME`` an
    :class:`~relaxlab.engine.optimise.Optimised` (its parameters optimised per neuron, rows that reach
    0 no longer pulling: the settings of certification and verification)."""
    from relaxlab.engine.optimise import OPTIMISED_PREFIX, Optimised

    if isinstance(name, str) and name.strip().lower().startswith(OPTIMISED_PREFIX):
        relaxation = get_relaxation(name.strip()[len(OPTIMISED_PREFIX) :].strip())
        return Optimised(relaxation, optimisation(relaxation, target=0.0))
    return get_relaxation(name)


def select_methods(spec: str | list[str] | tuple[str, ...]) -> list[Any]:
    """:func:`select_relaxations`, where an item may also be ``opt:NAME`` (:func:`get_method`)."""
    from relaxlab.engine.optimise import OPTIMISED_PREFIX
    from relaxlab.registry import split_names

    parts = [spec] if isinstance(spec, str) else list(spec)
    items = [item for part in parts for item in split_names(part)]
    methods: list[Any] = []
    for item in items:
        if item.lower().startswith(OPTIMISED_PREFIX):
            methods.append(get_method(item))
        else:
            methods += select_relaxations(item)
    if not methods:
        select_relaxations(spec)  # the registry's message for an empty selection
    names = [m.name for m in methods]
    return [m for i, m in enumerate(methods) if m.name not in names[:i]]
