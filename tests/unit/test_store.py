"""The SQLite results store and the paper-style report."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaxlab.evaluation.report import render_csv, render_markdown
from relaxlab.store import Store, StoreError, open_store


def test_runs_and_metrics_round_trip(tmp_path: Path) -> None:
    with open_store(tmp_path / "r.sqlite") as store:
        run = store.create_run("train", {"name": "a", "relaxation": "IBP"})
        store.log_metric(run, 0, "loss", 2.5)
        store.log_metrics(run, 1, {"loss": 1.5, "accuracy": 0.75})
        store.finish_run(run)
    with open_store(tmp_path / "r.sqlite") as store:  # persisted
        (record,) = store.runs(kind="train")
        assert (record.name, record.status, record.config["relaxation"]) == ("a", "done", "IBP")
        assert "python" in record.environment and "git_commit" in record.environment
        assert store.metrics(run, "loss") == [(0, 2.5), (1, 1.5)]
        assert store.final_metrics(run) == {"loss": 1.5, "accuracy": 0.75}
        assert store.query("SELECT COUNT(*) FROM metrics") == [(3,)]
        store.delete_metrics_from(run, 1)
        assert store.metrics(run, "loss") == [(0, 2.5)]


def test_bad_ids_files_and_statements(tmp_path: Path) -> None:
    with open_store(tmp_path / "r.sqlite") as store:
        with pytest.raises(StoreError, match="no run with id 42"):
            store.log_metric(42, 0, "x", 1.0)
        with pytest.raises(StoreError, match="SELECT"):
            store.query("DELETE FROM runs")
    (tmp_path / "junk.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a relaxlab results database"):
        Store(tmp_path / "junk.sqlite")


def _certify(store: Store, method: str, certifier: str, cr: float, ckpt: str, eps: float = 0.3) -> None:
    run = store.create_run(
        "certify",
        {
            "checkpoint": ckpt,
            "certifier": certifier,
            "eps": eps,
            "dataset": "mnist",
            "architecture": "CONV",
            "method_label": method,
            "n": 100,
        },
    )
    store.log_metrics(run, 0, {"accuracy": 0.9, "pgd": 0.8, "certified": cr})
    store.finish_run(run)


def test_report_tables(tmp_path: Path) -> None:
    with open_store(tmp_path / "r.sqlite") as store:
        _certify(store, "IBP", "IBP", 0.5, "a")
        _certify(store, "IBP", "CROWN", 0.1, "a")
        _certify(store, "CROWN", "CROWN", 0.25, "b")
        _certify(store, "CROWN", "IBP", 0.0, "b")
        _certify(store, "CROWN-IBP", "IBP", 0.3, "c")
        _certify(store, "CROWN-IBP", "CROWN-IBP (R)", 0.4, "c")
        tightness = store.create_run("tightness", {"checkpoint": "nat", "n": 200})
        store.log_metrics(tightness, 0, {"cr_auc/CROWN": 3.0, "cr_auc/DeepZ": 2.5, "cr_auc/IBP": 1.0,
                                         "cr_auc/hBox": 1.5, "cr_auc/CROWN-IBP (R)": 2.0})
        store.finish_run(tightness)
        text = render_markdown(store)
        csv = render_csv(store)
    assert "| IBP | 100 | 90.0 | 80.0 | 50.0 |" in text  # own relaxation: 50, not CROWN's 10; n images
    assert "| CROWN | 100 | 90.0 | 80.0 | 25.0 |" in text
    assert "| CROWN-IBP | 100 | 90.0 | 80.0 | 40.0 |" in text  # the better of its two relaxations
    assert text.index("| IBP |") < text.index("| CROWN |") < text.index("| CROWN-IBP |")  # paper order
    assert "Table 10 layout" in text and "| IBP | 50.0 | 10.0 |" in text and "n = 100 test images (each cell picked" in text
    section = text[text.index("## Tightness"):]
    order = [line.split(" | ")[3] for line in section.splitlines() if line.startswith(f"| {tightness} |")]
    assert order == ["IBP", "hBox", "DeepZ", "CROWN", "CROWN-IBP (R)"]  # the paper's order, not alphabetical
    assert f"| {tightness} | nat | 200 | IBP | 1.00 |" in section
    assert csv.splitlines()[0] == ("dataset,architecture,eps_test,method,n,accuracy,pgd,certified,certifier,"
                                   "network,source,run")
    assert "mnist,CONV,0.30,IBP,100,90.00,80.00,50.00,IBP,IBP,certify,1" in csv


def test_a_damaged_store_is_refused_by_report_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from relaxlab.cli import cli

    path = tmp_path / "results.sqlite"
    with open_store(path) as store:
        for i in range(200):
            run = store.create_run("train", {"i": i, "pad": "x" * 500}, name=f"r{i}")
            store.finish_run(run)
    data = bytearray(path.read_bytes())
    page = 4096
    data[-page:] = bytes(page)  # the last page zeroed, as a torn write leaves it
    path.write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["report", "--store", str(path)])
    assert result.exit_code == 1
    assert "damaged" in result.output and "rebuild the records from the checkpoints" in result.output
    assert "Traceback" not in result.output
