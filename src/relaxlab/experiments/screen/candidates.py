"""The candidates of a screen: what ``[candidates]`` selects from discovery's results and the registry.

:func:`choose` turns a :class:`~relaxlab.experiments.screen.model.Selection` into
:class:`~relaxlab.experiments.screen.model.Candidate` values, in order (discovery's, then the
names), each once, with its lines per case, its widened bounds and its C/S flags.
"""

from __future__ import annotations

from collections.abc import Iterable

from relaxlab.api import get_relaxation
from relaxlab.core.relaxation import ReluRelaxation
from relaxlab.discovery import Discovery, Result
from relaxlab.experiments.screen.model import Candidate, ScreenError, Selection
from relaxlab.properties import derive
from relaxlab.registry import Registry


def choose(selection: Selection, discovery: Discovery, registry: Registry) -> list[Candidate]:
    """The candidates ``[candidates]`` selects, in order (discovery's, then ``names``), each once."""
    chosen: dict[str, Candidate] = {}
    for result in discovery.results:
        if selection.discovered or result.family in selection.families:
            chosen.setdefault(result.name, _from_result(result, registry))
    for text in selection.names:
        candidate = _by_name(text, discovery, registry)
        chosen.setdefault(candidate.name, candidate)
    for text in selection.exclude:
        try:
            key = _by_name(text, discovery, registry).name
        except ScreenError as error:
            raise ScreenError(str(error).replace("[candidates] names", "[candidates] exclude")) from None
        if key not in chosen:
            raise ScreenError(f"[candidates] exclude: {text!r} is not among the candidates; remove it")
        del chosen[key]
    if not chosen:
        raise ScreenError("[candidates]: `exclude` leaves no candidate")
    return list(chosen.values())


def _plugin_provided(name: str, registry: Registry) -> bool:
    relaxations = registry.relaxations
    return name in relaxations and relaxations.source(name) in registry.plugins


def _bounds_text(relaxation: ReluRelaxation) -> str:
    """The widened interval a relaxation's lines are taken on (``[l - omega, u + omega]``), else ``""``."""
    return "" if relaxation.transform is None else str(relaxation.transform)


def _per_case(texts: Iterable[str]) -> tuple[str, str, str]:
    """One text per stability case (three), as a tuple of three."""
    negative, unstable, positive = texts
    return negative, unstable, positive


def _from_result(result: Result, registry: Registry) -> Candidate:
    return Candidate(
        name=result.name,
        relaxation=result.relaxation,
        lines=_per_case(f"{case.lower}..{case.upper}" for case in result.cases),
        bounds=_bounds_text(result.relaxation),
        continuous=result.continuous,
        sensitive=result.sensitive,
        family=result.family,
        generated=not _plugin_provided(result.name, registry),
    )


def _by_name(text: str, discovery: Discovery, registry: Registry) -> Candidate:
    """A registered name (case and punctuation ignored; parameters allowed) or a generated one (exact)."""
    try:
        relaxation = get_relaxation(text)
    except (LookupError, ValueError) as error:
        try:
            return _from_result(discovery.get(text), registry)
        except KeyError:
            raise ScreenError(
                f"[candidates] names: {error} (nor is it a name `relaxlab discover` generates)"
            ) from None
    label = relaxation.label
    if label == relaxation.name:  # the relaxation discovery found under this name, if it did
        try:
            return _from_result(discovery.get(label), registry)
        except KeyError:
            pass
    properties = derive(relaxation)
    return Candidate(
        name=label,
        relaxation=relaxation,
        lines=_per_case(f"{case.lower}..{case.upper}" for _, case in relaxation.cases()),
        bounds=_bounds_text(relaxation),
        continuous=properties.continuous,
        sensitive=properties.sensitive,
        family="registered",
        generated=not _plugin_provided(relaxation.name, registry),
    )
