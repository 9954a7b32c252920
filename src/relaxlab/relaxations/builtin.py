"""The built-in relaxations: the paper's five, its modifications (App. H) and LooseIBP (Sec. 6).

A plugin like any other: it implements :func:`relaxlab.hookspecs.relaxlab_relaxations`.
Definitions follow the reference table of DESIGN.md; lines are written as in App. H
of *On the Paradox of Certified Training* (Jovanović et al., TMLR 2022).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from attrs import evolve

from relaxlab.core.expr import L, Param, U, ceil, floor, ge
from relaxlab.core.lines import (
    CHORD,
    CHORD_LOW,
    CHORD_TOP,
    CROWN_HEURISTIC,
    EXACT_NEGATIVE,
    EXACT_POSITIVE,
    GAMMA,
    IDENTITY,
    KAPPA,
    LAMBDA,
    LOWER,
    SHIFTED,
    UPPER,
    ZERO,
    switch_line,
)
from relaxlab.core.relaxation import BoundsTransform, CaseBounds, ParamSpec, ReluRelaxation, line
from relaxlab.hookspecs import hookimpl

PAPER = "Jovanović et al., On the Paradox of Certified Training, TMLR 2022"


def _relaxation(name: str, unstable: CaseBounds, summary: str, section: str, **kwargs: Any) -> ReluRelaxation:
    fields: dict[str, Any] = {"negative": EXACT_NEGATIVE, "positive": EXACT_POSITIVE, **kwargs}
    return ReluRelaxation(
        name=name,
        unstable=unstable,
        summary=summary,
        reference=f"{PAPER}, {section}",
        **fields,
    )


def _interval_variant(base: ReluRelaxation, name: str, summary: str) -> ReluRelaxation:
    return evolve(base, name=name, intermediate="interval", summary=summary)


# -- the five relaxations of the paper (Sec. 2, Fig. 1) -------------------------------------------

IBP = ReluRelaxation(
    name="IBP",
    negative=CaseBounds(ZERO, ZERO),
    unstable=CaseBounds(ZERO, UPPER),
    positive=CaseBounds(LOWER, UPPER),
    intermediate="interval",
    summary="Interval bound propagation: constant lines, [relu(l), relu(u)].",
    reference=f"{PAPER}, Sec. 2 (Gowal et al., 2018)",
)
HBOX = _relaxation(
    "hBox",
    CaseBounds(ZERO, UPPER),
    "Box for unstable ReLUs, exact for stable ones, with backsubstitution.",
    "Sec. 2 (Mirman et al., 2018)",
)
DEEPZ = _relaxation(
    "DeepZ",
    CaseBounds(CHORD_LOW, CHORD),
    "Parallel chord band λx <= y <= λx - λl.",
    "Sec. 2 (Singh et al., 2018; Wong & Kolter, 2018)",
)
CROWN_LOWER = switch_line(CROWN_HEURISTIC, ZERO, IDENTITY)
CROWN = _relaxation(
    "CROWN",
    CaseBounds(CROWN_LOWER, CHORD),
    "Triangle upper chord, lower slope 0 or 1 by the heuristic -l >= u.",
    "Sec. 2 (Zhang et al., 2018; DeepPoly, Singh et al., 2019)",
)
CROWN_IBP = _interval_variant(CROWN, "CROWN-IBP (R)", "CROWN's lines with interval intermediate bounds.")

# -- hBox modifications (App. H) ------------------------------------------------------------------

HBOX_DIAG = _relaxation(
    "hBox-Diag",
    CaseBounds(IDENTITY, SHIFTED),
    "hBox with the band x <= y <= x - l for unstable ReLUs.",
    "App. H",
)
HBOX_DIAG_C = _relaxation(
    "hBox-Diag-C",
    CaseBounds(IDENTITY, SHIFTED),
    "hBox-Diag with x <= y <= x - l also for negative ReLUs: continuous.",
    "App. H",
    negative=CaseBounds(IDENTITY, SHIFTED),
)
HBOX_SWITCH = _relaxation(
    "hBox-Switch",
    CaseBounds(switch_line(CROWN_HEURISTIC, ZERO, IDENTITY), switch_line(CROWN_HEURISTIC, UPPER, SHIFTED)),
    "hBox's box where -l >= u, else hBox-Diag's band.",
    "App. H",
)

# -- the hBox family as the paper's code computes it: forward, a hybrid zonotope ------------------------
#
# The paper's code propagates hBox, hBox-Diag, hBox-Diag-C and hBox-Switch forward as hybrid zonotopes
# (``hbox``, ``hdiag``, ``hdiag-c``, ``hswitch``): the new term of an unstable ReLU (the box [0, u], the
# band's width) becomes a box part that later affine layers carry as |W|·r, while stable neurons and the
# input's error terms stay symbolic. The text's versions above substitute the same lines during
# backsubstitution, which keeps every new term symbolic and is tighter (docs/engine.md, "Propagation").


def _hybrid(base: ReluRelaxation, name: str, code: str) -> ReluRelaxation:
    return evolve(
        base,
        name=name,
        intermediate="forward",
        final="forward",
        summary=f"{base.name} as the paper's code ({code}) computes it: a hybrid zonotope, the new term of an "
        "unstable ReLU a box part that later layers carry as |W|·r.",
        reference=f"{PAPER}, App. H and its released code (domain {code!r})",
    )


HBOX_HYBRID = _hybrid(HBOX, "hBox-Hybrid", "hbox")
HBOX_DIAG_HYBRID = _hybrid(HBOX_DIAG, "hBox-Diag-Hybrid", "hdiag")
HBOX_DIAG_C_HYBRID = _hybrid(HBOX_DIAG_C, "hBox-Diag-C-Hybrid", "hdiag-c")
HBOX_SWITCH_HYBRID = _hybrid(HBOX_SWITCH, "hBox-Switch-Hybrid", "hswitch")

# -- DeepZ modifications (App. H) -----------------------------------------------------------------------
#
# The code's zbox, zdiag, zdiag-c and zswitch add a fresh error term per unstable neuron: for parallel
# lines that is exactly backsubstitution, so these coincide with the text's hBox versions (the registry
# reports them as aliases); the code's hBox family above does not.

DEEPZ_BOX = evolve(
    HBOX,
    name="DeepZ-Box",
    summary="DeepZ with the box 0 <= y <= u for unstable ReLUs.",
    reference=f"{PAPER}, App. H",
)
DEEPZ_DIAG = evolve(
    HBOX_DIAG,
    name="DeepZ-Diag",
    summary="DeepZ with the band x <= y <= x - l (zDiag).",
    reference=f"{PAPER}, App. H (zDiag of Mirman et al., 2018)",
)
DEEPZ_DIAG_C = evolve(
    HBOX_DIAG_C, name="DeepZ-Diag-C", summary="DeepZ-Diag made continuous.", reference=f"{PAPER}, App. H"
)
DEEPZ_SWITCH = evolve(
    HBOX_SWITCH,
    name="DeepZ-Switch",
    summary="DeepZ-Box or DeepZ-Diag by the heuristic -l >= u.",
    reference=f"{PAPER}, App. H",
)

SOFT_LOWER = line(KAPPA, 0.0)  # κx
SOFT_UPPER = switch_line(ge(KAPPA, LAMBDA), line(KAPPA, -KAPPA * L), line(KAPPA, U - KAPPA * U))
DEEPZ_SOFT = _relaxation(
    "DeepZ-Soft",
    CaseBounds(SOFT_LOWER, SOFT_UPPER),
    "DeepZ with the soft slope κ = σ(γ(l/u - u/l)); the upper line pivots at (l, 0) or (u, u) to stay sound.",
    "App. H",
    params=(GAMMA,),
)
DEEPZ_IBP = _interval_variant(DEEPZ, "DeepZ-IBP (R)", "DeepZ's lines with interval intermediate bounds.")

# -- CROWN modifications (App. H) -----------------------------------------------------------------

CROWN_0 = _relaxation("CROWN-0", CaseBounds(ZERO, CHORD), "CROWN with the lower slope fixed to 0.", "App. H")
CROWN_1 = _relaxation(
    "CROWN-1", CaseBounds(IDENTITY, CHORD), "CROWN with the lower slope fixed to 1.", "App. H"
)
CROWN_0_C = evolve(
    CROWN_0,
    name="CROWN-0-C",
    positive=CaseBounds(LOWER, IDENTITY),
    summary="CROWN-0 with l <= y for positive ReLUs: continuous.",
)
CROWN_1_C = evolve(
    CROWN_1,
    name="CROWN-1-C",
    negative=CaseBounds(IDENTITY, ZERO),
    summary="CROWN-1 with x <= y for negative ReLUs: continuous.",
)
CROWN_0_TRIA = _relaxation(
    "CROWN-0-Tria",
    CaseBounds(ZERO, SHIFTED),
    "CROWN-0 with the upper line y <= x - l: not sensitive.",
    "App. H",
)
CROWN_1_TRIA = _relaxation(
    "CROWN-1-Tria",
    CaseBounds(IDENTITY, UPPER),
    "CROWN-1 with the upper line y <= u: not sensitive.",
    "App. H",
)
CROWN_0_TRIA_C = _relaxation(
    "CROWN-0-Tria-C",
    CaseBounds(ZERO, SHIFTED),
    "CROWN-0-Tria made continuous.",
    "App. H",
    negative=CaseBounds(ZERO, SHIFTED),
    positive=CaseBounds(LOWER, IDENTITY),
)
CROWN_1_TRIA_C = _relaxation(
    "CROWN-1-Tria-C",
    CaseBounds(IDENTITY, UPPER),
    "CROWN-1-Tria made continuous.",
    "App. H",
    negative=CaseBounds(IDENTITY, ZERO),
    positive=CaseBounds(IDENTITY, UPPER),
)
CROWN_SOFT = _relaxation(
    "CROWN-Soft",
    CaseBounds(SOFT_LOWER, CHORD),
    "CROWN with the soft lower slope κ instead of the 0/1 switch.",
    "App. H",
    params=(GAMMA,),
)
CROWN_SOFT_IBP = _interval_variant(
    CROWN_SOFT, "CROWN-Soft-IBP", "CROWN-Soft with interval intermediate bounds."
)

#: CROWN's lower slope as a parameter in [0, 1] (alpha = 0 is CROWN-0, 1 is CROWN-1). Optimised per
#: neuron (``opt:CROWN-alpha``, :mod:`relaxlab.engine.optimise`) it is alpha-CROWN, starting at CROWN's choice.
ALPHA = ParamSpec(
    "alpha",
    1.0,
    minimum=0.0,
    maximum=1.0,
    description="lower slope α of unstable ReLUs",
    start=CROWN_LOWER.slope,
)
CROWN_ALPHA = _relaxation(
    "CROWN-alpha",
    CaseBounds(line(Param("alpha"), 0.0), CHORD),
    "CROWN with the lower slope a parameter α in [0, 1]; optimised per neuron, alpha-CROWN.",
    "Xu et al., 2021 (alpha-CROWN); App. H",
    params=(ALPHA,),
)

# -- LooseIBP (Sec. 6, Table 4) ---------------------------------------------------------------------

OMEGA = ParamSpec("omega", 1.0, minimum=0.0, description="looseness ω: how far [l, u] is widened")
FREQUENCY = ParamSpec("F", 1.0, minimum=0.0, strict=True, description="frequency F of the floor/ceil steps")
_OMEGA, _F = Param("omega"), Param("F")

#: ``[l - ω, u + ω]``: the continuous widening of LooseIBP-C.
LOOSE_C = BoundsTransform(L - _OMEGA, U + _OMEGA)
#: ``[l - ω(⌈Fl⌉ - Fl), u + ω(Fu - ⌊Fu⌋)]``: the floor/ceil widening of LooseIBP-DC, with steps every 1/F.
LOOSE_DC = BoundsTransform(L - _OMEGA * (ceil(_F * L) - _F * L), U + _OMEGA * (_F * U - floor(_F * U)))

LOOSE_IBP_C = evolve(
    IBP,
    name="LooseIBP-C",
    transform=LOOSE_C,
    params=(OMEGA,),
    summary="IBP on [l - ω, u + ω]: continuous, looser than IBP.",
    reference=f"{PAPER}, Sec. 6",
)
LOOSE_IBP_DC = evolve(
    IBP,
    name="LooseIBP-DC",
    transform=LOOSE_DC,
    params=(OMEGA, FREQUENCY),
    summary="IBP on [l - ω(⌈Fl⌉ - Fl), u + ω(Fu - ⌊Fu⌋)]: discontinuous, tighter than LooseIBP-C.",
    reference=f"{PAPER}, Sec. 6",
)

#: Built-in relaxations in listing order.
BUILTINS: tuple[ReluRelaxation, ...] = (
    IBP,
    HBOX,
    DEEPZ,
    CROWN,
    CROWN_IBP,
    HBOX_DIAG,
    HBOX_DIAG_C,
    HBOX_SWITCH,
    DEEPZ_BOX,
    DEEPZ_DIAG,
    DEEPZ_DIAG_C,
    DEEPZ_SWITCH,
    DEEPZ_SOFT,
    DEEPZ_IBP,
    CROWN_0,
    CROWN_1,
    CROWN_0_C,
    CROWN_1_C,
    CROWN_0_TRIA,
    CROWN_1_TRIA,
    CROWN_0_TRIA_C,
    CROWN_1_TRIA_C,
    CROWN_SOFT,
    CROWN_SOFT_IBP,
    LOOSE_IBP_C,
    LOOSE_IBP_DC,
    # beyond the paper's table: the hybrid zonotope of the paper's code (forward mode); CROWN's
    # lower slope as a parameter (optimised: alpha-CROWN)
    HBOX_HYBRID,
    HBOX_DIAG_HYBRID,
    HBOX_DIAG_C_HYBRID,
    HBOX_SWITCH_HYBRID,
    CROWN_ALPHA,
)


@hookimpl
def relaxlab_relaxations() -> Iterable[ReluRelaxation]:
    return BUILTINS


#: Candidate lines for discovery (App. H): (name, side, line).
CANDIDATE_LINES = (
    ("0", "both", ZERO),
    ("x", "both", IDENTITY),
    ("l", "both", LOWER),
    ("u", "both", UPPER),
    ("x-l", "both", SHIFTED),
    ("λx", "both", CHORD_LOW),
    ("λx-λl", "both", CHORD),
    ("λx+u-λu", "both", CHORD_TOP),
)


@hookimpl
def relaxlab_candidate_lines() -> Iterable[tuple[str, str, object]]:
    return CANDIDATE_LINES


#: Candidate bounds transforms for discovery (Sec. 6): (name, transform, parameters).
CANDIDATE_TRANSFORMS = (
    ("loose-C", LOOSE_C, (OMEGA,)),
    ("loose-DC", LOOSE_DC, (OMEGA, FREQUENCY)),
)


@hookimpl
def relaxlab_candidate_transforms() -> Iterable[tuple[str, BoundsTransform, tuple[ParamSpec, ...]]]:
    return CANDIDATE_TRANSFORMS
