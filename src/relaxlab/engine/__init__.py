"""The engine: sound, batched, differentiable bounds for any ReLU relaxation, on any network it reads.

One engine over one graph: networks are DAGs of the operations of :mod:`relaxlab.engine.ops`
(:class:`Network`; a chain is a graph with one path), read from torch modules and ONNX files
through one op table (:mod:`relaxlab.engine.optable`), and bounded by :mod:`relaxlab.engine.bounder`
in the propagation modes the relaxation declares. The engine receives relaxation *objects* (the
:class:`~relaxlab.core.relaxer.Relaxer` contract); it never resolves names and imports nothing of
relaxlab but :mod:`relaxlab.core` and :mod:`relaxlab.nn`. See ``docs/engine.md``.
"""

from __future__ import annotations

from relaxlab.engine.bounder import (
    Bounder,
    bound_network,
    default_max_elements,
    intermediate_bounds,
    propagation,
)
from relaxlab.engine.bounds import compute_bounds
from relaxlab.engine.box import PIXEL_DOMAIN, check_eps, input_box
from relaxlab.engine.network import Network, Node
from relaxlab.engine.ops import UnsupportedNetworkError
from relaxlab.engine.parse import parse_model
from relaxlab.engine.spec import is_certified, margin_bounds, margin_spec

__all__ = [
    "PIXEL_DOMAIN",
    "Bounder",
    "Network",
    "Node",
    "UnsupportedNetworkError",
    "bound_network",
    "check_eps",
    "compute_bounds",
    "default_max_elements",
    "input_box",
    "intermediate_bounds",
    "is_certified",
    "margin_bounds",
    "margin_spec",
    "parse_model",
    "propagation",
]
