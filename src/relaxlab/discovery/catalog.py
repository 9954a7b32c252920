"""The candidate catalog: lines contributed through ``relaxlab_candidate_lines``, checked per case.

Every :class:`~relaxlab.registry.CandidateLine` of the registry (built-ins and
plugins alike) is tried for each stability case and each side it offers. A line
is *sound for a case* when the exact check of
:func:`relaxlab.properties.soundness.find_counterexample` finds no violation on the
comparison pairs of that case, the prover
(:func:`relaxlab.properties.prover.prove_part`, as in ``relaxlab check``) proves it for
the whole case (a line it cannot decide is left out as ``undecided``), and its
coefficients are finite there (``λ = u/(u-l)`` is undefined at
``l = u``, which stable cases contain). A line sound in one case can be unsound
in another: ``x - l`` is a sound upper line for negative ReLUs and unstable ones,
but not a lower line for unstable ones. Lines that are numerically the same in a
case (``λx - λl`` and ``λx + u - λu``) are kept once, under the first name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from attrs import frozen

from relaxlab.core.expr import BOUND_VARIABLES
from relaxlab.core.lines import EXACT_NEGATIVE, EXACT_POSITIVE, UPPER, ZERO
from relaxlab.core.relaxation import CaseBounds, Line, ReluRelaxation
from relaxlab.core.stability import Stability
from relaxlab.properties.prover import COUNTEREXAMPLE, UNDECIDED, prove_part
from relaxlab.properties.soundness import find_counterexample
from relaxlab.properties.tightness import case_pairs, line_values, values_equal
from relaxlab.registry import CandidateLine

SIDES = ("lower", "upper")
#: The six (case, side) slots of a relaxation, in the order used everywhere in discovery.
SLOTS: tuple[tuple[Stability, str], ...] = tuple((s, side) for s in Stability for side in SIDES)
#: Short case labels used in generated names.
CASE_LABELS = {Stability.NEGATIVE: "neg", Stability.UNSTABLE: "unst", Stability.POSITIVE: "pos"}

_TOKEN_BAD = re.compile(r"[^A-Za-z0-9_\-+=/λκ·]")


@frozen
class CatalogLine:
    """One candidate line on one side.

    :param name: the name the plugin gave it.
    :param token: ``name`` made safe for generated relaxation names (unique in the catalog).
    :param side: ``"lower"`` or ``"upper"``.
    :param line: the line.
    :param source: the plugin that contributed it.
    """

    name: str
    token: str
    side: str
    line: Line
    source: str


@frozen
class Rejection:
    """A catalog line left out of one case, and why (a counterexample, or the line it duplicates).

    A candidate transform left out has ``side="transform"`` and ``case="all"``.
    """

    token: str
    side: str
    case: str
    kind: str  # "unsound", "undecided", "undefined", "duplicate", "invalid"
    reason: str

    def __str__(self) -> str:
        if self.side == "transform":
            return f"transform {self.token!r}: {self.kind}: {self.reason}"
        return f"{self.side} line {self.token!r} in case {self.case}: {self.kind}: {self.reason}"


@frozen
class Catalog:
    """Candidate lines and, per slot, the sound and distinct ones.

    :param lines: every catalog line (one per side offered).
    :param sound: per slot (:data:`SLOTS` order), the sound lines, duplicates included.
    :param distinct: per slot, the sound lines with numerically equal ones merged (first name kept).
    :param rejected: why each left-out line was left out.
    """

    lines: tuple[CatalogLine, ...]
    sound: tuple[tuple[CatalogLine, ...], ...]
    distinct: tuple[tuple[CatalogLine, ...], ...]
    rejected: tuple[Rejection, ...]

    def side_lines(self, side: str) -> tuple[CatalogLine, ...]:
        return tuple(c for c in self.lines if c.side == side)

    def by_token(self, token: str, side: str) -> CatalogLine:
        for item in self.lines:
            if item.token == token and item.side == side:
                return item
        raise KeyError(f"no {side} catalog line {token!r}")


def safe_token(name: str, default: str = "line") -> str:
    """``name`` with the characters generated relaxation names reserve replaced (``0.9u`` -> ``0_9u``)."""
    return _TOKEN_BAD.sub("_", name.replace(" ", "")) or default


def _tokens(names: Sequence[tuple[str, Line]]) -> dict[tuple[str, Line], str]:
    """Safe, unique tokens; the same (name, line) always gets the same token."""
    tokens: dict[tuple[str, Line], str] = {}
    used: dict[str, Line] = {}
    for name, ln in names:
        if (name, ln) in tokens:
            continue
        base = safe_token(name)
        token, k = base, 2
        while token in used and used[token] != ln:
            token, k = f"{base}_{k}", k + 1
        used[token] = ln
        tokens[(name, ln)] = token
    return tokens


def probe_relaxation(line: Line, stability: Stability, side: str) -> ReluRelaxation:
    """A relaxation that uses ``line`` at one slot and exact/sound lines everywhere else."""
    partners = {
        Stability.NEGATIVE: EXACT_NEGATIVE,
        Stability.UNSTABLE: CaseBounds(ZERO, UPPER),
        Stability.POSITIVE: EXACT_POSITIVE,
    }
    case = partners[stability]
    case = CaseBounds(line, case.upper) if side == "lower" else CaseBounds(case.lower, line)
    cases = {**partners, stability: case}
    return ReluRelaxation(
        name="probe",
        negative=cases[Stability.NEGATIVE],
        unstable=cases[Stability.UNSTABLE],
        positive=cases[Stability.POSITIVE],
    )


def check_line(line: Line, stability: Stability, side: str) -> tuple[str, str] | None:
    """``None`` when ``line`` is a sound, finite ``side`` line for ``stability``; else ``(kind, reason)``."""
    extra = line.slope.variables() | line.offset.variables()
    if extra - BOUND_VARIABLES:
        return (
            "invalid",
            f"uses parameter(s) {sorted(extra - BOUND_VARIABLES)}; candidate lines may "
            "depend on l and u only",
        )
    lower, upper = case_pairs(stability)
    try:
        probe = probe_relaxation(line, stability, side)
        found = find_counterexample(probe, lower, upper)
        values = line_values(line, stability)
    except Exception as error:  # a plugin's line that cannot even be evaluated
        return ("invalid", f"cannot be evaluated: {type(error).__name__}: {error}")
    if found is not None:
        return ("unsound", str(found).removeprefix(f"case {stability}, "))
    verdict = prove_part(stability, side, line)
    if verdict.outcome == COUNTEREXAMPLE:
        return ("unsound", str(verdict.counterexample).removeprefix(f"case {stability}, "))
    if verdict.outcome == UNDECIDED:
        return ("undecided", f"soundness not proved: {verdict.note}")
    bad = ~torch.isfinite(values).all(dim=-1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        return ("undefined", f"not finite at l={float(lower[i])!r}, u={float(upper[i])!r}")
    return None


def build_catalog(candidates: Iterable[CandidateLine]) -> Catalog:
    """Check every candidate in every case; keep sound lines and merge numerically equal ones."""
    items = list(candidates)
    tokens = _tokens([(c.name, c.line) for c in items])
    lines: list[CatalogLine] = []
    for cand in items:
        for side in SIDES:
            if cand.side in (side, "both"):
                entry = CatalogLine(cand.name, tokens[(cand.name, cand.line)], side, cand.line, cand.source)
                if entry not in lines:
                    lines.append(entry)
    sound: list[tuple[CatalogLine, ...]] = []
    distinct: list[tuple[CatalogLine, ...]] = []
    rejected: list[Rejection] = []
    for stability, side in SLOTS:
        kept: list[CatalogLine] = []
        unique: list[tuple[CatalogLine, torch.Tensor]] = []
        for entry in (c for c in lines if c.side == side):
            problem = check_line(entry.line, stability, side)
            if problem is not None:
                rejected.append(Rejection(entry.token, side, str(stability), *problem))
                continue
            kept.append(entry)
            values = line_values(entry.line, stability)
            same = next((u for u, v in unique if values_equal(values, v, stability)), None)
            if same is not None:
                rejected.append(
                    Rejection(
                        entry.token,
                        side,
                        str(stability),
                        "duplicate",
                        f"numerically the same line as {same.token!r}",
                    )
                )
                continue
            unique.append((entry, values))
        sound.append(tuple(kept))
        distinct.append(tuple(u for u, _ in unique))
    return Catalog(tuple(lines), tuple(sound), tuple(distinct), tuple(rejected))
