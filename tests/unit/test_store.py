"""The SQLite results store (runs, metrics, claims, schema versions, transactions) and the paper-style report."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from relaxlab.evaluation.report import render_csv, render_markdown
from relaxlab.store import SCHEMA_VERSION, Store, StoreError, open_store


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
        store.log_metrics(
            tightness,
            0,
            {
                "cr_auc/CROWN": 3.0,
                "cr_auc/DeepZ": 2.5,
                "cr_auc/IBP": 1.0,
                "cr_auc/hBox": 1.5,
                "cr_auc/CROWN-IBP (R)": 2.0,
            },
        )
        store.finish_run(tightness)
        text = render_markdown(store)
        csv = render_csv(store)
    assert (
        "| IBP | kappa-mix | 100 | 90.0 | 80.0 | 50.0 |" in text
    )  # own relaxation: 50, not CROWN's 10; n images
    assert (
        "| CROWN | kappa-mix | 100 | 90.0 | 80.0 | 25.0 |" in text
    )  # records without an objective: the paper's
    assert "| CROWN-IBP | CROWN-IBP | 100 | 90.0 | 80.0 | 40.0 |" in text  # the better of its two relaxations
    assert text.index("| IBP |") < text.index("| CROWN |") < text.index("| CROWN-IBP |")  # paper order
    assert (
        "Table 10 layout" in text
        and "| IBP | 50.0 | 10.0 |" in text
        and "n = 100 test images (each cell picked" in text
    )
    section = text[text.index("## Tightness") :]
    order = [line.split(" | ")[3] for line in section.splitlines() if line.startswith(f"| {tightness} |")]
    assert order == ["IBP", "hBox", "DeepZ", "CROWN", "CROWN-IBP (R)"]  # the paper's order, not alphabetical
    assert f"| {tightness} | nat | 200 | IBP | 1.00 |" in section
    assert csv.splitlines()[0] == (
        "dataset,architecture,eps_test,method,objective,n,accuracy,pgd,certified,certifier,network,source,run"
    )
    assert "mnist,CONV,0.30,IBP,kappa-mix,100,90.00,80.00,50.00,IBP,IBP,certify,1" in csv


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


# --------------------------------------------------------------------------- reading never writes


def _snapshot(path: Path) -> tuple[bytes, int]:
    import sqlite3

    data = path.read_bytes()
    if not data:
        return data, -1
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return data, int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_report_reads_a_file_without_writing_into_it(tmp_path: Path) -> None:
    """``report`` opens read-only: a foreign SQLite, an empty file and an old store stay byte for byte as
    they were (no tables added, no user_version set, no store made of an empty file)."""
    import sqlite3

    from click.testing import CliRunner

    from relaxlab.cli import cli

    foreign = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.commit()
    conn.close()
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    old = tmp_path / "old.sqlite"
    conn = sqlite3.connect(old)
    conn.executescript(
        "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, name TEXT NOT NULL, "
        "created REAL NOT NULL, finished REAL, status TEXT NOT NULL, config TEXT NOT NULL, environment TEXT NOT NULL);"
        "CREATE TABLE metrics (run_id INTEGER NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL, value REAL NOT NULL);"
        "INSERT INTO runs VALUES (1, 'certify', 'c', 0.0, 1.0, 'done', '{\"certifier\": \"IBP\", \"eps\": 0.1, "
        '"dataset": "mnist", "architecture": "CONV", "method_label": "IBP", "n": 10}\', \'{}\');'
        "INSERT INTO metrics VALUES (1, 0, 'accuracy', 0.9), (1, 0, 'certified', 0.5);"
    )
    conn.close()
    runner = CliRunner()
    for path, message in [(foreign, "not a relaxlab results database"), (empty, "is empty")]:
        before = _snapshot(path)
        result = runner.invoke(cli, ["report", "--store", str(path)])
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
        assert _snapshot(path) == before
    before = _snapshot(old)
    result = runner.invoke(cli, ["report", "--store", str(old)])
    assert result.exit_code == 0, result.output
    assert "| IBP | kappa-mix | 10 | 90.0 |" in result.output
    assert _snapshot(old) == before  # user_version still 0, no columns or tables added
    with Store(old, readonly=True) as store:
        (run,) = store.runs()
        assert (run.key, run.error) == (None, None) and store.runs(key="k") == []
        with pytest.raises(StoreError, match="read-only"):
            store.create_run("train", {})
    assert _snapshot(old) == before
    with pytest.raises(StoreError, match="no results database"):
        Store(tmp_path / "missing.sqlite", readonly=True)
    assert not (tmp_path / "missing.sqlite").exists()


# --------------------------------------------------------------------------- resuming never rewrites another run


def _tiny(seed: int) -> str:
    """A train config of two epochs of one batch (FC-S), seeded ``seed``."""
    from tests.e2e.test_bad_values import TINY

    return TINY.replace("epochs = 1", "epochs = 2\nrampup_epochs = 1") + f"seed = {seed}\n"


def test_resume_into_a_store_where_the_run_id_is_another_run_is_refused(tmp_path: Path) -> None:
    """A checkpoint remembers its run id; in another store that id may be another run, which must be left
    exactly as it was (the resume refused, naming the difference and the fix)."""
    from click.testing import CliRunner

    from relaxlab.cli import cli

    runner = CliRunner()
    mine, other = tmp_path / "mine.toml", tmp_path / "other.toml"
    mine.write_text(_tiny(0))
    other.write_text(_tiny(7))
    interrupted = runner.invoke(
        cli,
        [
            "train",
            str(mine),
            "--out",
            str(tmp_path / "a" / "tiny"),
            "-q",
            "--store",
            str(tmp_path / "a.sqlite"),
            "--stop-after",
            "1",
        ],
    )
    assert interrupted.exit_code == 0, interrupted.output
    done = runner.invoke(
        cli,
        [
            "train",
            str(other),
            "--out",
            str(tmp_path / "b" / "tiny"),
            "-q",
            "--store",
            str(tmp_path / "b.sqlite"),
        ],
    )
    assert done.exit_code == 0, done.output
    with Store(tmp_path / "b.sqlite") as store:
        (victim,) = store.runs(kind="train")
        before = (victim, store.metrics(victim.id))
    assert victim.id == 1 and victim.config["seed"] == 7
    resumed = runner.invoke(
        cli,
        [
            "train",
            str(mine),
            "--out",
            str(tmp_path / "a" / "tiny"),
            "-q",
            "--resume",
            "--store",
            str(tmp_path / "b.sqlite"),
        ],
    )
    assert resumed.exit_code == 2, resumed.output
    assert "run 1" in resumed.output and "seed" in resumed.output and "--store" in resumed.output
    with Store(tmp_path / "b.sqlite") as store:
        (after,) = store.runs(kind="train")
        assert (after, store.metrics(after.id)) == before
        assert after.status == "done"
    # the store it was trained with resumes it
    resumed = runner.invoke(
        cli,
        [
            "train",
            str(mine),
            "--out",
            str(tmp_path / "a" / "tiny"),
            "-q",
            "--resume",
            "--store",
            str(tmp_path / "a.sqlite"),
        ],
    )
    assert resumed.exit_code == 0, resumed.output


# --------------------------------------------------------------------------- claims


def test_a_claim_holds_while_its_process_lives_and_passes_on_when_it_is_gone(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys
    import time

    from relaxlab.store import CLAIM_TIMEOUT, Claim, keep_claims_alive, process_owner

    me = process_owner()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # the child's owner text, as the child itself would write it
        started = (
            Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[19]
            if Path(f"/proc/{child.pid}/stat").exists()
            else ""
        )
        other = f"{socket.gethostname()}/{child.pid}/{started}"
        with Store(tmp_path / "r.sqlite") as store:
            assert store.claim("k", other) is None
            held = store.claim("k", me)
            assert held is not None and held.owner == other  # a live process keeps it
            assert store.claim("k", other) is None  # its own claim again
    finally:
        child.kill()
        child.wait()
    with Store(tmp_path / "r.sqlite") as store:
        assert store.claim("k", me) is None  # the process is gone: taken over at once
        (claim,) = store.claims()
        assert claim.owner == me
        # a pid that is reused by a process started later is another owner
        assert not Claim(key="k", owner=f"{socket.gethostname()}/{child.pid}/1", claimed=0, heartbeat=0).alive
    now = time.time()
    far = "elsewhere.example/123/456"
    assert Claim(key="k", owner=far, claimed=now, heartbeat=now - CLAIM_TIMEOUT / 2).alive
    assert not Claim(key="k", owner=far, claimed=now, heartbeat=now - 2 * CLAIM_TIMEOUT).alive
    # the heartbeat renews this process's claims and the end of the block releases them
    with Store(tmp_path / "r.sqlite") as store:
        store.claim("j", me)
        first = {c.key: c.heartbeat for c in store.claims()}
        with keep_claims_alive(tmp_path / "r.sqlite", me, every=0.05):
            deadline = time.time() + 30
            while time.time() < deadline and all(c.heartbeat == first[c.key] for c in store.claims()):
                time.sleep(0.05)
            assert all(c.heartbeat > first[c.key] for c in store.claims())
        assert store.claims() == []


def test_an_outcome_is_recorded_once_however_often_it_arrives(tmp_path: Path) -> None:
    from relaxlab.experiments.runs import RunOutcome
    from relaxlab.experiments.sweep import parse_sweep, record_outcome

    (run,) = parse_sweep({"base": {"architecture": "FC-S", "epochs": 1}}, name="s").runs
    outcome = RunOutcome(key=run.key, status="done", history=[{"step": 0, "loss": 1.0}], final={"loss": 1.0})
    with Store(tmp_path / "r.sqlite") as store:
        record_outcome(store, run, RunOutcome.failure(run.key, "boom"))
        first = record_outcome(store, run, outcome)
        assert record_outcome(store, run, outcome) == first  # a second process finishing the same run
        assert [(r.kind, r.status) for r in store.runs()] == [("train", "done")]


# --------------------------------------------------------------------------- schema versions and transactions

OLD_SCHEMA = """
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, name TEXT NOT NULL,
    created REAL NOT NULL, finished REAL, status TEXT NOT NULL, config TEXT NOT NULL, environment TEXT NOT NULL);
CREATE TABLE metrics (run_id INTEGER NOT NULL REFERENCES runs(id), step INTEGER NOT NULL, name TEXT NOT NULL,
    value REAL NOT NULL);
INSERT INTO runs VALUES (1, 'train', 'old', 0.0, 1.0, 'done', '{"relaxation": "IBP"}', '{}');
INSERT INTO metrics VALUES (1, 0, 'loss', 2.5);
"""


def test_a_store_from_before_versioning_migrates_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.sqlite")
    conn.executescript(OLD_SCHEMA)
    conn.close()
    with Store(tmp_path / "old.sqlite") as store:
        (old,) = store.runs()
        assert (old.name, old.key, old.error, store.metrics(1, "loss")) == ("old", None, None, [(0, 2.5)])
        new = store.create_run("train", {}, key="k")
        store.finish_run(new, "failed", error="boom")
        assert store.runs(key="k")[0].error == "boom"
    conn = sqlite3.connect(tmp_path / "old.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this relaxlab understands"):
        Store(tmp_path / "old.sqlite")


def test_transaction_is_all_or_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / "r.sqlite") as store:
        with pytest.raises(RuntimeError), store.transaction():
            run = store.create_run("train", {}, key="k")
            store.log_metric(run, 0, "x", 1.0)
            raise RuntimeError
        assert store.runs() == [] and store.query("SELECT COUNT(*) FROM metrics") == [(0,)]
