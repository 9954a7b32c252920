"""Table 10 on the released networks: the record, resuming, refusals, and the recorded full run's prefix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from relaxlab.api import get_relaxation
from relaxlab.evaluation.certify import certified_mask, certify
from relaxlab.experiments import table10
from relaxlab.experiments.released import load_released, released_network
from relaxlab.experiments.table10 import (
    DATA_BLOCK,
    PAPER_ACCURACY,
    PAPER_TABLE10,
    RecordError,
    data_hashes,
    load_record,
    pack_bits,
    paper_value,
    run_table10,
    table10_rows,
    unpack_bits,
)

ROOT = Path(__file__).resolve().parents[3]
RECORD = ROOT / "tests" / "data" / "table10.json"

#: Cells certified again in CI on the first 300 test images against the recorded full run: the
#: interval path and CROWN-IBP (R) on both architectures, and two backsubstitution cells (DeepZ on
#: the DeepZ-trained FC; the paper's bold cell: the DeepZ-trained CONV certified better by CROWN
#: than by DeepZ).
PREFIX_CELLS = [
    ("mnist_FC_box", "IBP"),
    ("mnist_CONV_box", "IBP"),
    ("mnist_FC_crownibp1to1", "CROWN-IBP (R)"),
    ("mnist_CONV_crownibp1to1", "CROWN-IBP (R)"),
    ("mnist_FC_zono", "DeepZ"),
    ("mnist_CONV_zono", "CROWN"),
    ("mnist_FC_zono", "hBox-Hybrid"),
]
PREFIX = 300


@given(st.lists(st.booleans(), max_size=700))
def test_bits_pack_and_unpack_to_themselves(bits: list[bool]) -> None:
    text = pack_bits(np.array(bits, dtype=bool))
    assert unpack_bits(text, len(bits)).tolist() == bits
    for n in (0, len(bits) // 2):
        assert unpack_bits(text, n).tolist() == bits[:n]
    with pytest.raises(RecordError, match="bits"):
        unpack_bits(text, len(bits) + 8)


def test_data_hashes_cover_each_full_block_alone(embedded_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = embedded_test[0][:250], embedded_test[1][:250]
    hashes = data_hashes(x, y)
    assert len(hashes) == 250 // DATA_BLOCK == 2
    changed = x.clone()
    changed[DATA_BLOCK + 3, 0, 14, 14] = 1.0 - changed[DATA_BLOCK + 3, 0, 14, 14]
    assert (
        data_hashes(changed, y) == [hashes[0], data_hashes(changed, y)[1]]
        and data_hashes(changed, y) != hashes
    )
    relabelled = y.clone()
    relabelled[0] = (relabelled[0] + 1) % 10
    assert data_hashes(x, relabelled)[1:] == hashes[1:] and data_hashes(x, relabelled)[0] != hashes[0]


def test_a_run_certifies_what_certify_does_and_resumes_where_it_stopped(
    released_dir: Path,
    embedded_test: tuple[torch.Tensor, torch.Tensor],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = embedded_test[0][:200], embedded_test[1][:200]
    relaxations = [get_relaxation("IBP"), get_relaxation("CROWN-IBP (R)")]
    networks = [released_network("mnist_FC_box"), released_network("mnist_FC_hbox")]
    whole = run_table10(
        tmp_path / "whole.json",
        x,
        y,
        relaxations,
        networks=networks,
        networks_dir=released_dir,
        batch_size=50,
    )
    for network in networks:
        _, model = load_released(released_dir / network.file_name)
        results = certify(model, x, y, 0.3, relaxations, pgd=False)
        assert whole.accuracy(network.name, 200) == pytest.approx(100 * results[0].accuracy)
        for result in results:
            assert whole.certified_percent(network.name, result.relaxation, 200) == pytest.approx(
                100 * result.certified
            )

    # Interrupted after three batches (saving after every batch), then run again to the end.
    monkeypatch.setattr(table10, "SAVE_EVERY", 0.0)
    batches = []

    def interrupt(count: int) -> None:
        batches.append(count)
        if len(batches) == 3:
            raise KeyboardInterrupt

    path = tmp_path / "resumed.json"
    with pytest.raises(KeyboardInterrupt):
        run_table10(
            path,
            x,
            y,
            relaxations,
            networks=networks,
            networks_dir=released_dir,
            batch_size=50,
            progress=interrupt,
        )
    stopped = load_record(path)
    assert stopped.cell("mnist_FC_box", "IBP").done == 150
    assert stopped.cell("mnist_FC_box", "CROWN-IBP (R)") is None
    batches.clear()
    resumed = run_table10(
        path,
        x,
        y,
        relaxations,
        networks=networks,
        networks_dir=released_dir,
        batch_size=50,
        progress=batches.append,
    )
    assert sum(batches) == 4 * 200 - 150
    for key, cell in whole.cells.items():
        assert resumed.cells[key].certified().tolist() == cell.certified().tolist()
        assert resumed.cells[key].done == 200
    # Longer than what is recorded: only the new images are certified, the recorded ones kept.
    batches.clear()
    longer = run_table10(
        path,
        embedded_test[0][:300],
        embedded_test[1][:300],
        relaxations,
        networks=networks[:1],
        networks_dir=released_dir,
        batch_size=50,
        progress=batches.append,
    )
    assert sum(batches) == 2 * 100
    assert (
        longer.cell("mnist_FC_box", "IBP").certified(200).tolist()
        == whole.cell("mnist_FC_box", "IBP").certified().tolist()
    )
    assert len(longer.data) == 3


def _fc_box_ibp(
    path: Path, x: torch.Tensor, y: torch.Tensor, released_dir: Path, **options: object
) -> table10.Table10Record:
    """The one cell FC trained with IBP × IBP (fast) into ``path``."""
    return run_table10(
        path,
        x,
        y,
        [get_relaxation("IBP")],
        networks=[released_network("mnist_FC_box")],
        networks_dir=released_dir,
        **options,
    )  # type: ignore[arg-type]


def test_a_record_is_continued_only_on_its_own_images_and_radius(
    released_dir: Path, embedded_test: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    x, y = embedded_test[0][:100], embedded_test[1][:100]
    path = tmp_path / "record.json"
    _fc_box_ibp(path, x, y, released_dir)
    with pytest.raises(RecordError, match=r"recorded on other test images \(images 0-99 differ\)"):
        _fc_box_ibp(path, embedded_test[0][100:200], embedded_test[1][100:200], released_dir)
    with pytest.raises(RecordError, match="holds mnist at eps=0.3, not mnist at eps=0.1: use another --out"):
        _fc_box_ibp(path, x, y, released_dir, eps=0.1)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"cells": []}))
    with pytest.raises(RecordError, match="not a relaxlab Table 10 record"):
        load_record(other)
    other.write_text("{")
    with pytest.raises(RecordError, match="not JSON"):
        load_record(other)


def test_a_cell_begun_with_another_definition_starts_again(
    released_dir: Path, embedded_test: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    x, y = embedded_test[0][:100], embedded_test[1][:100]
    path = tmp_path / "record.json"
    _fc_box_ibp(path, x[:50], y[:50], released_dir)
    content = json.loads(path.read_text())
    content["cells"][0]["spec_sha256"] = "0" * 64
    content["cells"][0]["bits"] = pack_bits(np.zeros(50, dtype=bool))
    path.write_text(json.dumps(content))
    lines: list[str] = []
    record = _fc_box_ibp(path, x, y, released_dir, log=lines.append)
    assert "begun with another definition of IBP (its spec hash differs): started again" in lines[0]
    fresh = _fc_box_ibp(tmp_path / "fresh.json", x, y, released_dir)
    assert (
        record.cell("mnist_FC_box", "IBP").certified().tolist()
        == fresh.cell("mnist_FC_box", "IBP").certified().tolist()
    )


def test_the_matrix_shows_ours_beside_the_papers() -> None:
    record = load_record(RECORD)
    headers, rows = table10_rows(record, ["IBP", "CROWN-IBP (R)", "CROWN-0"], 10_000)
    assert headers == ["network", "trained with", "Acc", "IBP", "CROWN-IBP (R)", "CROWN-0"]
    assert rows[0][:2] == ["FC", "IBP"] and rows[0][3].endswith(" (74)") and rows[0][5] == "—"
    assert rows[8][:2] == ["CONV", "DeepZ"] and rows[8][2].endswith(" (92.5)")
    assert PAPER_TABLE10["mnist_CONV_zono"] == {
        "IBP": 0.4,
        "hBox": 25.8,
        "DeepZ": 69.8,
        "CROWN": 74.0,
        "CROWN-IBP (R)": 60.9,
    }
    assert (
        paper_value("mnist_CONV_zono", "hBox-Hybrid") == 25.8
        and paper_value("mnist_CONV_zono", "CROWN-0") is None
    )


#: Full cells that differ from the paper beyond its rounding: (network, relaxation) -> the percentage
#: the record holds. Found, documented in docs/results.md, not explained.
KNOWN_DIFFERENCES = {("mnist_FC_zono", "hBox-Hybrid"): 0.31}  # the paper: 0.1 (31 images against 10)


def test_the_recorded_full_run_matches_the_paper_where_it_ran() -> None:
    """Every cell of the committed record run on all 10,000 images is the paper's number to 0.05
    points (the paper reports one decimal), except relaxlab's hBox (the backsubstitution of the
    paper's text; the paper's numbers are its code's forward hybrid zonotope, hBox-Hybrid) and the
    documented :data:`KNOWN_DIFFERENCES`, which must hold what they say; so is every network's
    clean accuracy (Table 11)."""
    record = load_record(RECORD)
    full = [cell for cell in record.cells.values() if cell.done == 10_000]
    assert {cell.relaxation for cell in full} >= {"IBP", "CROWN-IBP (R)"} and len(full) >= 24
    for cell in full:
        paper = paper_value(cell.network, cell.relaxation)
        if cell.relaxation == "hBox" or paper is None:
            continue
        ours = record.certified_percent(cell.network, cell.relaxation, 10_000)
        known = KNOWN_DIFFERENCES.get((cell.network, cell.relaxation))
        if known is not None:
            assert abs(ours - known) <= 1e-9 and abs(ours - paper) > 0.05, (cell.network, cell.relaxation)
            continue
        assert abs(ours - paper) <= 0.05 + 1e-9, (cell.network, cell.relaxation)
    for network, accuracy in PAPER_ACCURACY.items():  # Table 11's Acc, recorded with the cells
        assert abs(record.accuracy(network, 10_000) - accuracy) <= 0.05 + 1e-9, network


@pytest.mark.parametrize(("network", "relaxation"), PREFIX_CELLS, ids=[f"{n}-{r}" for n, r in PREFIX_CELLS])
def test_the_first_test_images_certify_as_the_recorded_full_run(
    network: str, relaxation: str, released_dir: Path, embedded_test: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Per image, the first 300 embedded test images certify as the recorded run on full MNIST did."""
    record = load_record(RECORD)
    x, y = embedded_test[0][:PREFIX], embedded_test[1][:PREFIX]
    assert record.data[: PREFIX // DATA_BLOCK] == data_hashes(x, y)  # the embedded images are MNIST's first
    cell = record.cell(network, relaxation)
    assert cell is not None and cell.done >= PREFIX
    _, model = load_released(released_dir / f"{network}.pt")
    mask = certified_mask(model.double(), x.double(), y, record.eps, get_relaxation(relaxation))
    assert mask.numpy().tolist() == cell.certified(PREFIX).tolist()


def test_parameterised_relaxations_are_columns_of_their_own(
    released_dir: Path, embedded_test: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    x, y = embedded_test[0][:100], embedded_test[1][:100]
    loose = [get_relaxation("LooseIBP-C"), get_relaxation("LooseIBP-C(omega=0.5)")]
    record = run_table10(
        tmp_path / "r.json",
        x,
        y,
        loose,
        networks=[released_network("mnist_FC_box")],
        networks_dir=released_dir,
    )
    assert sorted(record.cells) == [("mnist_FC_box", "LooseIBP-C"), ("mnist_FC_box", "LooseIBP-C(omega=0.5)")]
    assert (
        record.cells[("mnist_FC_box", "LooseIBP-C")].spec_sha256
        != record.cells[("mnist_FC_box", "LooseIBP-C(omega=0.5)")].spec_sha256
    )


def test_a_run_on_a_device_records_what_the_cpu_run_records(
    released_dir: Path, embedded_test: tuple[torch.Tensor, torch.Tensor], tmp_path: Path, device: torch.device
) -> None:
    """``device=`` moves the bounds, not the record: the bits equal a CPU run's (CUDA where present)."""
    x, y = embedded_test[0][:60], embedded_test[1][:60]
    relaxations = [get_relaxation("IBP"), get_relaxation("CROWN-IBP (R)")]
    networks = [released_network("mnist_CONV_crownibp1to1")]
    on_cpu = run_table10(
        tmp_path / "cpu.json", x, y, relaxations, networks=networks, networks_dir=released_dir
    )
    there = run_table10(
        tmp_path / "there.json",
        x,
        y,
        relaxations,
        networks=networks,
        networks_dir=released_dir,
        device=device,
    )
    assert there.correct == on_cpu.correct
    for relaxation in relaxations:
        name = networks[0].name
        assert there.cell(name, relaxation.label).bits == on_cpu.cell(name, relaxation.label).bits
