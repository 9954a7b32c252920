"""Bounds transforms as discovery candidates: the LooseIBP family (Sec. 6) and its combinations.

LooseIBP-C(ω) is IBP on ``[l - ω, u + ω]`` and LooseIBP-DC_F(ω) is IBP on
``[l - ω(⌈Fl⌉ - Fl), u + ω(Fu - ⌊Fu⌋)]``: the lines stay IBP's, the bounds they are taken on
are widened first. Discovery treats such a widening like a line: candidates come from the hook
``relaxlab_candidate_transforms`` (the built-in plugin gives both), each with the parameters
its expressions use, and every kept relaxation is tried with every transform at every point of
its parameter grid (a :class:`TransformSetting`).

**Soundness.** A candidate is used only when the prover shows that it widens
(``l' <= l``, ``u' >= u``, for every parameter value in range; ``side="transform"`` of
:func:`relaxlab.properties.prover.prove_part`), and when at each setting the exact check of the
comparison pairs finds nothing wrong (no narrowing, nothing non-finite). A widening then keeps
every line sound that is sound for every ``(l, u)`` of its case, and those are the only lines
the catalog keeps: the case is decided on ``(l', u')`` and ``x`` stays in ``[l, u] ⊆ [l', u']``.
So the sound lines under a transform are the catalog's. (A line sound *only* on a transform's
image would be missed; none of the built-in candidates is one.) The prover uses the same
argument, and every output still passes :func:`~relaxlab.properties.soundness.check_soundness`.

**Dominance.** Within one setting every relaxation shares the transform, so the comparison is
between lines: lines at least as tight on every ``[l', u']`` are at least as tight on the
``[l, u]`` inside it, and the lines' own continuity and sensitivity are what differs (the
transform's steps are common to all). The non-dominated combinations of a setting are therefore
those of the plain enumeration, and every kept result (families included) gets each setting.
Settings are not compared with each other or with the plain results: a transform only loosens,
so each widened relaxation would be dominated by its plain version. Like Table 4, which compares
relaxations at a fixed ω, discovery treats the looseness as a chosen axis, not as a defect.

**Grid.** :data:`DEFAULT_GRID` holds ω = 1 and F = 1 (the LooseIBP defaults, and the middle
of the paper's ω range 0.01-5 and its best F of 1, 10, 100, 300, 1000); ``grid=`` replaces a
parameter's values, and a parameter it does not name keeps :data:`DEFAULT_GRID`'s (or, for a
plugin's parameter, its default). Each setting adds as many
results as there are plain ones. The parameters stay parameters of every widened result, so
``name(omega=0.5)`` gives any other value later.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

from attrs import evolve, frozen

from relaxlab.core.expr import BOUND_VARIABLES
from relaxlab.core.lines import ZERO
from relaxlab.core.relaxation import BoundsTransform, ParamSpec, ReluRelaxation
from relaxlab.core.stability import Stability
from relaxlab.discovery.catalog import Rejection, probe_relaxation, safe_token
from relaxlab.discovery.flags import transform_jumps
from relaxlab.properties.prover import COUNTEREXAMPLE, PROVED, parameter_ranges, prove_part
from relaxlab.properties.soundness import find_counterexample
from relaxlab.properties.tightness import comparison_pairs
from relaxlab.registry import CandidateTransform

#: Parameter values discovery applies each transform at, unless ``grid=`` says otherwise.
DEFAULT_GRID: Mapping[str, tuple[float, ...]] = {"omega": (1.0,), "F": (1.0,)}


@frozen
class TransformSetting:
    """One candidate transform at one point of the parameter grid.

    :param name: the candidate's name (``loose-C``).
    :param token: ``name`` made safe for generated relaxation names.
    :param transform: the widening.
    :param params: the parameters its expressions use.
    :param values: their values here, ``(name, value)`` in declaration order.
    :param continuous: whether the transform itself has no jump at these values.
    :param source: the plugin that contributed it.
    """

    name: str
    token: str
    transform: BoundsTransform
    params: tuple[ParamSpec, ...]
    values: tuple[tuple[str, float], ...]
    continuous: bool
    source: str

    def at(self, values: Mapping[str, float]) -> TransformSetting:
        """The same transform at other parameter values (its continuity looked at again)."""
        return _setting(self.name, self.token, self.transform, self.params, values, self.source)

    @property
    def label(self) -> str:
        """``loose-DC(omega=1, F=10)``: the name with every value."""
        return f"{self.name}({', '.join(f'{k}={v:g}' for k, v in self.values)})" if self.values else self.name

    def apply(self, relaxation: ReluRelaxation, name: str) -> ReluRelaxation:
        """``relaxation`` (without a transform) on the widened bounds, named ``name``.

        The transform's parameters join the relaxation's, set to this setting's values.
        """
        if relaxation.transform is not None:
            raise ValueError(f"{relaxation.name} already has a bounds transform")
        clash = sorted({p.name for p in relaxation.params} & {p.name for p in self.params})
        if clash:
            raise ValueError(
                f"transform {self.name!r} and {relaxation.name} both declare parameter(s) {clash}"
            )
        return evolve(
            relaxation,
            name=name,
            transform=self.transform,
            params=(*relaxation.params, *self.params),
            values={**relaxation.parameters, **dict(self.values)},
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "label": self.label,
            "transform": str(self.transform),
            "values": dict(self.values),
            "continuous": self.continuous,
            "source": self.source,
        }


def _setting(
    name: str,
    token: str,
    transform: BoundsTransform,
    params: tuple[ParamSpec, ...],
    values: Mapping[str, float],
    source: str,
) -> TransformSetting:
    ordered = tuple((p.name, float(values[p.name])) for p in params)
    return TransformSetting(
        name,
        token,
        transform,
        params,
        ordered,
        not transform_jumps(transform, tuple(sorted(ordered))),
        source,
    )


def choose(candidates: Sequence[CandidateTransform], names: Iterable[str]) -> list[CandidateTransform]:
    """The candidates with the given names (``"none"`` alone: none), in the catalog's order.

    :raises ValueError: an unknown name, with the choices.
    """
    wanted = list(dict.fromkeys(names))
    if wanted == ["none"]:
        return []
    known = {c.name: c for c in candidates}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown transform {unknown[0]!r}: choose from {', '.join([*known, 'none'])}")
    return [c for c in candidates if c.name in wanted]


def _check_widening(candidate: CandidateTransform) -> tuple[str, str] | None:
    """``None`` when the prover shows ``candidate`` widens for every parameter value; else ``(kind, reason)``."""
    transform = candidate.transform
    used = frozenset(transform.lower.variables() | transform.upper.variables()) - BOUND_VARIABLES
    defaults = {p.name: p.default for p in candidate.params}
    verdict = prove_part(
        None, "transform", None, transform, parameter_ranges(candidate.params, defaults, used)
    )
    if verdict.outcome == PROVED:
        return None
    if verdict.outcome == COUNTEREXAMPLE and verdict.counterexample is not None:
        found = verdict.counterexample
        where = ", ".join([f"l={found.lower!r}, u={found.upper!r}", *(f"{k}={v!r}" for k, v in found.params)])
        return "unsound", f"{where}: narrows the bounds to [{found.line_value!r}, {found.relu_value!r}]"
    return "undecided", f"widening not proved: {verdict.note or verdict.outcome}"


def _check_setting(candidate: CandidateTransform, values: dict[str, float]) -> str | None:
    """The exact check of the comparison pairs at these values (narrowing, non-finite bounds), or ``None``.

    The probe is hBox's lines (sound for every ``(l, u)``) on the widened bounds, so what it finds
    is the transform's fault.
    """
    probe = evolve(
        probe_relaxation(ZERO, Stability.UNSTABLE, "lower"),
        transform=candidate.transform,
        params=candidate.params,
        values=values,
    )
    found = find_counterexample(probe, *comparison_pairs())
    return None if found is None else str(found)


def settings(
    candidates: Iterable[CandidateTransform], grid: Mapping[str, Sequence[float]] | None = None
) -> tuple[list[TransformSetting], list[Rejection]]:
    """Every sound candidate at every point of ``grid``; the candidates and settings left out, and why.

    :raises ValueError: for a grid parameter no candidate declares, or a value out of a parameter's range.
    """
    items = list(candidates)
    declared = {p.name for c in items for p in c.params}
    unknown = sorted(set(grid or {}) - declared)
    if items and unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} in the transform grid: the transforms use "
            f"{', '.join(sorted(declared)) or 'none'}"
        )
    out: list[TransformSetting] = []
    rejected: list[Rejection] = []
    grid = {**DEFAULT_GRID, **(grid or {})}
    tokens: dict[str, BoundsTransform] = {}  # unique in generated names, as catalog lines' are
    for candidate in items:
        base = token = safe_token(candidate.name, "transform")
        k = 2
        while tokens.setdefault(token, candidate.transform) != candidate.transform:
            token, k = f"{base}_{k}", k + 1
        problem = _check_widening(candidate)
        if problem is not None:
            rejected.append(Rejection(token, "transform", "all", *problem))
            continue
        axes = []
        for spec in candidate.params:
            raw = grid.get(spec.name, (spec.default,))
            if not raw:
                raise ValueError(f"the transform grid gives no value for {spec.name!r}")
            axes.append([spec.validate(v, f"transform {candidate.name}") for v in raw])
        for point in itertools.product(*axes):
            values = dict(zip((p.name for p in candidate.params), point, strict=True))
            reason = _check_setting(candidate, values)
            setting = _setting(
                candidate.name, token, candidate.transform, candidate.params, values, candidate.source
            )
            if reason is not None:
                rejected.append(
                    Rejection(token, "transform", "all", "unsound", f"at {setting.label}: {reason}")
                )
                continue
            out.append(setting)
    return out, rejected
