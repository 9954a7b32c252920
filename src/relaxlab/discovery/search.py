"""Enumeration of line combinations and the dominance filter.

A combination picks one sound, distinct catalog line for each of the six slots
(lower and upper line of the negative, unstable and positive case). Its
continuity and sensitivity come from per-line pieces (:mod:`.flags`), computed
once per line and combined with boolean tables, and its tightness relative to
another combination from per-slot tables of "line ``i`` is at least as tight as
line ``j``" (:mod:`relaxlab.properties.tightness`).

Combination ``A`` *dominates* ``B`` when ``A`` is pointwise at least as tight as
``B`` in every case and strictly tighter in one, and ``A`` is no worse in
continuity and in sensitivity. Domination is a strict partial order, so every
dominated combination is dominated by at least one combination that is not.
"""

from __future__ import annotations

import itertools

import torch
from attrs import frozen
from torch import Tensor

from relaxlab.core.stability import Stability
from relaxlab.discovery.catalog import SLOTS, Catalog, CatalogLine
from relaxlab.discovery.flags import (
    BOUNDARIES,
    boundary_trace,
    internal_jump,
    line_sensitive,
    traces_match,
)
from relaxlab.properties.tightness import at_least_as_tight, line_values

_SLOT_INDEX = {slot: k for k, slot in enumerate(SLOTS)}


@frozen(eq=False)
class Enumeration:
    """All distinct sound combinations with their flags and the dominance verdicts.

    :param catalog: the catalog they come from.
    :param combos: ``(n, 6)`` indices into ``catalog.distinct[slot]``.
    :param continuous: ``(n,)`` flags.
    :param sensitive: ``(n,)`` flags.
    :param dominated: ``(n,)`` whether some other combination dominates it.
    :param dominates: ``(n, n)`` ``dominates[a, b]``: ``a`` dominates ``b``.
    """

    catalog: Catalog
    combos: Tensor
    continuous: Tensor
    sensitive: Tensor
    dominated: Tensor
    dominates: Tensor

    def lines(self, index: int) -> tuple[CatalogLine, ...]:
        """The six catalog lines of combination ``index``."""
        return tuple(self.catalog.distinct[k][int(i)] for k, i in enumerate(self.combos[index]))

    def dominators(self, index: int) -> list[int]:
        """Non-dominated combinations that dominate ``index``."""
        column = self.dominates[:, index] & ~self.dominated
        return [int(i) for i in torch.nonzero(column).flatten()]


def tightness_tables(catalog: Catalog) -> list[Tensor]:
    """Per slot, ``T[i, j]``: distinct line ``i`` is at least as tight as line ``j``."""
    tables = []
    for (stability, side), lines in zip(SLOTS, catalog.distinct, strict=True):
        values = [line_values(c.line, stability) for c in lines]
        table = torch.zeros(len(lines), len(lines), dtype=torch.bool)
        for i, j in itertools.product(range(len(lines)), repeat=2):
            table[i, j] = at_least_as_tight(values[i], values[j], side, stability)
        tables.append(table)
    return tables


def _boundary_table(
    catalog: Catalog, boundary: str, first: Stability, second: Stability, side: str
) -> Tensor:
    lines_a = catalog.distinct[_SLOT_INDEX[(first, side)]]
    lines_b = catalog.distinct[_SLOT_INDEX[(second, side)]]
    traces_a = [boundary_trace(c.line, first, boundary) for c in lines_a]
    traces_b = [boundary_trace(c.line, second, boundary) for c in lines_b]
    table = torch.zeros(len(lines_a), len(lines_b), dtype=torch.bool)
    for i, j in itertools.product(range(len(lines_a)), range(len(lines_b))):
        table[i, j] = traces_match(traces_a[i], traces_b[j], boundary, first)
    return table


def enumerate_combinations(catalog: Catalog) -> Enumeration:
    """Every distinct sound combination, its flags, and who dominates whom."""
    sizes = [len(lines) for lines in catalog.distinct]
    if min(sizes) == 0:
        empty = [str(s) + " " + side for (s, side), n in zip(SLOTS, sizes, strict=True) if n == 0]
        raise ValueError(
            f"no sound candidate line for {', '.join(empty)}: add one through "
            "relaxlab_candidate_lines (e.g. the built-in catalog's '0', 'x' and 'u')"
        )
    combos = torch.tensor(list(itertools.product(*(range(n) for n in sizes))), dtype=torch.long)
    n = combos.shape[0]

    # flags from per-line pieces
    sensitive = torch.zeros(n, dtype=torch.bool)
    continuous = torch.ones(n, dtype=torch.bool)
    for k, ((stability, _side), lines) in enumerate(zip(SLOTS, catalog.distinct, strict=True)):
        sens = torch.tensor([line_sensitive(c.line, stability) for c in lines], dtype=torch.bool)
        jumps = torch.tensor([internal_jump(c.line, stability) for c in lines], dtype=torch.bool)
        sensitive |= sens[combos[:, k]]
        continuous &= ~jumps[combos[:, k]]
    for boundary, first, second in BOUNDARIES:
        for side in ("lower", "upper"):
            table = _boundary_table(catalog, boundary, first, second, side)
            a, b = _SLOT_INDEX[(first, side)], _SLOT_INDEX[(second, side)]
            continuous &= table[combos[:, a], combos[:, b]]

    # dominance
    tables = tightness_tables(catalog)
    as_tight = torch.ones(n, n, dtype=torch.bool)
    same = torch.ones(n, n, dtype=torch.bool)
    for k, table in enumerate(tables):
        as_tight &= table[combos[:, k][:, None], combos[:, k][None, :]]
        same &= combos[:, k][:, None] == combos[:, k][None, :]
    no_worse = (continuous[:, None] | ~continuous[None, :]) & (~sensitive[:, None] | sensitive[None, :])
    dominates = as_tight & ~same & no_worse
    dominated = dominates.any(dim=0)
    return Enumeration(catalog, combos, continuous, sensitive, dominated, dominates)
