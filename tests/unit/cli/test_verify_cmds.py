"""``relaxlab verify`` end to end: one instance, a csv, result files, the summary, the comparison."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from relaxlab.cli import cli
from tests.unit.evaluation.test_verify import benchmark  # noqa: F401  (the fixture)


def test_one_instance_writes_the_competition_result_file(benchmark: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = benchmark.parent
    result = CliRunner().invoke(
        cli,
        [
            "verify",
            str(folder / "net.onnx"),
            str(folder / "unsafe.vnnlib"),
            "--results",
            str(tmp_path / "r" / "result.txt"),
            "--timeout",
            "20",
        ],
    )
    assert result.exit_code == 0, result.output
    written = (tmp_path / "r" / "result.txt").read_text()
    assert written.startswith("sat\n((X_0 ") and written in result.output + "\n"
    assert "[1/1] - net.onnx unsafe.vnnlib: sat (PGD)" in result.output


def test_csv_summary_and_comparison(benchmark: Path, tmp_path: Path) -> None:  # noqa: F811
    expected = tmp_path / "expected.csv"
    expected.write_text(
        "benchmark,onnx,vnnlib,consensus,tools_sat,tools_unsat\n"
        "toy,net.onnx,safe.vnnlib,UNSAT,0,2\ntoy,net.onnx,unsafe.vnnlib,SAT,1,0\n"
    )
    args = [
        "verify",
        str(benchmark),
        "--out",
        str(tmp_path / "out"),
        "--expected",
        str(expected),
        "--stages",
        "IBP, CROWN,pgd",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "toy net.onnx safe.vnnlib: unsat (IBP)" in result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("benchmark "))
    assert header.split() == [
        "benchmark",
        "n",
        "unsat",
        "sat",
        "unknown",
        "timeout",
        "error",
        "time",
        "(s)",
        "VNN-COMP",
        "unsat/sat",
        "decided",
        "by",
    ]
    row = next(line for line in lines if line.startswith("toy "))
    assert row.split()[:7] == ["toy", "2", "1", "1", "0", "0", "0"]
    assert row.split()[8:] == ["1/1", "IBP", "1,", "PGD", "1"]  # the competition: one UNSAT, one SAT
    assert (tmp_path / "out" / "results.csv").read_text().count("\n") == 3
    # the competition says the other thing: a contradiction fails the command
    expected.write_text(
        "benchmark,onnx,vnnlib,consensus,tools_sat,tools_unsat\ntoy,net.onnx,safe.vnnlib,SAT,1,0\n"
    )
    contradicted = CliRunner().invoke(cli, args)
    assert contradicted.exit_code == 1
    assert (
        "CONTRADICTION toy net.onnx safe.vnnlib: unsat, proved safe where the competition found a"
        in contradicted.output
    )


def test_bad_arguments(benchmark: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = benchmark.parent
    cases = [
        ([str(folder / "net.onnx")], "give NET.onnx PROP.vnnlib"),
        ([str(benchmark), "--results", str(tmp_path / "r.txt")], "--results writes one instance's result"),
        ([str(benchmark), "--stages", "IBP,nonsense"], "nonsense"),
        ([str(benchmark), "--timeout", "0"], "--timeout"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, ["verify", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
