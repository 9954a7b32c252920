"""Real installs of plugin distributions: found through the entry point, listed, checked, usable.

Each distribution is installed with pip into a temporary directory that is put on PYTHONPATH
of a fresh interpreter, so the test's own environment stays as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _install(source: Path, target: Path) -> None:
    """pip-install ``source`` into ``target``, building from a copy: the build leaves ``build/`` and
    ``*.egg-info`` where it builds, and the repository's tree stays as it was."""
    copy = target.parent / f"{target.name}-source"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(copy),
        ],
        check=True,
        capture_output=True,
        text=True,
    )


def _run(target: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(target), **(env or {})}
    environment.pop("RELAXLAB_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=environment, timeout=600
    )


@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    _install(ROOT / "plugins" / "relaxlab-example", target)
    return target


def test_example_plugin_is_listed_with_its_origin(example_plugin: Path) -> None:
    result = _run(example_plugin, "-m", "relaxlab", "list", "--json")
    assert result.returncode == 0, result.stderr
    records = {r["name"]: r for r in json.loads(result.stdout)}
    record = records["example-Half-Slope"]
    assert record["origin"] == "example"
    assert (record["continuous"], record["sensitive"], record["sound"]) == (False, True, True)
    assert record["intermediate"] == "backsub"


def test_example_plugin_passes_check_and_is_usable_by_the_engine(example_plugin: Path) -> None:
    result = _run(example_plugin, "-m", "relaxlab", "check", "-r", "example-Half-Slope", "--sample", "50")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "example-Half-Slope: sound" in result.stdout
    script = textwrap.dedent("""
        import torch, relaxlab
        net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).double()
        x = torch.zeros(1, 2, dtype=torch.float64)
        lb, ub = relaxlab.compute_bounds(net, x, 0.5, "example-Half-Slope")
        out = net(x)
        assert (lb <= out + 1e-9).all() and (out <= ub + 1e-9).all()
        print(relaxlab.get_registry().relaxations.source("example-half-slope"))
    """)
    result = _run(example_plugin, "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "example"


def test_example_plugin_contributes_a_candidate_line(example_plugin: Path) -> None:
    script = "import relaxlab; print([c.name for c in relaxlab.get_registry().candidate_lines if c.source == 'example'])"
    result = _run(example_plugin, "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['x/2']"


def test_blocking_the_example_plugin_removes_it(example_plugin: Path) -> None:
    result = _run(
        example_plugin, "-m", "relaxlab", "list", "--json", env={"RELAXLAB_BLOCK_PLUGINS": "example"}
    )
    assert result.returncode == 0, result.stderr
    assert "example-Half-Slope" not in {r["name"] for r in json.loads(result.stdout)}


def test_an_unsound_plugin_is_caught_with_a_counterexample(tmp_path: Path) -> None:
    source = tmp_path / "relaxlab-acme"
    (source / "src" / "relaxlab_acme").mkdir(parents=True)
    (source / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "relaxlab-acme"
        version = "0.0.1"
        [project.entry-points.relaxlab]
        acme = "relaxlab_acme"
        [tool.setuptools.packages.find]
        where = ["src"]
    """)
    )
    (source / "src" / "relaxlab_acme" / "__init__.py").write_text(
        textwrap.dedent("""
        import relaxlab
        from relaxlab.core.lines import CHORD_LOW, EXACT_NEGATIVE, EXACT_POSITIVE, ZERO
        from relaxlab.core.relaxation import CaseBounds, ReluRelaxation

        @relaxlab.hookimpl
        def relaxlab_relaxations():
            # the upper line lambda*x passes below relu at x = u: unsound
            return [ReluRelaxation(name="acme-Too-Tight", negative=EXACT_NEGATIVE, positive=EXACT_POSITIVE,
                                   unstable=CaseBounds(ZERO, CHORD_LOW))]
    """)
    )
    target = tmp_path / "site"
    _install(source, target)
    result = _run(target, "-m", "relaxlab", "check", "-r", "acme-Too-Tight", "--json", "--sample", "20")
    assert result.returncode == 1
    [record] = json.loads(result.stdout)
    counterexample = record["counterexample"]
    assert (
        record["sound"] is False
        and counterexample["case"] == "unstable"
        and counterexample["side"] == "upper"
    )
    assert counterexample["line_value"] < counterexample["relu_value"]
    listed = _run(target, "-m", "relaxlab", "list")
    assert listed.returncode == 0
    assert "plugin 'acme': relaxation 'acme-Too-Tight' is unsound" in listed.stderr
    refused = _run(target, "-c", "import relaxlab; relaxlab.get_relaxation('acme-Too-Tight')")
    assert refused.returncode != 0 and "UnsoundRelaxationError" in refused.stderr
