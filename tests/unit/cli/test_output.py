"""Output that explains itself: tables fit 100 columns, lists have headings, one origin label, CSV flags as ✓."""

from __future__ import annotations

import json

from click.testing import CliRunner

from relaxlab.cli import cli
from relaxlab.cli.format import TABLE_WIDTH, render_table


def test_render_table_wraps_wide_cells_within_the_width() -> None:
    rows = [["CROWN-0-Tria-C", ", ".join(["LooseIBP-DC"] * 12), "x"], ["IBP", "-", "y"]]
    text = render_table(["name", "tighter than", "z"], rows)
    lines = text.splitlines()
    assert max(map(len, lines)) <= TABLE_WIDTH
    assert lines[0].split() == ["name", "tighter", "than", "z"]
    assert text.count("LooseIBP-DC") == 12  # wrapped, nothing lost
    assert lines[3].startswith(
        " " * len("CROWN-0-Tria-C")
    )  # a continuation line leaves the first column empty
    wide = render_table(["name", "tighter than", "z"], rows, width=None)
    assert max(map(len, wide.splitlines())) > TABLE_WIDTH and len(wide.splitlines()) == 4


def test_discover_fits_100_columns_and_labels_its_lists() -> None:
    result = CliRunner().invoke(cli, ["discover", "--family", "none", "--quiet"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= TABLE_WIDTH
    assert any(line.startswith("results (") for line in lines)
    assert any(line.startswith("registered relaxations, rediscovered or not (") for line in lines)
    wide = CliRunner().invoke(cli, ["discover", "--family", "none", "--quiet", "--wide"])
    assert max(map(len, wide.output.splitlines())) > TABLE_WIDTH


def test_list_and_show_name_the_origin_alike() -> None:
    listed = CliRunner().invoke(cli, ["list"])
    row = next(line for line in listed.output.splitlines() if line.startswith("IBP "))
    assert "built-in" in row.split() and "relaxations.builtin" not in listed.output
    shown = CliRunner().invoke(cli, ["show", "-r", "IBP"])
    assert "  origin: built-in" in shown.output.splitlines()
    assert max(map(len, listed.output.splitlines())) <= TABLE_WIDTH
    records = json.loads(CliRunner().invoke(cli, ["list", "--json"]).output)
    ibp = next(r for r in records if r["name"] == "IBP")
    assert (
        ibp["origin"] == "built-in" and ibp["plugin"] == "relaxlab.relaxations.builtin"
    )  # as docs/plugins.md says


def test_paradox_csv_and_json_name_the_flags_alike() -> None:
    import attrs

    from relaxlab.experiments.paradox import ParadoxRow, paradox_csv

    row = ParadoxRow(
        relaxation="CROWN",
        continuous=False,
        sensitive=True,
        cr_auc=3.0,
        accuracy=90.0,
        certified=50.0,
        pgd=None,
        n=100,
    )
    header, line = paradox_csv([row]).splitlines()
    assert header == "relaxation,continuous,sensitive,cr_auc,accuracy,pgd,certified,n"
    assert line == "CROWN,False,True,3.0000,90.00,,50.00,100"  # ✗C ✗S
    assert set(header.split(",")) == set(attrs.asdict(row))  # paradox.json's keys


def test_paths_wrap_at_slashes_not_mid_word() -> None:
    path = "runs/some-long-experiment/paradox-crown-ibp-r/checkpoint.pt"
    text = render_table(["checkpoint", "note"], [[path, "x " * 60]], width=60)
    parts = [line.split("  ")[0].strip() for line in text.splitlines()[2:]]
    parts = [part for part in parts if part]
    assert "".join(parts) == path and len(parts) > 1 and all(part.endswith("/") for part in parts[:-1])
