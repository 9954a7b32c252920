"""Every VNN-COMP 2021 instance in ../shared/vnncomp2021: answered, and never against the competition.

The fast test runs every instance with a short plan (IBP, CROWN, one PGD round) and a short
time limit; the slow one with the default plan and the competition's own time limits (what
docs/verification.md reports). Both assert that no answer contradicts expected_results.csv,
that every ``sat`` carries a counterexample in the property's box that the ONNX network's own
forward pass confirms (checked again here, from the files), and that every network relaxlab
loads gets an answer other than ``error``. Networks the loader refuses are ``error`` results,
never a crash.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from tests.unit.engine.test_vnnlib import SHARED

from relaxlab.engine.onnx_loader import load_onnx
from relaxlab.engine.vnnlib import read_vnnlib
from relaxlab.evaluation.verify import (
    AttackStage,
    Result,
    contradictions,
    onnx_input_shape,
    read_expected,
    read_instances,
    resolve_stage,
    verify_instances,
)

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="the VNN-COMP 2021 files are not on this machine")
BENCHMARKS = ("test", "mnistfc", "acasxu")


def _check(results: list[Result]) -> None:
    expected = read_expected(SHARED / "expected_results.csv")
    assert len(results) == len(expected) == 47
    assert list(contradictions(results, expected)) == []
    for result in results:
        instance = result.instance
        assert instance is not None
        if result.status == "error":
            assert "OnnxLoadError" in result.reason, result.reason  # a refused network, nothing else
            continue
        if result.status != "sat":
            continue
        example = result.counterexample
        assert example is not None
        model = load_onnx(instance.network)
        with torch.no_grad():
            x = torch.tensor(example.inputs).reshape(1, *onnx_input_shape(instance.network))
            outputs = model(x).reshape(-1).tolist()
        assert outputs == list(example.outputs)
        prop = read_vnnlib(instance.prop)
        assert any(region.box.contains(example.inputs)
                   and any(all(atom.holds(outputs) for atom in conjunction) for conjunction in region.disjuncts)
                   for region in prop.regions)
    mnist = [r for r in results if r.instance is not None and r.instance.benchmark == "mnistfc"]
    assert not any(r.status == "error" for r in mnist)


def _instances(timeout: float | None) -> list:
    return [i for name in BENCHMARKS for i in read_instances(SHARED / name / f"{name}_instances.csv", timeout=timeout)]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Small batches gain nothing from a second thread, and lose much to waiting threads on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_every_instance_quickly() -> None:
    plan = [resolve_stage("IBP"), resolve_stage("CROWN"), AttackStage(rounds=1)]
    results = verify_instances(_instances(timeout=20.0), plan=plan)
    _check(results)
    mnist = [r for r in results if r.instance is not None and r.instance.benchmark == "mnistfc"]
    assert sum(r.status == "unsat" for r in mnist) >= 8 and sum(r.status == "sat" for r in mnist) >= 8


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_every_instance_with_the_default_plan_and_the_competitions_limits() -> None:
    _check(verify_instances(_instances(timeout=None)))
