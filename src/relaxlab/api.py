"""The facade: the process-wide registry, relaxations by name, and bounds by name.

Everything below this module takes objects and is wired by its caller; this module does the
wiring once for the user:

- :func:`get_registry` builds the registry of all installed plugins with the soundness check
  of :mod:`relaxlab.properties` (the prover's verdict, kept in the verdict cache of
  :mod:`relaxlab.properties.cache`; the registry itself takes the check as an argument);
- :func:`get_relaxation` and :func:`select_relaxations` resolve what a user typed, refusing
  relaxations that failed the check;
- :func:`compute_bounds` is :func:`relaxlab.engine.compute_bounds` with registered names
  resolved first.

``relaxlab.get_registry``, ``relaxlab.get_relaxation`` and ``relaxlab.compute_bounds`` are these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relaxlab.core.relaxation import ReluRelaxation
from relaxlab.core.relaxer import Relaxer, check_relaxer
from relaxlab.properties import check_soundness_cached
from relaxlab.registry import Registry, UnsoundRelaxationError, build_registry

if TYPE_CHECKING:
    from torch import Tensor, nn

    from relaxlab.engine.network import Network

__all__ = ["compute_bounds", "get_registry", "get_relaxation", "register_relaxation", "select_relaxations"]

_REGISTRY: Registry | None = None


def get_registry(*, refresh: bool = False) -> Registry:
    """The process-wide registry (built on first use, soundness-checked; ``refresh=True`` rebuilds it)."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = build_registry(check=check_soundness_cached)
    return _REGISTRY


def register_relaxation(relaxation: ReluRelaxation, source: str = "runtime") -> None:
    """Add a relaxation to the process-wide registry at run time (e.g. a generated one).

    :raises UnsoundRelaxationError: the soundness check refutes it (the reason is in the message).
    """
    get_registry().relaxations.register(relaxation, source, check=check_soundness_cached)


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
