"""The backsubstitution engine: sound, batched, differentiable bounds for any ReLU relaxation.

The engine receives relaxation *objects* (the :class:`~relaxlab.core.relaxer.Relaxer`
contract); it never resolves names and imports nothing of relaxlab but :mod:`relaxlab.core`
and :mod:`relaxlab.nn`. See ``docs/engine.md``.
"""

from __future__ import annotations

from relaxlab.engine.backsub import bound_network, default_max_elements, intermediate_bounds
from relaxlab.engine.bounds import compute_bounds
from relaxlab.engine.box import PIXEL_DOMAIN, check_eps, input_box
from relaxlab.engine.graph import GraphNetwork, bound_graph, graph_intermediate_bounds, parse_model
from relaxlab.engine.network import Network, UnsupportedNetworkError, parse_network
from relaxlab.engine.spec import is_certified, margin_bounds, margin_spec

__all__ = [
    "PIXEL_DOMAIN",
    "GraphNetwork",
    "Network",
    "UnsupportedNetworkError",
    "bound_graph",
    "bound_network",
    "check_eps",
    "compute_bounds",
    "default_max_elements",
    "input_box",
    "graph_intermediate_bounds",
    "intermediate_bounds",
    "is_certified",
    "margin_bounds",
    "margin_spec",
    "parse_model",
    "parse_network",
]
