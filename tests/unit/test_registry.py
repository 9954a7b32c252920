"""The plugin registry: built-ins as plugins, look-up, clashes, and broken plugins kept local."""

from __future__ import annotations

import types

import pytest

import relaxlab
from relaxlab import api
from relaxlab import registry as registry_module
from relaxlab.core.lines import CHORD, CHORD_LOW, EXACT_NEGATIVE, EXACT_POSITIVE, ZERO
from relaxlab.core.relaxation import CaseBounds, ReluRelaxation
from relaxlab.properties.soundness import check_soundness
from relaxlab.registry import UnknownNameError, UnsoundRelaxationError, build_registry

#: Every relaxation of DESIGN.md's reference table.
REFERENCE_TABLE = [
    "IBP",
    "hBox",
    "DeepZ",
    "CROWN",
    "CROWN-IBP (R)",
    "hBox-Diag",
    "hBox-Diag-C",
    "hBox-Switch",
    "DeepZ-Box",
    "DeepZ-Diag",
    "DeepZ-Diag-C",
    "DeepZ-Switch",
    "DeepZ-Soft",
    "DeepZ-IBP (R)",
    "CROWN-0",
    "CROWN-1",
    "CROWN-0-C",
    "CROWN-1-C",
    "CROWN-0-Tria",
    "CROWN-1-Tria",
    "CROWN-0-Tria-C",
    "CROWN-1-Tria-C",
    "CROWN-Soft",
    "CROWN-Soft-IBP",
    "LooseIBP-C",
    "LooseIBP-DC",
]

UNSOUND = ReluRelaxation(
    name="acme-Unsound",
    negative=EXACT_NEGATIVE,
    positive=EXACT_POSITIVE,
    unstable=CaseBounds(CHORD_LOW, CHORD_LOW),
)
GOOD = ReluRelaxation(
    name="acme-Good", negative=EXACT_NEGATIVE, positive=EXACT_POSITIVE, unstable=CaseBounds(ZERO, CHORD)
)


def _module(name: str, **hooks: object) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, relaxlab.hookimpl(fn))
    return module


class FakeEntryPoint:
    """Stands in for an installed distribution's entry point (pluggy's own testing technique)."""

    def __init__(self, name: str, load: object) -> None:
        self.name, self.value, self.group, self._load = name, f"{name}_module", "relaxlab", load

    def load(self) -> object:
        if isinstance(self._load, Exception):
            raise self._load
        return self._load


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    installed: list[FakeEntryPoint] = []

    def entry_points(group: str) -> list[FakeEntryPoint]:
        assert group == "relaxlab"
        return installed

    monkeypatch.setattr(registry_module.importlib.metadata, "entry_points", entry_points)
    monkeypatch.delenv("RELAXLAB_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    return installed


def test_every_reference_relaxation_is_registered_by_the_builtin_plugin() -> None:
    registry = build_registry(load_entry_points=False)
    assert registry.relaxations.names()[: len(REFERENCE_TABLE)] == REFERENCE_TABLE
    assert {registry.relaxations.source(n) for n in REFERENCE_TABLE} == {"relaxlab.relaxations.builtin"}
    assert registry.errors == []
    assert registry.relaxations.unsound == {}


def test_lookup_ignores_case_spaces_punctuation_and_suggests() -> None:
    relaxations = build_registry(load_entry_points=False).relaxations
    assert relaxations["crown ibp r"].name == "CROWN-IBP (R)"
    assert relaxations["CROWN_0_TRIA_C"].name == "CROWN-0-Tria-C"
    with pytest.raises(
        UnknownNameError, match=r"unknown relaxation 'crown-ibp'; did you mean 'CROWN-IBP \(R\)'"
    ):
        relaxations["crown-ibp"]
    with pytest.raises(UnknownNameError, match="unknown relaxation 'zonotope'"):
        relaxations["zonotope"]


def test_broken_plugins_are_reported_by_name_and_the_rest_works(
    fake_entry_points: list[FakeEntryPoint],
) -> None:
    fake_entry_points.extend(
        [
            FakeEntryPoint("import-fails", ImportError("No module named 'acme_missing'")),
            FakeEntryPoint("raises", _module("raises", relaxlab_relaxations=lambda: 1 / 0)),
            FakeEntryPoint("invalid", _module("invalid", relaxlab_relaxations=lambda: ["not a relaxation"])),
            FakeEntryPoint(
                "clash",
                _module(
                    "clash",
                    relaxlab_relaxations=lambda: [
                        GOOD.__class__(
                            name="cRoWn",
                            negative=EXACT_NEGATIVE,
                            positive=EXACT_POSITIVE,
                            unstable=CaseBounds(ZERO, CHORD),
                        )
                    ],
                ),
            ),
            FakeEntryPoint("unsound", _module("unsound", relaxlab_relaxations=lambda: [UNSOUND])),
            FakeEntryPoint("good", _module("good", relaxlab_relaxations=lambda: [GOOD])),
        ]
    )
    registry = build_registry(check=check_soundness)
    reasons = {e.plugin: e.reason for e in registry.errors}
    assert "ImportError" in reasons["import-fails"] and "acme_missing" in reasons["import-fails"]
    assert "ZeroDivisionError" in reasons["raises"]
    assert "expected a ReluRelaxation" in reasons["invalid"]
    assert "clashes with 'CROWN'" in reasons["clash"]
    assert "acme-Unsound" in reasons["unsound"] and "upper line" in reasons["unsound"]
    assert registry.relaxations.source("acme-Good") == "good"
    assert set(REFERENCE_TABLE) <= set(registry.relaxations.names())
    assert registry.relaxations["CROWN"].summary.startswith("Triangle")  # the built-in kept its name


def test_unknown_hook_names_are_caught_and_drop_only_that_hook(
    fake_entry_points: list[FakeEntryPoint],
) -> None:
    module = types.ModuleType("typo")
    module.relaxlab_relaxation = relaxlab.hookimpl(lambda: [UNSOUND])  # type: ignore[attr-defined]
    module.relaxlab_relaxations = relaxlab.hookimpl(lambda: [GOOD])  # type: ignore[attr-defined]
    fake_entry_points.append(FakeEntryPoint("typo", module))
    registry = build_registry()
    assert any(
        e.plugin == "typo" and "unknown hook(s) ['relaxlab_relaxation']" in e.reason for e in registry.errors
    )
    assert registry.relaxations.source("acme-Good") == "typo"  # the plugin's valid hook still counts
    assert "acme-Unsound" not in registry.relaxations


def test_a_relaxation_whose_lines_raise_disables_itself_only(fake_entry_points: list[FakeEntryPoint]) -> None:
    from relaxlab.core.expr import Opaque

    def broken(env: object) -> object:
        raise RuntimeError("plugin bug")

    raising = ReluRelaxation(
        name="acme-Raises",
        negative=EXACT_NEGATIVE,
        positive=EXACT_POSITIVE,
        unstable=CaseBounds(ZERO, CHORD.__class__(Opaque("bug", broken), 0.0)),
    )
    fake_entry_points.append(
        FakeEntryPoint("raising", _module("raising", relaxlab_relaxations=lambda: [raising, GOOD]))
    )
    registry = build_registry(check=check_soundness)
    assert (
        "acme-Raises" in registry.relaxations.unsound
        and "RuntimeError: plugin bug" in registry.relaxations.unsound["acme-Raises"]
    )
    assert "acme-Good" not in registry.relaxations.unsound
    assert any(e.plugin == "raising" and "acme-Raises" in e.reason for e in registry.errors)


def test_blocking_plugins(fake_entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points.append(FakeEntryPoint("good", _module("good", relaxlab_relaxations=lambda: [GOOD])))
    assert "acme-Good" in build_registry().relaxations
    monkeypatch.setenv("RELAXLAB_BLOCK_PLUGINS", "good")
    assert "acme-Good" not in build_registry().relaxations
    monkeypatch.delenv("RELAXLAB_BLOCK_PLUGINS")
    monkeypatch.setenv("RELAXLAB_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "acme-Good" not in build_registry().relaxations


def test_unsound_relaxations_cannot_be_used_or_registered(
    fake_entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points.append(
        FakeEntryPoint("unsound", _module("unsound", relaxlab_relaxations=lambda: [UNSOUND]))
    )
    monkeypatch.setattr(api, "_REGISTRY", build_registry(check=check_soundness))
    with pytest.raises(UnsoundRelaxationError, match="acme-Unsound.*unsound"):
        relaxlab.get_relaxation("acme-Unsound")
    assert relaxlab.get_relaxation("acme-Unsound", allow_unsound=True) is UNSOUND
    with pytest.raises(UnsoundRelaxationError):
        api.register_relaxation(
            UNSOUND.__class__(
                name="acme-Unsound-2",
                negative=EXACT_NEGATIVE,
                positive=EXACT_POSITIVE,
                unstable=CaseBounds(CHORD_LOW, CHORD_LOW),
            )
        )
    api.register_relaxation(GOOD)
    assert relaxlab.get_relaxation("acme-good") is GOOD


def test_architectures_and_datasets_come_from_plugins_too() -> None:
    registry = build_registry(load_entry_points=False)
    assert {"FC", "CONV", "CONV+", "FC-S"} <= set(registry.architectures.names())
    assert {"mnist", "fashion-mnist", "cifar10", "svhn"} <= set(registry.datasets.names())


# -- issue 27, item 12: what the name resolver must refuse, and "sampled" wherever soundness shows --------


def test_a_parameter_given_twice_is_refused_by_name() -> None:
    relaxations = build_registry(load_entry_points=False).relaxations
    with pytest.raises(ValueError, match="LooseIBP-C: parameter 'omega' is given twice"):
        relaxations.get("LooseIBP-C(omega=1,omega=2)")
    with pytest.raises(ValueError, match="given twice"):
        relaxations.select("CROWN, LooseIBP-DC(F=10, omega=0.5, F=2)")
    assert relaxations.get("LooseIBP-C(omega=2)").parameters == {"omega": 2.0}


def test_a_relaxation_named_like_a_parameter_setting_is_refused(
    fake_entry_points: list[FakeEntryPoint],
) -> None:
    crown0 = build_registry(load_entry_points=False).relaxations["CROWN-0"]
    lookalike = crown0.__class__(
        name="LooseIBP-C(omega=0.5)",
        negative=crown0.negative,
        unstable=crown0.unstable,
        positive=crown0.positive,
    )
    fake_entry_points.append(
        FakeEntryPoint("lookalike", _module("lookalike", relaxlab_relaxations=lambda: [lookalike]))
    )
    registry = build_registry(check=check_soundness)
    assert "LooseIBP-C(omega=0.5)" not in registry.relaxations.names()
    assert registry.relaxations.aliases("CROWN-0") == []  # not listed as CROWN-0's alias
    assert any(
        e.plugin == "lookalike" and "named like a parameter setting" in e.reason for e in registry.errors
    )
    # and the name still means what it says: LooseIBP-C at omega = 0.5
    assert registry.relaxations.get("LooseIBP-C(omega=0.5)").name == "LooseIBP-C"
    with pytest.raises(registry_module.RegistryError, match="rename it"):
        registry.relaxations.register(lookalike, "runtime")


def test_sampled_relaxations_are_shown_as_sampled_and_not_used_for_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from click.testing import CliRunner

    from relaxlab.cli.registry_cmds import list_command
    from relaxlab.core.expr import Opaque
    from relaxlab.core.relaxation import Line

    chord = Opaque("u/(u-l)", lambda env: env["u"] / (env["u"] - env["l"]))
    opaque = ReluRelaxation(
        name="acme-Opaque",
        negative=EXACT_NEGATIVE,
        positive=EXACT_POSITIVE,
        unstable=CaseBounds(ZERO, Line(chord, -chord * Opaque("l", lambda env: env["l"]))),
    )
    monkeypatch.setattr(api, "_REGISTRY", build_registry(load_entry_points=False, check=check_soundness))
    api.register_relaxation(opaque)  # passes the sampled check
    relaxations = api.get_registry().relaxations
    assert relaxations.soundness("acme-Opaque") == "sampled" and "acme-Opaque" in relaxations.sampled
    assert relaxations.soundness("CROWN") == "proved"
    assert "acme-Opaque" not in relaxations.select("all")
    with pytest.raises(UnsoundRelaxationError, match="only sampled, not proved"):
        relaxlab.get_relaxation("acme-Opaque")
    assert relaxlab.get_relaxation("acme-Opaque", allow_unsound=True) is opaque
    table = CliRunner().invoke(list_command, ["--wide"])
    row = next(line for line in table.output.splitlines() if line.startswith("acme-Opaque"))
    assert row.rstrip().endswith("sampled") and "yes" not in row.split()
    records = {r["name"]: r for r in json.loads(CliRunner().invoke(list_command, ["--json"]).output)}
    assert records["acme-Opaque"]["soundness"] == "sampled" and records["acme-Opaque"]["sound"] is False
    assert records["CROWN"]["soundness"] == "proved" and records["CROWN"]["sound"] is True


def test_an_extended_registry_lasts_for_its_block_and_changes_nothing() -> None:
    """``api.extended_registry`` is how library code uses relaxations no plugin provides: known by name
    inside the block (nested blocks see the outer ones'), checked as a plugin's, gone after it, and the
    process-wide registry is never touched (issue 26: no hidden state)."""
    before = relaxlab.get_registry()
    names = set(before.relaxations)
    other = ReluRelaxation(
        name="acme-Good-2", negative=EXACT_NEGATIVE, positive=EXACT_POSITIVE, unstable=GOOD.unstable
    )
    with api.extended_registry([GOOD], source="test") as extended:
        assert (
            relaxlab.get_relaxation("acme-good") is GOOD
            and extended.relaxations.source("acme-Good") == "test"
        )
        with api.extended_registry([GOOD, other], source="inner"):
            assert relaxlab.get_relaxation("acme-Good-2") is other
            assert relaxlab.get_registry().relaxations.source("acme-Good") == "test"  # held already: kept
        assert "acme-Good-2" not in relaxlab.get_registry().relaxations
        with pytest.raises(RuntimeError), api.extended_registry([other], source="x"):
            raise RuntimeError  # the block's end restores the registry before it, however it ends
        assert "acme-Good-2" not in relaxlab.get_registry().relaxations
    assert relaxlab.get_registry() is before and set(before.relaxations) == names
    with (
        pytest.raises(UnsoundRelaxationError, match="acme-Unsound"),
        api.extended_registry([UNSOUND], source="x"),
    ):
        pass
    assert "acme-Unsound" not in relaxlab.get_registry().relaxations
