"""relaxlab: a laboratory for ReLU convex relaxations in certified training.

The public API:

- :data:`hookimpl` marks plugin hook implementations (see :mod:`relaxlab.hookspecs`);
- :class:`ReluRelaxation`, :class:`CaseBounds`, :class:`Line` and the expression
  algebra in :mod:`relaxlab.core.expr` declare relaxations as data;
- :func:`get_registry` and :func:`get_relaxation` look relaxations up by name;
- :func:`compute_bounds` bounds a network's outputs with any relaxation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relaxlab.hookspecs import hookimpl

__version__ = "0.1.0"

# Heavy parts load on first use so that `import relaxlab` and plugin modules stay cheap.
_LAZY = {
    "ReluRelaxation": "relaxlab.core.relaxation",
    "CaseBounds": "relaxlab.core.relaxation",
    "Line": "relaxlab.core.relaxation",
    "Stability": "relaxlab.core.stability",
    "get_registry": "relaxlab.api",
    "get_relaxation": "relaxlab.api",
    "compute_bounds": "relaxlab.api",
    "Normalize": "relaxlab.nn",
}

if TYPE_CHECKING:  # the lazy names, for type checkers and IDEs
    from relaxlab.api import compute_bounds, get_registry, get_relaxation  # noqa: F401
    from relaxlab.core.relaxation import CaseBounds, Line, ReluRelaxation  # noqa: F401
    from relaxlab.core.stability import Stability  # noqa: F401
    from relaxlab.nn import Normalize  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'relaxlab' has no attribute {name!r}")


__all__ = ["hookimpl", "__version__", *_LAZY]
