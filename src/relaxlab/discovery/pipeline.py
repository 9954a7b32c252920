"""The discovery pipeline: catalog → sound → non-dominated → families → transforms → named, related results.

:func:`discover` runs every stage and returns a :class:`Discovery` with the
count after each stage, the results (with flags, tightness relations to every
registered relaxation and equivalences), what became of every registered
relaxation (kept under its name, dominated and by whom, or out of the
catalog's reach), and what the soundness filter left out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from attrs import evolve, field, frozen

from relaxlab.core.relaxation import CaseBounds, ReluRelaxation
from relaxlab.core.stability import Stability
from relaxlab.discovery.catalog import CASE_LABELS, SLOTS, Catalog, CatalogLine, Rejection, build_catalog
from relaxlab.discovery.families import (
    interval_variant,
    soft_case,
    soft_relaxation,
    switch_case,
    switch_order,
)
from relaxlab.discovery.flags import fast_flags
from relaxlab.discovery.search import Enumeration, enumerate_combinations
from relaxlab.discovery.transforms import TransformSetting, settings
from relaxlab.properties import check_soundness_cached
from relaxlab.properties.tightness import (
    Tightness,
    compare,
    compare_many,
    effective_intermediate,
    line_values,
    profile,
    values_equal,
)
from relaxlab.registry import CandidateLine, CandidateTransform, Registry

#: Families :func:`discover` can add, in the order they are built.
FAMILIES = ("switch", "soft", "interval")
_FAMILY_PREFIX = {"combination": "gen", "switch": "gen-switch", "soft": "gen-soft"}


@frozen
class CaseLines:
    """The lines of one case of a result: short labels and formulas."""

    case: str
    lower: str
    upper: str
    lower_formula: str
    upper_formula: str

    def as_dict(self) -> dict[str, str]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "lower_formula": self.lower_formula,
            "upper_formula": self.upper_formula,
        }


@frozen(eq=False)
class Result:
    """One discovered relaxation.

    :param name: the registered name when equivalent to a registered relaxation, else the generated name;
        with the parameter values where they are not the defaults (``LooseIBP-C(omega=0.5)``).
    :param generated_name: the name built from its lines and transform (stable: the same spec always gets it).
    :param relaxation: the relaxation, carrying ``name`` (its ``label``).
    :param family: ``"combination"``, ``"switch"``, ``"soft"`` or ``"interval"`` (of its lines, with or
        without a transform).
    :param cases: its lines per case.
    :param continuous: ✓C.
    :param sensitive: ✗S.
    :param equivalent_to: registered relaxations with numerically the same lines, transform and intermediate
        mode (at this result's parameter values: ``LooseIBP-C`` for ``LooseIBP-C(omega=0.5)``).
    :param parents: names of the results it was built from (families).
    :param transform: the bounds transform setting it uses (``loose-C(omega=1)``), or ``""``.
    :param untransformed: the result with the same lines and no transform, or ``""``.
    :param status: ``"kept"`` or ``"dominated"``.
    :param dominated_by: for a dominated one, the kept results that dominate it.
    :param relations: per registered relaxation, how this result compares (see :mod:`relaxlab.properties.tightness`).
    """

    name: str
    generated_name: str
    relaxation: ReluRelaxation
    family: str
    cases: tuple[CaseLines, ...]
    continuous: bool
    sensitive: bool
    equivalent_to: tuple[str, ...]
    parents: tuple[str, ...] = ()
    status: str = "kept"
    dominated_by: tuple[str, ...] = ()
    relations: dict[str, Tightness] = field(factory=dict)
    transform: str = ""
    untransformed: str = ""

    @property
    def flags(self) -> str:
        return f"{'✓' if self.continuous else '✗'}C {'✗' if self.sensitive else '✓'}S"

    def as_dict(self, *, relations: bool = True) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "generated_name": self.generated_name,
            "family": self.family,
            "status": self.status,
            "intermediate": self.relaxation.intermediate,
            "cases": {c.case: c.as_dict() for c in self.cases},
            "continuous": self.continuous,
            "sensitive": self.sensitive,
            "equivalent_to": list(self.equivalent_to),
            "parents": list(self.parents),
            "transform": self.transform,
            "untransformed": self.untransformed,
        }
        if self.status == "dominated":
            out["dominated_by"] = list(self.dominated_by)
        if relations:
            out["relations"] = {name: t.as_dict() for name, t in self.relations.items()}
        return out


@frozen
class Rediscovery:
    """What discovery made of one registered relaxation."""

    name: str
    status: str  # "kept", "dominated" or "not found"
    result: str | None
    dominated_by: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.status == "kept":
            return f"{self.name}: kept" + (f" (as {self.result})" if self.result != self.name else "")
        if self.status == "dominated":
            return f"{self.name}: dominated by {', '.join(self.dominated_by)}"
        return f"{self.name}: not reachable from the catalog"


@frozen(eq=False)
class Discovery:
    """Everything one run of :func:`discover` produced.

    :param stages: ``(stage, count)`` in pipeline order.
    :param results: kept results and families (status ``"kept"``), in pipeline order.
    :param dominated: dominated combinations equivalent to a registered relaxation (or all, with ``all_dominated``).
    :param rediscovered: one entry per registered relaxation.
    :param rejected: catalog lines left out of a case, and candidate transforms left out, and why.
    :param seconds: wall time of the run.
    :param transforms: the transform settings applied (each candidate at each grid point).
    """

    catalog: Catalog
    enumeration: Enumeration
    stages: tuple[tuple[str, int], ...]
    results: tuple[Result, ...]
    dominated: tuple[Result, ...]
    rediscovered: tuple[Rediscovery, ...]
    rejected: tuple[Rejection, ...]
    families: tuple[str, ...]
    seconds: float
    transforms: tuple[TransformSetting, ...] = ()

    def get(self, name: str) -> Result:
        """A result (kept or dominated) by its name, generated name or an equivalent registered name."""
        for result in (*self.results, *self.dominated):
            if name in (result.name, result.generated_name, *result.equivalent_to):
                return result
        raise KeyError(f"no discovered relaxation named {name!r}")

    def as_dict(self, *, relations: bool = True) -> dict[str, object]:
        return {
            "stages": [{"stage": s, "count": c} for s, c in self.stages],
            "families": list(self.families),
            "transforms": [t.as_dict() for t in self.transforms],
            "results": [r.as_dict(relations=relations) for r in self.results],
            "dominated": [r.as_dict(relations=relations) for r in self.dominated],
            "rediscovered": [
                {"name": r.name, "status": r.status, "result": r.result, "dominated_by": list(r.dominated_by)}
                for r in self.rediscovered
            ],
            "rejected": [
                {"line": r.token, "side": r.side, "case": r.case, "kind": r.kind, "reason": r.reason}
                for r in self.rejected
            ],
            "seconds": self.seconds,
        }


# -- naming ---------------------------------------------------------------------------------------


def generated_name(family: str, labels: Sequence[tuple[str, str]]) -> str:
    """``gen(neg 0..0, unst x..x-l, pos x..x)``: the family prefix and ``lower..upper`` per case."""
    inner = ", ".join(f"{CASE_LABELS[s]} {label}" for s, (label, _) in zip(Stability, labels, strict=True))
    return f"{_FAMILY_PREFIX[family]}({inner})"


def _case_label(lower: str, upper: str) -> str:
    return f"{lower}..{upper}"


@frozen
class _Draft:
    family: str
    relaxation: ReluRelaxation  # named with the generated name
    labels: tuple[tuple[str, str], ...]  # per case: (name label, unused)
    tokens: tuple[tuple[str, str], ...]  # per case: (lower token, upper token)
    parents: tuple[str, ...] = ()  # keys of the drafts it was built from
    transform: str = ""  # the transform setting's label
    untransformed: str = ""  # key of the draft without the transform

    @property
    def key(self) -> str:
        """The generated name with non-default parameter values: unique among drafts."""
        return self.relaxation.label


def _combination_draft(lines: Sequence[CatalogLine]) -> _Draft:
    pairs = [(lines[2 * k], lines[2 * k + 1]) for k in range(3)]
    labels = tuple((_case_label(a.token, b.token), "") for a, b in pairs)
    name = generated_name("combination", labels)
    negative, unstable, positive = (CaseBounds(a.line, b.line) for a, b in pairs)  # in Stability's order
    relaxation = ReluRelaxation(
        name=name,
        summary="Generated by relaxlab discover.",
        negative=negative,
        unstable=unstable,
        positive=positive,
    )
    return _Draft("combination", relaxation, labels, tuple((a.token, b.token) for a, b in pairs))


def _family_draft(family: str, then: _Draft, other: _Draft, unstable: CaseBounds) -> _Draft:
    k = 1  # the unstable case
    label = f"{then.labels[k][0]} or {other.labels[k][0]}"
    labels = (then.labels[0], (label, ""), then.labels[2])
    name = generated_name(family, labels)
    if family == "soft":
        relaxation = soft_relaxation(then.relaxation, unstable, name)
        word = "soft"
    else:
        relaxation = evolve(then.relaxation, name=name, unstable=unstable)
        word = "switch"

    def merged(a: str, b: str) -> str:
        return a if a == b else f"{word}({a}, {b})"

    (lower_a, upper_a), (lower_b, upper_b) = then.tokens[k], other.tokens[k]
    token_pair = (merged(lower_a, lower_b), merged(upper_a, upper_b))
    tokens = (then.tokens[0], token_pair, then.tokens[2])
    return _Draft(family, relaxation, labels, tokens, (then.key, other.key))


def _transformed_drafts(drafts: Sequence[_Draft], setting: TransformSetting) -> list[_Draft]:
    """Every draft on the bounds ``setting`` widens to: ``<name> + <transform>``, parents widened alike."""
    widened = {d.key: setting.apply(d.relaxation, f"{d.relaxation.name} + {setting.token}") for d in drafts}
    keys = {key: relaxation.label for key, relaxation in widened.items()}
    return [
        _Draft(
            d.family,
            widened[d.key],
            d.labels,
            d.tokens,
            tuple(keys.get(p, p) for p in d.parents),
            setting.label,
            d.key,
        )
        for d in drafts
    ]


# -- the pipeline ---------------------------------------------------------------------------------


def _check_families(families: Iterable[str] | None) -> tuple[str, ...]:
    if families is None:
        return FAMILIES
    chosen = tuple(dict.fromkeys(families))
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown discovery family {unknown[0]!r}: choose from {', '.join(FAMILIES)}")
    return tuple(f for f in FAMILIES if f in chosen)


def discover(
    registry: Registry,
    *,
    candidates: Iterable[CandidateLine] | None = None,
    transforms: Iterable[CandidateTransform] | None = None,
    grid: Mapping[str, Sequence[float]] | None = None,
    families: Iterable[str] | None = None,
    relations: bool = True,
    all_dominated: bool = False,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> Discovery:
    """Run the discovery pipeline.

    :param registry: where candidate lines and the registered relaxations come from (e.g. :func:`relaxlab.get_registry`).
    :param candidates: candidate lines to use instead of the registry's.
    :param transforms: candidate bounds transforms to use instead of the registry's (``[]``: none).
    :param grid: parameter values to apply the transforms at, ``{name: values}``, replacing those of
        :data:`relaxlab.discovery.transforms.DEFAULT_GRID` (ω = 1, F = 1) for the parameters it names.
    :param families: which of :data:`FAMILIES` to add (default: all).
    :param relations: compute tightness relations to every registered relaxation.
    :param all_dominated: report every dominated combination, not only those equivalent to a registered one.
    :param progress: called once the results are known with a phase name and their number; it
        returns the callback called with ``1`` after each result is named, flagged and related.
    :raises ValueError: for an unknown family, a slot without any sound candidate line, or a grid
        parameter no transform declares or a value out of its range.
    """
    chosen = _check_families(families)
    start = time.perf_counter()
    widenings, refused = settings(registry.candidate_transforms if transforms is None else transforms, grid)
    registered = [
        r
        for name, r in ((n, registry.relaxations[n]) for n in registry.relaxations.names())
        if name not in registry.relaxations.unsound
    ]
    catalog = build_catalog(registry.candidate_lines if candidates is None else candidates)
    enumeration = enumerate_combinations(catalog)
    stages = [
        ("all combinations", math.prod(len(catalog.side_lines(side)) for _, side in SLOTS)),
        ("sound", math.prod(len(lines) for lines in catalog.sound)),
        ("sound, distinct lines", int(enumeration.combos.shape[0])),
        ("non-dominated", int((~enumeration.dominated).sum())),
    ]
    kept_idx = [int(i) for i in (~enumeration.dominated).nonzero().flatten()]
    drafts = [_combination_draft(enumeration.lines(i)) for i in kept_idx]
    flags = {
        d.relaxation.name: (bool(enumeration.continuous[i]), bool(enumeration.sensitive[i]))
        for d, i in zip(drafts, kept_idx, strict=True)
    }
    drafts = _add_families(drafts, chosen, stages)
    if widenings:
        plain = list(drafts)
        for setting in widenings:
            drafts += _transformed_drafts(plain, setting)
        stages.append(("+ transforms", len(drafts) - len(plain)))
    _check_sound(drafts)

    naming = _Namer(registered)
    results = []
    done = progress("results", len(drafts)) if progress is not None else None
    lines_continuous: dict[str, bool] = {}  # plain drafts come first: widened ones reuse their lines' flag
    for draft in drafts:
        continuous, sensitive = flags.get(draft.relaxation.name) or fast_flags(
            draft.relaxation, lines_continuous=lines_continuous.get(draft.untransformed)
        )
        if not draft.transform:
            lines_continuous[draft.key] = continuous
        results.append(naming.result(draft, continuous, sensitive, relations=relations))
        if done is not None:
            done(1)
    # parents by final names
    rename = {r.generated_name: r.name for r in results}
    results = [
        evolve(
            r,
            parents=tuple(rename.get(p, p) for p in r.parents),
            untransformed=rename.get(r.untransformed, r.untransformed),
        )
        for r in results
    ]
    stages.append(("total", len(results)))
    dominated = _dominated(
        enumeration, results, registered, naming, widenings, all_dominated=all_dominated, relations=relations
    )
    return Discovery(
        catalog,
        enumeration,
        tuple(stages),
        tuple(results),
        tuple(dominated),
        tuple(_rediscoveries(registered, results, dominated)),
        (*catalog.rejected, *refused),
        chosen,
        time.perf_counter() - start,
        tuple(widenings),
    )


def _add_families(
    drafts: list[_Draft], chosen: tuple[str, ...], stages: list[tuple[str, int]]
) -> list[_Draft]:
    """The kept combinations plus the chosen families built from them (switch, soft, (R))."""
    switches: list[tuple[_Draft, _Draft, _Draft]] = []
    if "switch" in chosen or "soft" in chosen:
        for a_pos, a in enumerate(drafts):
            for b in drafts[a_pos + 1 :]:
                if a.tokens[0] != b.tokens[0] or a.tokens[2] != b.tokens[2]:
                    continue
                order = switch_order(a.relaxation.unstable, b.relaxation.unstable)
                if order is None:
                    continue
                then, other = (a, b) if order[0] is a.relaxation.unstable else (b, a)
                unstable = switch_case(then.relaxation.unstable, other.relaxation.unstable)
                switches.append((_family_draft("switch", then, other, unstable), then, other))
    drafts = list(drafts)
    if "switch" in chosen:
        drafts += [s for s, _, _ in switches]
        stages.append(("+ switch", len(switches)))
    if "soft" in chosen:
        softs = []
        for _, then, other in switches:
            soft_unstable = soft_case(then.relaxation.unstable, other.relaxation.unstable)
            if soft_unstable is not None:
                softs.append(_family_draft("soft", then, other, soft_unstable))
        drafts += softs
        stages.append(("+ soft", len(softs)))
    if "interval" in chosen:
        intervals = [
            _Draft(
                "interval",
                interval_variant(d.relaxation, f"{d.relaxation.name} (R)"),
                d.labels,
                d.tokens,
                (d.key,),
            )
            for d in drafts
            # all slopes zero: backsubstitution already is interval arithmetic
            if effective_intermediate(d.relaxation) != "interval"
        ]
        drafts += intervals
        stages.append(("+ (R)", len(intervals)))
    return drafts


def _check_sound(drafts: list[_Draft]) -> None:
    """Every output passes the same soundness check as ``relaxlab check`` (the filters make this certain).

    The verdicts come from the verdict cache where it has them (the prover runs on a miss), so a
    second discovery of the same catalog proves nothing again.
    """
    bad = [d.relaxation.name for d in drafts if check_soundness_cached(d.relaxation) is not None]
    if bad:  # pragma: no cover - the filters before make this impossible
        raise AssertionError(f"discovery produced unsound relaxations: {bad}")


def _dominated(
    enumeration: Enumeration,
    results: list[Result],
    registered: list[ReluRelaxation],
    naming: _Namer,
    widenings: Sequence[TransformSetting],
    *,
    all_dominated: bool,
    relations: bool,
) -> list[Result]:
    """Dominated combinations (all, or those equal to a registered relaxation) with their dominators.

    A registered relaxation with a bounds transform is matched by its lines and reported with its
    transform and parameter values, when the transform is one of ``widenings``'.
    """
    kept_names = {r.generated_name: r.name for r in results}
    if all_dominated:
        wanted: list[tuple[int, TransformSetting | None]] = [
            (int(i), None) for i in enumeration.dominated.nonzero().flatten()
        ]
    else:
        found: dict[tuple[int, TransformSetting | None], None] = {}
        for relaxation in registered:
            setting = _setting_of(relaxation, widenings)
            if relaxation.transform is not None and setting is None:
                continue
            lines = evolve(relaxation, transform=None) if setting is not None else relaxation
            for i in _matching_combinations(enumeration, lines):
                if bool(enumeration.dominated[i]):
                    found[(i, setting)] = None
        wanted = sorted(found, key=lambda item: (item[0], item[1].label if item[1] is not None else ""))
    dominated = []
    for i, setting in wanted:
        draft = _combination_draft(enumeration.lines(i))
        dominators = [_combination_draft(enumeration.lines(j)) for j in enumeration.dominators(i)]
        if setting is not None:
            draft = _transformed_drafts([draft], setting)[0]
            dominators = [_transformed_drafts([d], setting)[0] for d in dominators]
        by = tuple(kept_names.get(d.key, d.key) for d in dominators)
        if setting is None:
            continuous, sensitive = bool(enumeration.continuous[i]), bool(enumeration.sensitive[i])
        else:
            continuous, sensitive = fast_flags(draft.relaxation)
        result = naming.result(draft, continuous, sensitive, relations=relations)
        dominated.append(evolve(result, status="dominated", dominated_by=by))
    return dominated


def _setting_of(relaxation: ReluRelaxation, widenings: Sequence[TransformSetting]) -> TransformSetting | None:
    """A setting with ``relaxation``'s transform at its parameter values, when discovery has that transform."""
    if relaxation.transform is None:
        return None
    for setting in widenings:
        if setting.transform == relaxation.transform:
            return setting.at({k: relaxation.parameters.get(k, v) for k, v in setting.values})
    return None


def _rediscoveries(
    registered: list[ReluRelaxation], results: list[Result], dominated: list[Result]
) -> list[Rediscovery]:
    """What became of every registered relaxation: kept, dominated, or not found.

    Among several results equal to it (a transform at several grid values), the one at its own
    parameter values is named.
    """
    out = []
    for relaxation in registered:
        matches = [r for r in (*results, *dominated) if relaxation.name in r.equivalent_to]
        same_values = [
            r
            for r in matches
            if all(r.relaxation.parameters.get(k) == v for k, v in relaxation.parameters.items())
        ]
        candidates = same_values or matches
        found = candidates[0] if candidates else None
        if found is None:
            out.append(Rediscovery(relaxation.name, "not found", None))
        elif found.status == "kept":
            out.append(Rediscovery(relaxation.name, "kept", found.name))
        else:
            out.append(Rediscovery(relaxation.name, "dominated", found.name, found.dominated_by))
    return out


def _matching_combinations(enumeration: Enumeration, relaxation: ReluRelaxation) -> list[int]:
    """Combinations whose six lines equal ``relaxation``'s numerically (intermediate mode not compared)."""
    values = profile(relaxation)
    mask = torch.ones(enumeration.combos.shape[0], dtype=torch.bool)
    for k, ((stability, side), lines) in enumerate(zip(SLOTS, enumeration.catalog.distinct, strict=True)):
        target = values.case(stability)[:, 0 if side == "lower" else 1]
        match = [
            j for j, c in enumerate(lines) if values_equal(line_values(c.line, stability), target, stability)
        ]
        if not match:
            return []
        mask &= enumeration.combos[:, k] == match[0]
    return [int(i) for i in mask.nonzero().flatten()]


class _Namer:
    """Names results after registered relaxations they equal, and relates them to all registered ones."""

    def __init__(self, registered: list[ReluRelaxation]) -> None:
        self.registered = registered
        self.profiles = [(profile(r), effective_intermediate(r)) for r in registered]

    def result(self, draft: _Draft, continuous: bool, sensitive: bool, *, relations: bool) -> Result:
        relaxation = draft.relaxation
        verdicts = compare_many(profile(relaxation), effective_intermediate(relaxation), self.profiles)
        related = {r.name: t for r, t in zip(self.registered, verdicts, strict=True)}
        same = tuple(r.name for r in self.registered if _equal(relaxation, r, related[r.name]))
        named = evolve(relaxation, name=same[0]) if same else relaxation
        cases = tuple(
            CaseLines(str(s), lower, upper, str(case.lower), str(case.upper))
            for s, (lower, upper), (_, case) in zip(Stability, draft.tokens, relaxation.cases(), strict=True)
        )
        if not relations:
            related = {}
        return Result(
            name=named.label,
            generated_name=draft.key,
            relaxation=named,
            family=draft.family,
            cases=cases,
            continuous=continuous,
            sensitive=sensitive,
            equivalent_to=same,
            parents=draft.parents,
            relations=related,
            transform=draft.transform,
            untransformed=draft.untransformed,
        )


def _equal(relaxation: ReluRelaxation, registered: ReluRelaxation, tightness: Tightness) -> bool:
    """Numerically the same lines (and transform) and intermediate mode, at ``relaxation``'s parameter values.

    ``tightness`` compares with ``registered`` at its own values; where they share parameters with
    other values (LooseIBP-C at ω = 0.5 and the registered ω = 1), it is compared again at these.
    """
    shared = {k: v for k, v in relaxation.parameters.items() if k in registered.parameters}
    if any(registered.parameters[k] != v for k, v in shared.items()):
        tightness = compare(relaxation, registered.with_params(**shared))
    return tightness.overall == "equal" and tightness.same_intermediate
