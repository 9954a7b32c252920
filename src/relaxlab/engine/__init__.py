"""The backsubstitution engine: sound, batched, differentiable bounds for any ReLU relaxation.

The engine receives relaxation *objects* (anything with the contract of
:class:`relaxlab.core.relaxation.ReluRelaxation`); it never resolves names and never
imports the registry or plugins. See ``docs/engine.md``.
"""

from __future__ import annotations

from relaxlab.engine.backsub import bound_network, default_max_elements, intermediate_bounds
from relaxlab.engine.graph import GraphNetwork, bound_graph, graph_intermediate_bounds, parse_model
from relaxlab.engine.network import Network, UnsupportedNetworkError, parse_network
from relaxlab.engine.spec import margin_spec

__all__ = [
    "GraphNetwork",
    "Network",
    "UnsupportedNetworkError",
    "bound_graph",
    "bound_network",
    "default_max_elements",
    "graph_intermediate_bounds",
    "intermediate_bounds",
    "margin_spec",
    "parse_model",
    "parse_network",
]
