"""Discovery: catalog, soundness filter, dominance, families, naming, equivalences, rediscovery."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import relaxlab
from relaxlab.api import get_registry
from relaxlab.core.expr import U
from relaxlab.core.relaxation import NAME_PATTERN, line
from relaxlab.core.stability import Stability
from relaxlab.discovery import discover, generated_name
from relaxlab.discovery.catalog import SLOTS
from relaxlab.properties import derive
from relaxlab.properties.soundness import check_soundness
from relaxlab.registry import CandidateLine, build_registry

DOCS = Path(__file__).resolve().parents[3] / "docs" / "discovery.md"

#: DESIGN.md's reference table (the LooseIBP family through the candidate transforms).
REFERENCE = [
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


@pytest.fixture(scope="module")
def registry(builtin_registry):  # noqa: ANN001, ANN201
    return builtin_registry


@pytest.fixture(scope="module")
def found(discovered):  # noqa: ANN001, ANN201
    return discovered


def test_every_reference_relaxation_is_rediscovered(found) -> None:  # noqa: ANN001
    status = {r.name: r for r in found.rediscovered}
    for name in REFERENCE:
        item = status[name]
        assert item.status in ("kept", "dominated"), str(item)
        if item.status == "dominated":
            assert item.dominated_by, name
        else:
            result = found.get(name)
            assert name in result.equivalent_to


def test_aliases_are_detected_and_the_result_keeps_the_first_registered_name(found) -> None:  # noqa: ANN001
    assert found.get("DeepZ-Box").name == "hBox"
    assert set(found.get("hBox").equivalent_to) == {"hBox", "DeepZ-Box"}
    assert set(found.get("hBox-Switch").equivalent_to) == {"hBox-Switch", "DeepZ-Switch"}


def test_stage_counts_follow_from_the_catalog(found, registry) -> None:  # noqa: ANN001
    stages = dict(found.stages)
    per_side = {
        side: sum(1 for c in registry.candidate_lines if c.side in (side, "both"))
        for side in ("lower", "upper")
    }
    assert stages["all combinations"] == per_side["lower"] ** 3 * per_side["upper"] ** 3
    assert (
        stages["all combinations"]
        >= stages["sound"]
        >= stages["sound, distinct lines"]
        > stages["non-dominated"]
    )
    assert stages["sound, distinct lines"] == math.prod(len(d) for d in found.catalog.distinct)
    assert stages["total"] == len(found.results)
    plain = stages["non-dominated"] + stages["+ switch"] + stages["+ soft"] + stages["+ (R)"]
    assert len(found.transforms) == 2  # loose-C and loose-DC at the default grid
    assert stages["+ transforms"] == len(found.transforms) * plain
    assert stages["total"] == plain + stages["+ transforms"]


def test_the_documented_counts_are_those_of_a_run(found) -> None:  # noqa: ANN001
    text = DOCS.read_text(encoding="utf-8")
    stage_table = text.split("| stage | count |", 1)[1].split("\n\n", 1)[0]
    table = {
        stage: int(count.replace(" ", ""))
        for stage, count in re.findall(r"^\| ([^|]+?) \| ([\d ]+) \|", stage_table, flags=re.MULTILINE)
    }
    assert table == dict(found.stages)
    new = [r for r in found.results if not r.equivalent_to]
    widened = [r for r in new if r.transform]
    summary = (
        f"Of its {len(found.results)} results, {len(found.results) - len(new)} equal a registered relaxation "
        f"and {len(new)} are new: {len(new) - len(widened)} line combinations and families, and "
        f"{len(widened)} relaxations on widened bounds"
    )
    assert summary in " ".join(text.split())


def test_catalog_per_case_soundness_matches_hand_analysis(found) -> None:  # noqa: ANN001
    distinct = {
        slot: {c.token for c in lines} for slot, lines in zip(SLOTS, found.catalog.distinct, strict=True)
    }
    # x - l is a sound upper line for negative and unstable ReLUs, never a lower line for unstable ones
    assert (
        "x-l" in distinct[(Stability.NEGATIVE, "upper")] and "x-l" in distinct[(Stability.UNSTABLE, "upper")]
    )
    assert "x-l" not in distinct[(Stability.UNSTABLE, "lower")]
    assert distinct[(Stability.UNSTABLE, "lower")] == {"0", "x", "l", "λx"}
    # λx + u - λu is the chord λx - λl: merged, not counted twice
    assert distinct[(Stability.UNSTABLE, "upper")] == {"u", "x-l", "λx-λl"}
    duplicates = [r for r in found.rejected if r.kind == "duplicate"]
    assert any(r.token == "λx+u-λu" and r.case == "unstable" for r in duplicates)


def test_every_kept_result_is_sound_and_named_legally_and_stably(found) -> None:  # noqa: ANN001
    names = [r.name for r in found.results]
    assert len(set(names)) == len(names)
    for result in found.results:
        assert check_soundness(result.relaxation) is None, result.name
        assert re.match(NAME_PATTERN, result.generated_name), result.generated_name
        if result.family == "combination":
            labels = [(f"{c.lower}..{c.upper}", "") for c in result.cases]
            widened = f" + {result.transform.split('(')[0]}" if result.transform else ""
            assert result.generated_name == generated_name("combination", labels) + widened
    again = discover(build_registry(load_entry_points=False), families=["switch"], relations=False)

    def spec(r) -> tuple[object, ...]:  # noqa: ANN001 - lines, intermediate mode, transform and its values
        return (*r.relaxation.spec_key()[:5], tuple(sorted(r.relaxation.parameters.items())))

    by_spec = {spec(r): r.generated_name for r in found.results}
    for result in again.results:
        assert by_spec[spec(result)] == result.generated_name


def test_fast_flags_equal_derive(found) -> None:  # noqa: ANN001
    # results equal to a registered relaxation: derive() of that relaxation (the paper's flags, tested elsewhere)
    for result in (r for r in found.results if r.equivalent_to):
        props = derive(relaxlab.get_relaxation(result.equivalent_to[0]))
        assert (result.continuous, result.sensitive) == (props.continuous, props.sensitive), result.name
    # new switch and soft relaxations: derive() on the generated spec itself (widened ones: test_transforms.py)
    new = [
        r for r in found.results if not r.equivalent_to and r.family in ("switch", "soft") and not r.transform
    ]
    assert len(new) >= 8
    for result in new:
        props = derive(result.relaxation)
        assert (result.continuous, result.sensitive) == (props.continuous, props.sensitive), result.name


def test_dominated_ones_are_really_dominated(found) -> None:  # noqa: ANN001
    enum = found.enumeration
    # hand example: neg lower 'l' is looser than '0' everywhere with the same flags, so hBox with it is dominated
    catalog = found.catalog
    tokens = [[c.token for c in lines] for lines in catalog.distinct]
    target = ["l", "0", "0", "u", "x", "x"]
    index = [tokens[k].index(t) for k, t in enumerate(target)]
    row = next(i for i in range(enum.combos.shape[0]) if enum.combos[i].tolist() == index)
    assert bool(enum.dominated[row])
    hbox = next(
        i
        for i in range(enum.combos.shape[0])
        if enum.combos[i].tolist()
        == [tokens[k].index(t) for k, t in enumerate(["0", "0", "0", "u", "x", "x"])]
    )
    assert hbox in enum.dominators(row)
    # no kept combination is dominated by another one
    kept = (~enum.dominated).nonzero().flatten()
    assert not bool(enum.dominates[kept][:, kept].any())


def test_an_unsound_catalog_line_never_reaches_the_output(registry) -> None:  # noqa: ANN001
    bad = [
        CandidateLine("x+1", "lower", line(1.0, 1.0), "test"),
        CandidateLine("0.9u", "upper", line(0.0, 0.9 * U), "test"),
        CandidateLine("2x", "both", line(2.0, 0.0), "test"),
    ]
    found = discover(
        registry, candidates=[*registry.candidate_lines, *bad], families=["switch"], relations=False
    )
    bad_tokens = {c.token for c in found.catalog.lines if c.name in ("x+1", "0.9u")}
    assert bad_tokens == {"x+1", "0_9u"}  # '.' is structural in generated names, so it is replaced
    for token in bad_tokens:
        rejected = [r for r in found.rejected if r.token == token]
        assert {r.case for r in rejected} == {"negative", "unstable", "positive"}
        assert all(r.kind == "unsound" for r in rejected)
    # 2x is sound only as a negative lower line (2x <= 0 for x <= 0) and a positive upper one (2x >= x)
    for (stability, side), lines in zip(SLOTS, found.catalog.distinct, strict=True):
        has = any(c.token == "2x" for c in lines)
        assert has == ((stability, side) in ((Stability.NEGATIVE, "lower"), (Stability.POSITIVE, "upper")))
    for result in found.results:
        tokens = {t for c in result.cases for t in (c.lower, c.upper)}
        assert not tokens & bad_tokens
        assert check_soundness(result.relaxation) is None


def test_rejections_carry_a_real_witness(found) -> None:  # noqa: ANN001
    for rejection in (r for r in found.rejected if r.kind == "unsound"):
        values = dict(re.findall(r"(\bl|\bu|\bx)=(-?[0-9.e+-]+)", rejection.reason))
        lb, ub, x = (float(values[k]) for k in ("l", "u", "x"))
        entry = found.catalog.by_token(rejection.token, rejection.side)
        env = {"l": torch.tensor([lb], dtype=torch.float64), "u": torch.tensor([ub], dtype=torch.float64)}
        slope, offset = entry.line.evaluate(env)
        value, relu = float(torch.as_tensor(slope * x + offset)), max(x, 0.0)
        assert lb <= x <= ub
        assert value > relu if rejection.side == "lower" else value < relu, str(rejection)


def test_unknown_family_and_empty_slot_fail_with_a_clear_message(registry) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="unknown discovery family 'sofft'.*switch, soft, interval"):
        discover(registry, families=["sofft"])
    with pytest.raises(ValueError, match="no sound candidate line for .*unstable upper"):
        discover(registry, candidates=[CandidateLine("0", "both", line(0.0, 0.0), "test")], relations=False)


def test_registered_results_are_usable_by_name(found, tmp_path: Path) -> None:  # noqa: ANN001
    from relaxlab.discovery.emit import new_results, register_results
    from relaxlab.properties.soundness import check_soundness

    new = new_results(found)
    assert new and all(not r.equivalent_to for r in new)
    try:
        get_registry(
            refresh=True
        )  # without what earlier tests registered in this process (relaxlab screen does)
        names = register_results(new[:3], get_registry(), check_soundness)
        assert names == [r.name for r in new[:3]]
        for result in new[:3]:
            assert relaxlab.get_relaxation(result.name).spec_key() == result.relaxation.spec_key()
        assert register_results(new[:3], get_registry(), check_soundness) == []  # idempotent
    finally:
        get_registry(refresh=True)
