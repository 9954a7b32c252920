"""Answering VNN-COMP instances: the stages, the multipliers, counterexamples, time limits, errors, files."""

from __future__ import annotations

import re
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from relaxlab.engine.export import export_onnx
from relaxlab.engine.vnnlib import Atom, InputBox, Property, Region, parse_vnnlib, write_property
from relaxlab.evaluation.pgd import pgd_minimize
from relaxlab.evaluation.verify import (
    AttackStage,
    BoundStage,
    Counterexample,
    Deadline,
    Instance,
    Result,
    SplitStage,
    contradictions,
    read_expected,
    read_instances,
    relaxation_bound,
    resolve_stage,
    result_text,
    summarise,
    verify_instance,
    verify_instances,
    verify_property,
    write_results,
)

IBP, CROWN = resolve_stage("IBP"), resolve_stage("CROWN")
QUICK_PGD = AttackStage(rounds=1, starts=4, steps=30)


def linear_net(weight: list[list[float]], bias: list[float], *, offset: float = 10.0) -> nn.Sequential:
    """``y = W x + b`` through one layer of ReLUs that are all active on [-1, 1] (exact for CROWN, loose for IBP)."""
    W = torch.tensor(weight, dtype=torch.float64)
    first = nn.Linear(W.shape[1], W.shape[0]).double()
    second = nn.Linear(W.shape[0], W.shape[0]).double()
    with torch.no_grad():
        first.weight.copy_(W)
        first.bias.fill_(offset)
        second.weight.copy_(torch.eye(W.shape[0], dtype=torch.float64))
        second.bias.copy_(torch.tensor(bias, dtype=torch.float64) - offset)
    return nn.Sequential(first, nn.ReLU(), second).eval()


def box_property(
    lower: list[float], upper: list[float], disjuncts: list[list[Atom]], outputs: int
) -> Property:
    return Property(
        len(lower),
        outputs,
        [Region(InputBox([Fraction(v) for v in lower], [Fraction(v) for v in upper]), disjuncts)],
    )


# y0 = 0.5, y1 = 2x, y2 = -x on x in [-1, 1]; "Y_0 <= Y_1 and Y_0 <= Y_2" needs 0.5 <= 2x and 0.5 <= -x: infeasible.
# No single atom is refuted (0.5 - 2x and 0.5 + x both reach below 0), nor their average (0.5 - x/2 reaches 0);
# lambda = (1/3, 2/3) gives 0.5 - x(2/3 - 2/3) = 0.5 > 0.
TWO_ATOMS = [Atom([(0, 1), (1, -1)], 0), Atom([(0, 1), (2, -1)], 0)]


def test_a_conjunction_refuted_only_by_optimised_multipliers() -> None:
    model = linear_net([[0.0], [2.0], [-1.0]], [0.5, 0.0, 0.0])
    prop = box_property([-1.0], [1.0], [TWO_ATOMS], 3)
    assert verify_property(model, prop, plan=[IBP, CROWN]).method == "CROWN+λ"
    assert verify_property(model, prop, plan=[IBP, CROWN]).status == "unsat"
    # IBP loses the correlation through the hidden layer: no lambda helps it
    assert verify_property(model, prop, plan=[IBP, QUICK_PGD]).status == "unknown"
    plain = BoundStage("CROWN", relaxation_bound("CROWN"), multipliers=False)
    assert verify_property(model, prop, plan=[plain]).status == "unknown"


def test_input_splitting_refutes_every_leaf_and_finds_counterexamples_at_centres() -> None:
    model = linear_net([[0.0], [2.0], [-1.0]], [0.5, 0.0, 0.0])
    prop = box_property([-1.0], [1.0], [TWO_ATOMS], 3)  # no lambda needed once x is split at 1/4
    split = SplitStage("split", relaxation_bound("IBP"))
    assert verify_property(model, prop, plan=[split]).method == "split"
    identity = linear_net([[1.0]], [0.0])
    needle = box_property([-1.0], [1.0], [[Atom([(0, -1)], Fraction(-9, 10))]], 1)  # y >= 0.9: x >= 0.9
    found = verify_property(identity, needle, plan=[split])
    assert found.status == "sat" and found.method == "split"
    assert found.counterexample is not None and found.counterexample.inputs[0] >= 0.9
    few = SplitStage("split", relaxation_bound("IBP"), max_inputs=0)
    assert verify_property(model, prop, plan=[few]).status == "unknown"  # skipped: too many inputs
    tiny = SplitStage("split", relaxation_bound("IBP"), max_boxes=1)
    assert verify_property(model, prop, plan=[tiny]).status == "unknown"  # gave up, proved nothing


def test_unsat_needs_every_disjunct_over_every_box() -> None:
    model = linear_net([[1.0]], [0.0])  # y = x
    refuted, open_ = [Atom([(0, 1)], -2)], [Atom([(0, 1)], Fraction(1, 2))]  # y <= -2 (never), y <= 1/2
    assert verify_property(model, box_property([-1.0], [1.0], [refuted], 1), plan=[CROWN]).status == "unsat"
    assert (
        verify_property(model, box_property([-1.0], [1.0], [refuted, open_], 1), plan=[CROWN]).status
        == "unknown"
    )
    two_boxes = Property(1, 1, [Region(InputBox([-1], [1]), [refuted]), Region(InputBox([0], [1]), [open_])])
    assert verify_property(model, two_boxes, plan=[CROWN]).status == "unknown"
    second_refuted = Property(
        1, 1, [Region(InputBox([-1], [1]), [refuted]), Region(InputBox([0.75], [1]), [open_])]
    )
    assert verify_property(model, second_refuted, plan=[CROWN]).status == "unsat"


def test_a_margin_within_the_tolerance_is_not_a_proof() -> None:
    model = linear_net([[1.0]], [0.0])
    # y = x >= -1 on the box: y <= -1 is violated only at x = -1 exactly (a counterexample, not safe)
    touching = box_property([-1.0], [1.0], [[Atom([(0, 1)], -1)]], 1)
    assert verify_property(model, touching, plan=[CROWN]).status == "unknown"
    beyond = box_property([-1.0], [1.0], [[Atom([(0, 1)], Fraction(-1) - Fraction(1, 10**9))]], 1)
    assert verify_property(model, beyond, plan=[CROWN]).status == "unknown"  # 1e-9 is inside the tolerance
    clear = box_property([-1.0], [1.0], [[Atom([(0, 1)], Fraction(-1) - Fraction(1, 10**4))]], 1)
    assert verify_property(model, clear, plan=[CROWN]).status == "unsat"


def _parse_counterexample(text: str) -> tuple[list[float], list[float]]:
    assert text.startswith("sat\n((") and text.endswith("))\n")
    pairs = re.findall(r"\(([XY])_(\d+) (\S+?)\)", text)
    xs = [float(v) for kind, _, v in pairs if kind == "X"]
    ys = [float(v) for kind, _, v in pairs if kind == "Y"]
    assert [int(i) for kind, i, _ in pairs if kind == "X"] == list(range(len(xs)))
    return xs, ys


def test_pgd_counterexample_is_confirmed_by_the_forward_pass() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).eval()  # float32, as ONNX loads
    with torch.no_grad():
        centre = model(torch.zeros(1, 3))[0]
    # some output at least 0.05 above its value at the centre: PGD must find where
    atoms = [[Atom([(j, -1)], Fraction(-float(centre[j]) - 0.05))] for j in range(2)]
    prop = box_property([-1.0] * 3, [1.0] * 3, atoms, 2)
    result = verify_property(model, prop, input_shape=(3,), plan=[IBP, AttackStage()])
    assert result.status == "sat" and result.method == "PGD"
    xs, ys = _parse_counterexample(result_text(result))
    assert prop.regions[0].box.contains(xs)
    with torch.no_grad():
        assert model(torch.tensor([xs])).reshape(-1).tolist() == ys  # the network's own float32 pass
    assert any(all(atom.holds(ys) for atom in conjunction) for conjunction in prop.regions[0].disjuncts)


def test_an_empty_conjunction_is_violated_anywhere_and_no_input_is_safe() -> None:
    model = linear_net([[1.0]], [0.0])
    anything = verify_property(model, box_property([0.0], [1.0], [[]], 1))
    assert anything.status == "sat" and anything.counterexample is not None
    third = Property(1, 1, [Region(InputBox([Fraction(1, 3)], [Fraction(1, 3)]), [[]])])  # no float inside
    assert verify_property(model, third).status == "unknown"
    nothing = parse_vnnlib(
        "(declare-const X_0 Real)(declare-const Y_0 Real)"
        "(assert (<= X_0 0))(assert (>= X_0 1))(assert (<= Y_0 0))"
    )
    assert verify_property(model, nothing).method == "empty"


# -- time limits ---------------------------------------------------------------------------------


def _slow_stage(seconds: float, value: float, calls: list[str]) -> BoundStage:
    """A stage that takes ``seconds`` and claims ``value`` for every row (a test double for the timing only)."""

    def bound(model: nn.Module, lower: Tensor, upper: Tensor, C: Tensor, deadline: Deadline) -> Tensor:
        calls.append("slow")
        time.sleep(seconds)
        return torch.full((lower.shape[0], C.shape[0]), value, dtype=torch.float64)

    return BoundStage("slow", bound, multipliers=False)


def test_the_limit_is_checked_between_stages() -> None:
    model = linear_net([[1.0]], [0.0])
    prop = box_property([-1.0], [1.0], [[Atom([(0, 1)], 0)]], 1)
    calls: list[str] = []
    spy = BoundStage("spy", lambda *args: calls.append("spy") or relaxation_bound("CROWN")(*args))
    result = verify_property(model, prop, timeout=0.2, plan=[_slow_stage(0.3, -1.0, calls), spy])
    assert (result.status, calls) == ("timeout", ["slow"])
    assert "after slow" in result.reason and result.seconds >= 0.2
    late = verify_property(model, prop, timeout=0.2, plan=[_slow_stage(0.3, 5.0, [])])
    assert late.status == "timeout" and late.reason.startswith(
        "unsat after"
    )  # an answer past the limit is late
    assert verify_property(model, prop, timeout=1e-9).status == "timeout"


def test_pgd_stops_when_told_and_keeps_its_best_point() -> None:
    model = nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
        model.bias.zero_()
    lower, upper = -torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    calls = []
    x, value = pgd_minimize(
        model,
        lambda y: y[:, 0],
        lower,
        upper,
        steps=50,
        step_size=0.25,
        should_stop=lambda: calls.append(1) or len(calls) >= 3,
    )
    assert len(calls) == 3  # checked before every step
    assert value.item() == model(x).item() <= 0.0  # never worse than the centre
    x, value = pgd_minimize(model, lambda y: y[:, 0], lower, upper, steps=50, step_size=0.25)
    assert x.tolist() == [[-1.0, 1.0]] and value.item() == -3.0  # the minimising corner, exactly
    x, value = pgd_minimize(model, lambda y: y[:, 0], lower, upper, steps=50, step_size=0.25, stop_below=-0.5)
    assert -3.0 < value.item() < -0.5


# -- instances and files ---------------------------------------------------------------------------


@pytest.fixture
def benchmark(tmp_path: Path) -> Path:
    """A two-instance benchmark folder in the competition's layout: one unsat, one sat."""
    folder = tmp_path / "toy"
    folder.mkdir()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    export_onnx(model, (2,), folder / "net.onnx")
    with torch.no_grad():
        reach = model(torch.zeros(1, 2))[0].tolist()
    safe = Property(2, 2, [Region(InputBox([0, 0], [0, 0]), [[Atom([(0, 1)], Fraction(reach[0]) - 1)]])])
    unsafe = Property(2, 2, [Region(InputBox([-1, -1], [1, 1]), [[Atom([(0, 1)], Fraction(reach[0]) + 1)]])])
    write_property(folder / "safe.vnnlib", safe)
    write_property(folder / "unsafe.vnnlib", unsafe)
    (folder / "toy_instances.csv").write_text("net.onnx,safe.vnnlib,30\nnet.onnx,unsafe.vnnlib,30\n\n")
    return folder / "toy_instances.csv"


def test_instances_from_a_csv_and_their_result_files(benchmark: Path, tmp_path: Path) -> None:
    instances = read_instances(benchmark)
    assert [(i.network, i.prop.name, i.timeout, i.benchmark) for i in instances] == [
        (benchmark.parent / "net.onnx", "safe.vnnlib", 30.0, "toy"),
        (benchmark.parent / "net.onnx", "unsafe.vnnlib", 30.0, "toy"),
    ]
    assert {i.timeout for i in read_instances(benchmark, timeout=5)} == {5.0}
    seen: list[Result] = []
    results = verify_instances(instances, on_result=seen.append)
    assert seen == results and [r.status for r in results] == ["unsat", "sat"]
    assert results[0].method == "IBP"
    write_results(results, tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["results.csv", "toy__net__safe.txt", "toy__net__unsafe.txt"]
    assert (tmp_path / "out" / "toy__net__safe.txt").read_text() == "unsat\n"
    assert (tmp_path / "out" / "toy__net__unsafe.txt").read_text().startswith("sat\n((X_0 ")
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert rows[0] == "benchmark,onnx,vnnlib,result,method,time_s,reason"
    assert rows[1].startswith("toy,net.onnx,safe.vnnlib,unsat,IBP,")
    (summary,) = summarise(results)
    assert (summary.instances, summary.counts["unsat"], summary.counts["sat"]) == (2, 1, 1)
    assert summary.methods == {"IBP": 1, "PGD": 1}


def test_bad_files_are_error_results_not_crashes(benchmark: Path, tmp_path: Path) -> None:
    folder = benchmark.parent
    (folder / "bad.vnnlib").write_text("(declare-const X_0 Real)\n(assert (<= X_0 1)\n")
    (folder / "wide.vnnlib").write_text(
        "".join(f"(declare-const X_{i} Real)(assert (<= X_{i} 1))(assert (>= X_{i} 0))" for i in range(3))
        + "(declare-const Y_0 Real)(declare-const Y_1 Real)(assert (<= Y_0 0))"
    )
    sigmoid = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid()).eval()
    export_onnx(sigmoid, (2,), folder / "sigmoid.onnx")
    cases = {
        ("net.onnx", "bad.vnnlib"): "VnnlibError: .*bad.vnnlib:2:1: '\\(' is never closed",
        ("net.onnx", "wide.vnnlib"): "declares 3 inputs and 2 outputs, the network has 2 and 2",
        ("sigmoid.onnx", "safe.vnnlib"): r"OnnxLoadError: ONNX node \d+ .*\(Sigmoid\b.* is not supported",
        ("missing.onnx", "safe.vnnlib"): "missing.onnx",
    }
    for (onnx_name, vnnlib_name), reason in cases.items():
        result = verify_instance(Instance(folder / onnx_name, folder / vnnlib_name, 10, "toy"))
        assert result.status == "error" and re.search(reason, result.reason), (
            onnx_name,
            vnnlib_name,
            result.reason,
        )
        assert result_text(result) == "error\n"
    (tmp_path / "rows.csv").write_text("a.onnx,b.vnnlib\n")
    with pytest.raises(ValueError, match="rows.csv:1: expected onnx,vnnlib,timeout"):
        read_instances(tmp_path / "rows.csv")
    (tmp_path / "rows.csv").write_text("a.onnx,b.vnnlib,60\na.onnx,b.vnnlib,soon\n")
    with pytest.raises(ValueError, match="rows.csv:2: timeout 'soon' is not a number"):
        read_instances(tmp_path / "rows.csv")


def test_results_format_and_contradictions(tmp_path: Path) -> None:
    instance = Instance("n.onnx", "p.vnnlib", 1, "b")
    example = Counterexample((0.5, -1.0), (3.25,))
    assert (
        result_text(Result("sat", 0.1, "PGD", counterexample=example))
        == "sat\n((X_0 0.5)\n (X_1 -1.0)\n (Y_0 3.25))\n"
    )
    for status in ("unsat", "unknown", "timeout", "error"):
        assert result_text(Result(status, 0.1)) == f"{status}\n"
    with pytest.raises(ValueError, match="status must be one of"):
        Result("holds", 0.1)
    with pytest.raises(ValueError, match="needs its counterexample"):
        Result("sat", 0.1)
    (tmp_path / "expected.csv").write_text(
        "benchmark,onnx,vnnlib,consensus,tools_sat,tools_unsat\nb,n.onnx,p.vnnlib,SAT,1,0\n"
    )
    expected = read_expected(tmp_path / "expected.csv")
    assert expected == {("b", "n.onnx", "p.vnnlib"): ("SAT", 1, 0)}
    wrong = Result("unsat", 0.1, "CROWN", instance=instance)
    assert [why for _, why in contradictions([wrong], expected)] == [
        "proved safe where the competition found a counterexample"
    ]
    assert (
        list(contradictions([Result("sat", 0.1, "PGD", counterexample=example, instance=instance)], expected))
        == []
    )
    assert list(contradictions([Result("unknown", 0.1, instance=instance)], expected)) == []
