"""Automatic discovery of ReLU relaxations from candidate lines (Sec. 6 and App. H of the paper).

Pipeline: candidate catalog (hook ``relaxlab_candidate_lines``) → per-case exact
soundness → all combinations → non-dominated → switch, soft and (R) families →
named results with flags, tightness relations and equivalences → genealogy graph.
See ``docs/discovery.md``.
"""

from __future__ import annotations

from relaxlab.discovery.catalog import Catalog, CatalogLine, Rejection, build_catalog
from relaxlab.discovery.pipeline import FAMILIES, Discovery, Rediscovery, Result, discover, generated_name

__all__ = ["FAMILIES", "Catalog", "CatalogLine", "Discovery", "Rediscovery", "Rejection", "Result",
           "build_catalog", "discover", "generated_name"]
