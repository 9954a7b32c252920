"""One full discovery run (built-in plugins only) shared by the discovery tests: it takes seconds."""

from __future__ import annotations

import networkx as nx
import pytest

from relaxlab.discovery import Discovery, discover
from relaxlab.discovery.genealogy import genealogy
from relaxlab.registry import Registry, build_registry


@pytest.fixture(scope="session")
def builtin_registry() -> Registry:
    """The built-in plugins only, without the soundness check (discovery runs its own)."""
    return build_registry(load_entry_points=False)


@pytest.fixture(scope="session")
def discovered(builtin_registry: Registry) -> Discovery:
    """``discover`` with every default: all families, the built-in transforms at the default grid."""
    return discover(builtin_registry)


@pytest.fixture(scope="session")
def discovered_graph(discovered: Discovery, builtin_registry: Registry) -> nx.DiGraph:
    return genealogy(discovered, builtin_registry.relaxations.values())
