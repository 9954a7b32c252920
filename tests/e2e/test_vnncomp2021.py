"""Every VNN-COMP 2021 instance in ../shared/vnncomp2021: answered, and never against the competition.

The fast tests run every instance with a short plan (IBP, CROWN, one PGD round) and a short
time limit, and the default plan (input splitting included) on one ACAS Xu network; the slow one
runs every instance with the default plan and the competition's own time limits (what
docs/verification.md reports). Both assert that no answer contradicts expected_results.csv,
that every ``sat`` carries a counterexample in the property's box that the ONNX network's own
forward pass confirms (checked again here, from the files, and with onnxruntime's forward pass
of the same file), and that no answer is ``error``
(every network here loads).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnxruntime
import pytest
import torch
from tests.unit.engine.test_vnnlib import SHARED

from relaxlab.engine.onnx import load_onnx, onnx_input_shape
from relaxlab.engine.vnnlib import read_vnnlib
from relaxlab.evaluation.verify import (
    AttackStage,
    Result,
    contradictions,
    read_expected,
    read_instances,
    resolve_stage,
    verify_instances,
)

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="the VNN-COMP 2021 files are not on this machine")
BENCHMARKS = ("test", "mnistfc", "acasxu")


def _check(results: list[Result], count: int = 47) -> None:
    expected = read_expected(SHARED / "expected_results.csv")
    assert len(results) == count and len(expected) == 47
    assert list(contradictions(results, expected)) == []
    assert not any(r.status == "error" for r in results), [r.reason for r in results if r.status == "error"]
    for result in results:
        instance = result.instance
        assert instance is not None
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
        for values in (outputs, _onnxruntime_outputs(instance.network, example.inputs)):
            assert any(
                region.box.contains(example.inputs)
                and any(all(atom.holds(values) for atom in conjunction) for conjunction in region.disjuncts)
                for region in prop.regions
            ), (instance.prop.name, values)


def _onnxruntime_outputs(network: object, inputs: tuple[float, ...]) -> list[float]:
    """The outputs onnxruntime computes for the counterexample: a forward pass independent of relaxlab's reader."""
    session = onnxruntime.InferenceSession(str(network))
    graph_input = session.get_inputs()[0]
    shape = [size if isinstance(size, int) else 1 for size in graph_input.shape]
    x = np.asarray(inputs, dtype=np.float32).reshape(shape)
    return [float(v) for v in session.run(None, {graph_input.name: x})[0].reshape(-1)]


def _instances(timeout: float | None) -> list:
    return [
        i
        for name in BENCHMARKS
        for i in read_instances(SHARED / name / f"{name}_instances.csv", timeout=timeout)
    ]


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


@pytest.mark.usefixtures("one_thread")
def test_one_acasxu_network_with_the_default_plan() -> None:
    """The default plan, input splitting included, on network 2_1 of ACAS Xu (read from MATLAB's ONNX):
    its four properties are decided as the competition's tools decided them, one counterexample by
    splitting (property 2) and three proofs (a few seconds each on an idle machine)."""
    instances = [i for i in _instances(timeout=None) if i.benchmark == "acasxu" and "_2_1_" in i.network.name]
    results = verify_instances(instances)
    _check(results, count=4)
    expected = read_expected(SHARED / "expected_results.csv")
    for result in results:
        instance = result.instance
        assert instance is not None
        consensus = expected[(instance.benchmark, instance.network.name, instance.prop.name)][0]
        assert result.status == consensus.lower(), (instance.prop.name, result.status, result.reason)
    assert sum(r.method == "split" for r in results) >= 3


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_every_instance_with_the_default_plan_and_the_competitions_limits() -> None:
    _check(verify_instances(_instances(timeout=None)))
