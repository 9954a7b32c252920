"""Reading a screen file: every key and value checked before any work (see the package docstring).

:func:`load_screen` reads the TOML file, :func:`parse_screen` validates the parsed mapping: it runs
discovery once (for candidates, lines, flags and the genealogy), chooses the candidates and builds
the sweep that trains them, the generated ones known by name only while the sweep is built
(:func:`relaxlab.api.extended_registry`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from relaxlab.api import extended_registry, get_registry
from relaxlab.discovery import FAMILIES, discover
from relaxlab.experiments.files import check_keys, load_file, name_list, plain_name, subtable
from relaxlab.experiments.screen.candidates import choose
from relaxlab.experiments.screen.model import NATURAL, SOURCE, Screen, ScreenError, Selection, TightnessSpec
from relaxlab.experiments.sweep import SweepError, parse_sweep, resolve_base
from relaxlab.training.config import ConfigError, from_dict, valid_keys

SCREEN_KEYS = ("name", "seeds", "candidates", "schedule", "certify", "tightness")
CANDIDATE_KEYS = ("discovered", "families", "names", "exclude")
CERTIFY_KEYS = ("n", "eps", "pgd")
TIGHTNESS_KEYS = ("eps_max", "points", "n", "checkpoint")
#: The discovery families a screen can select (``combination``: the non-dominated line combinations).
DISCOVERY_FAMILIES = ("combination", *FAMILIES)
#: Train keys the screen sets itself, and where to say what they would say.
SET_BY_SCREEN = {
    "name": "every run is named by its id; name the screen with the top-level `name`",
    "seed": "list the seeds in the top-level `seeds = [...]`",
    "method": "every candidate trains with method 'certified' (the screen adds the natural run for tightness)",
    "relaxation": "list the candidates in [candidates] (names, families or discovered = true)",
}


def _names(table: Mapping[str, Any], key: str) -> list[str]:
    names = name_list(table.get(key, []))
    if names is None:
        raise ScreenError(
            f'[candidates] {key} must be a list of names, e.g. {key} = ["IBP"]; got {table[key]!r}'
        )
    return names


def load_screen(path: str | Path, *, data_dir: str | None = None) -> Screen:
    """Read and validate a screen file completely (see the module docstring).

    :param path: the ``.toml`` screen file.
    :param data_dir: the dataset directory of every run (``--data-dir``; part of the runs' configs).
    :raises ScreenError: any invalid key or value, naming it and the fix.
    """
    return load_file(
        path,
        "screen file",
        ScreenError,
        lambda data, path: parse_screen(
            data, name=path.stem, source=path.name, root=path.parent, data_dir=data_dir
        ),
    )


def parse_screen(
    data: Mapping[str, Any],
    *,
    name: str,
    source: str = "",
    root: Path | None = None,
    data_dir: str | None = None,
) -> Screen:
    """Validate a screen given as a mapping (the parsed TOML); see :func:`load_screen`.

    The generated candidates are soundness-checked (as a plugin's relaxations are) and known by name
    while the sweep is built; this process's registry is not changed.
    """
    check_keys(data, SCREEN_KEYS, "top level", ScreenError)
    screen_name = plain_name(data.get("name", name), ScreenError)
    seeds = data.get("seeds", [0])
    schedule = _schedule(subtable(data, "schedule", ScreenError), root, data_dir)
    certify = {"pgd": False, **subtable(data, "certify", ScreenError)}  # PGD is not what a screen ranks by
    check_keys(certify, CERTIFY_KEYS, "[certify]", ScreenError)
    tightness = _tightness_spec(subtable(data, "tightness", ScreenError), root)
    selection = _selection(subtable(data, "candidates", ScreenError))
    registry = get_registry()
    discovery = discover(registry, relations=False)
    candidates = choose(selection, discovery, registry)
    generated = tuple(c.relaxation for c in candidates if c.generated)
    sweep_data = {
        "name": screen_name,
        "base": {**schedule, "method": "certified"},
        "runs": [{"relaxation": c.name} for c in candidates],
        "seeds": seeds,
        "certify": {**certify, "relaxations": ["own"]},
    }
    try:
        with extended_registry(generated, source=SOURCE):
            sweep = parse_sweep(sweep_data, name=screen_name, source=source)
        natural = None
        if tightness.checkpoint is None:
            natural_base = {
                **{k: v for k, v in schedule.items() if k != "objective"},
                "method": "natural",
                "warmup_epochs": 0,
                "rampup_epochs": 0,
                "kappa_start": 1.0,
                "kappa_end": 1.0,
            }
            natural_sweep = parse_sweep(
                {"base": natural_base, "seeds": sweep_data["seeds"][:1], "certify": sweep_data["certify"]},
                name=screen_name,
            )
            natural = attrs.evolve(
                natural_sweep.runs[0], params=(("relaxation", NATURAL), *natural_sweep.runs[0].params)
            )
    except SweepError as error:
        raise ScreenError(str(error).replace("[base]", "[schedule]")) from error
    runs = (*sweep.runs, *(() if natural is None else (natural,)))
    return Screen(
        name=screen_name,
        source=source,
        candidates=tuple(candidates),
        seeds=tuple(sweep_data["seeds"]),
        sweep=attrs.evolve(sweep, runs=runs, relaxations=generated),
        natural=natural,
        tightness=tightness,
        discovery=discovery,
    )


def _schedule(table: Mapping[str, Any], root: Path | None, data_dir: str | None) -> dict[str, Any]:
    """The ``[schedule]`` keys (over its config file), checked as a certified run with IBP would be."""
    check_keys(table, [*valid_keys(), "config"], "[schedule]", ScreenError)
    for key, why in SET_BY_SCREEN.items():
        if key in table:
            raise ScreenError(f"[schedule]: `{key}` is set by the screen; {why}")
    try:
        schedule = resolve_base(table, root)
        schedule = {k: v for k, v in schedule.items() if k not in SET_BY_SCREEN}
        if data_dir is not None:
            schedule["data_dir"] = data_dir
        from_dict({**schedule, "method": "certified"})
    except ConfigError as error:
        raise ScreenError(f"[schedule]: {error}") from error
    return schedule


def _tightness_spec(table: Mapping[str, Any], root: Path | None) -> TightnessSpec:
    check_keys(table, TIGHTNESS_KEYS, "[tightness]", ScreenError)
    spec = TightnessSpec()
    eps_max = table.get("eps_max", spec.eps_max)
    if isinstance(eps_max, bool) or not isinstance(eps_max, int | float) or not 0 < eps_max <= 1:
        raise ScreenError(f"[tightness] eps_max must be a number in (0, 1], got {eps_max!r}")
    points = table.get("points", spec.points)
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ScreenError(f"[tightness] points must be an int >= 2, got {points!r}")
    n = table.get("n", spec.n)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ScreenError(f"[tightness] n must be an int >= 1 (test images), got {n!r}")
    checkpoint = table.get("checkpoint")
    if checkpoint is not None:
        if not isinstance(checkpoint, str) or not checkpoint:
            raise ScreenError(f"[tightness] checkpoint must be a path, got {checkpoint!r}")
        file = Path(checkpoint) if Path(checkpoint).is_absolute() or root is None else root / checkpoint
        if not file.is_file():
            raise ScreenError(
                f"[tightness] checkpoint {file} does not exist; give a naturally trained network's "
                "checkpoint.pt (relative to the screen file), or leave it out to train one"
            )
        checkpoint = str(file.resolve())
    return TightnessSpec(eps_max=float(eps_max), points=points, n=n, checkpoint=checkpoint)


def _selection(table: Mapping[str, Any]) -> Selection:
    """The ``[candidates]`` table checked as far as it can be without discovery."""
    check_keys(table, CANDIDATE_KEYS, "[candidates]", ScreenError)
    discovered = table.get("discovered", False)
    if not isinstance(discovered, bool):
        raise ScreenError(f"[candidates] discovered must be true or false, got {discovered!r}")
    families = _names(table, "families")
    for family in families:
        if family not in DISCOVERY_FAMILIES:
            raise ScreenError(
                f"[candidates] families: unknown family {family!r}; choose from {', '.join(DISCOVERY_FAMILIES)}"
            )
    names, exclude = _names(table, "names"), _names(table, "exclude")
    if not (discovered or families or names):
        raise ScreenError(
            "[candidates] selects nothing: set discovered = true, families = [...] or names = [...]"
        )
    return Selection(
        discovered=discovered, families=tuple(families), names=tuple(names), exclude=tuple(exclude)
    )
