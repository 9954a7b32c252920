"""`relaxlab list`, `show` and `check` through click's runner (the real commands, in process)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from relaxlab.cli import cli
from tests.unit.properties.test_derive import PAPER_FLAGS


def test_list_json_has_every_primary_relaxation_with_paper_flags() -> None:
    result = CliRunner().invoke(cli, ["list", "--json"])
    assert result.exit_code == 0, result.output
    records = {r["name"]: r for r in json.loads(result.stdout)}
    for record in records.values():
        assert set(record) >= {"name", "aliases", "continuous", "sensitive", "intermediate", "params"}
        assert record["intermediate"] in ("backsub", "interval", "forward")
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
    result = CliRunner().invoke(cli, ["show", "deepz", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "unstable  (l < 0 < u): λx <= y <= λx - λl" in result.stdout
    assert "✓C ✗S" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_show_with_parameters() -> None:
    result = CliRunner().invoke(cli, ["show", "LooseIBP-DC(F=10, omega=0.5)"])
    assert result.exit_code == 0, result.output
    assert "LooseIBP-DC(omega=0.5, F=10)" in result.stdout and "before each ReLU" in result.stdout


def test_unknown_names_and_bad_parameters_are_clear_errors() -> None:
    result = CliRunner().invoke(cli, ["show", "crown-ibp"])
    assert result.exit_code == 2 and "did you mean 'CROWN-IBP (R)'" in result.output
    result = CliRunner().invoke(cli, ["show", "LooseIBP-C(omega=-0.5)"])
    assert result.exit_code == 2 and "omega must be >= 0" in result.output
    result = CliRunner().invoke(cli, ["check"])
    assert result.exit_code == 2 and "NAMES to check, or --all" in result.output
    result = CliRunner().invoke(cli, ["check", "IBP", "--all"])
    assert result.exit_code == 2 and "not both" in result.output


def test_check_all_passes_for_the_builtins() -> None:
    result = CliRunner().invoke(cli, ["check", "--all", "--examples", "5", "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert len(records) >= 26 and all(r["sound"] for r in records)
