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
  resolved first.

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

__all__ = ["compute_bounds", "extended_registry", "get_registry", "get_relaxation", "register_relaxation",
           "select_relaxations"]

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
    extended = attrs.evolve(base, relaxations=base.relaxations.extended(missing, source, check=check_soundness_cached))
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
    :raises UnsoundRelaxationError: for a registered relaxation that failed the soundness check.
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
