"""`relaxlab list`, `show` and `check` through click's runner (the real commands, in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from relaxlab.cli import cli
from relaxlab.core.relaxation import FINAL_MODES, INTERMEDIATE_MODES
from tests.unit.properties.test_derive import PAPER_FLAGS


def test_list_json_has_every_primary_relaxation_with_paper_flags() -> None:
    result = CliRunner().invoke(cli, ["list", "--json"])
    assert result.exit_code == 0, result.output
    records = {r["name"]: r for r in json.loads(result.stdout)}
    for record in records.values():
        assert set(record) >= {
            "name",
            "aliases",
            "continuous",
            "sensitive",
            "intermediate",
            "final",
            "params",
        }
        assert record["intermediate"] in INTERMEDIATE_MODES and record["final"] in FINAL_MODES
    listed = set(records) | {a for r in records.values() for a in r["aliases"]}
    assert set(PAPER_FLAGS) <= listed
    for name, (continuous, sensitive) in PAPER_FLAGS.items():
        record = records.get(name) or next(r for r in records.values() if name in r["aliases"])
        assert (record["continuous"], record["sensitive"]) == (continuous, sensitive), name
    assert records["hBox"]["aliases"] == ["DeepZ-Box"]
    assert records["LooseIBP-DC"]["params"] == {"omega": 1.0, "F": 1.0}


def test_list_table_shows_flags() -> None:
    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 0
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("CROWN-0-C "))
    assert "✓C" in line and "✗S" in line and "backsub" in line


def test_show_prints_cases_in_words_and_plots(tmp_path: Path) -> None:
    png = tmp_path / "deepz.png"
    result = CliRunner().invoke(cli, ["show", "-r", "deepz", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "unstable  (l < 0 < u): λx <= y <= λx - λl" in result.stdout
    assert "✓C ✗S" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_show_with_parameters() -> None:
    result = CliRunner().invoke(cli, ["show", "-r", "LooseIBP-DC(F=10, omega=0.5)"])
    assert result.exit_code == 0, result.output
    assert "LooseIBP-DC(omega=0.5, F=10)" in result.stdout and "before each ReLU" in result.stdout


@pytest.mark.parametrize(
    ("name", "modes"),
    [
        ("CROWN", "intermediate bounds: full backsubstitution; final bounds: full backsubstitution"),
        ("CROWN-IBP (R)", "intermediate bounds: interval arithmetic; final bounds: full backsubstitution"),
        (
            "hBox-Hybrid",
            "intermediate bounds: forward affine forms with a box part (hybrid zonotope); final bounds: "
            "forward affine forms with a box part (hybrid zonotope)",
        ),
    ],
)
def test_show_names_how_bounds_propagate(name: str, modes: str) -> None:
    """``show`` says what the engine runs for the relaxation (its ``intermediate`` and ``final`` modes)."""
    result = CliRunner().invoke(cli, ["show", "-r", name])
    assert result.exit_code == 0, result.output
    assert modes in result.output


def test_unknown_names_and_bad_parameters_are_clear_errors() -> None:
    result = CliRunner().invoke(cli, ["show", "-r", "crown-ibp"])
    assert result.exit_code == 2 and "did you mean 'CROWN-IBP (R)'" in result.output
    result = CliRunner().invoke(cli, ["show", "-r", "LooseIBP-C(omega=-0.5)"])
    assert result.exit_code == 2 and "omega must be >= 0" in result.output
    result = CliRunner().invoke(cli, ["check"])
    assert result.exit_code == 2 and "give the relaxations to check with -r" in result.output
    result = CliRunner().invoke(cli, ["check", "-r", "IBP", "--all"])
    assert result.exit_code == 2 and "not both" in result.output


def test_the_positional_form_is_refused_with_the_r_spelling() -> None:
    for command in ("show", "check"):
        result = CliRunner().invoke(cli, [command, "CROWN", "LooseIBP-C(omega=0.5)"])
        assert result.exit_code == 2
        assert f"relaxlab {command} -r CROWN -r 'LooseIBP-C(omega=0.5)'" in result.output


def test_check_all_proves_every_spec_once_and_names_its_aliases() -> None:
    from relaxlab.api import get_registry

    registry = get_registry().relaxations
    result = CliRunner().invoke(cli, ["check", "--all", "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    primaries = [n for n in registry.names() if registry.primary(n) == n]
    assert [r["name"] for r in records] == primaries  # aliases are not checked again ...
    assert all(r["sound"] and r["verdict"] == "sound (proved)" for r in records)
    hbox = next(r for r in records if r["name"] == "hBox")
    assert hbox["aliases"] == ["DeepZ-Box"]  # ... but named beside the spec they share
    assert len(primaries) < len(registry.names())


def test_check_samples_only_when_asked() -> None:
    plain = CliRunner().invoke(cli, ["check", "-r", "CROWN"])
    assert plain.exit_code == 0 and "CROWN: sound (proved)" in plain.output and "--sample N" in plain.output
    sampled = CliRunner().invoke(cli, ["check", "-r", "CROWN", "--sample", "5"])
    assert sampled.exit_code == 0 and "--sample N" not in sampled.output


def test_show_takes_the_names_discover_prints() -> None:
    name = "gen(neg 0..0, unst x..x-l, pos x..x) + loose-C"
    result = CliRunner().invoke(cli, ["show", "-r", name])
    assert result.exit_code == 0, result.output
    assert (
        result.output.startswith(f"{name}: ")
        and "before each ReLU, [l, u] becomes [l - omega, u + omega]" in result.output
    )
    assert "origin: generated by relaxlab discover (not registered)" in result.output
    bad = CliRunner().invoke(cli, ["show", "-r", "gen(neg 0..0, unst x..nothing, pos x..x)"])
    assert bad.exit_code == 2 and "neither registered nor a name `relaxlab discover` prints" in bad.output
