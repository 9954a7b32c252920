"""Automatic discovery of ReLU relaxations from candidate lines (Sec. 6 and App. H of the paper).

Pipeline: candidate catalog (hook ``relaxlab_candidate_lines``) → per-case exact
soundness → all combinations → non-dominated → switch, soft and (R) families →
bounds transforms (hook ``relaxlab_candidate_transforms``) at each grid value →
named results with flags, tightness relations and equivalences → genealogy graph.
See ``docs/discovery.md``.
"""

from __future__ import annotations

from relaxlab.discovery.catalog import Catalog, CatalogLine, Rejection, build_catalog
from relaxlab.discovery.pipeline import FAMILIES, Discovery, Rediscovery, Result, discover, generated_name
from relaxlab.discovery.transforms import DEFAULT_GRID, TransformSetting

__all__ = [
    "DEFAULT_GRID",
    "FAMILIES",
    "Catalog",
    "CatalogLine",
    "Discovery",
    "Rediscovery",
    "Rejection",
    "Result",
    "TransformSetting",
    "build_catalog",
    "discover",
    "generated_name",
]
