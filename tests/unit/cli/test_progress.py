"""Progress of long commands: the reporter itself, and every long command under CliRunner (not a TTY).

Each command runs with tiny arguments and ``RELAXLAB_PROGRESS_EVERY=0`` (a status line after every
update); the status lines must reach stderr, stdout must stay clean, and ``--quiet`` silences them.
"""

from __future__ import annotations

import functools
import io
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from relaxlab.cli import cli
from relaxlab.cli.progress import EVERY_VARIABLE, Phases, Progress, duration
from tests.e2e.test_training_e2e import TINY_TOML  # FC-S, IBP, 2 epochs of 3 steps

#: ``desc: done/total (p%), elapsed[, ETA ...]``
STATUS = re.compile(r"^(?P<desc>[^\n]+): (?P<done>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\), \d+ (s|min)")


def _status(text: str, desc: str) -> list[re.Match[str]]:
    return [m for m in map(STATUS.match, text.splitlines()) if m and m["desc"] == desc]


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()


def _invoke(args: list[str], **env: str) -> Result:
    return _runner().invoke(cli, args, env={EVERY_VARIABLE: "0", **env}, catch_exceptions=False)


# -- the reporter ------------------------------------------------------------------------------------


def test_status_lines_count_up_to_the_total_and_end_with_100_percent() -> None:
    stream = io.StringIO()
    with Progress("work", 4, stream=stream, tty=False, every=0) as progress:
        for _ in range(4):
            progress.update()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("work: 1/4 (25%), 0 s, ETA ")
    assert lines[-1] == "work: 4/4 (100%), 0 s"
    assert len(lines) == 4  # the last update was shown already: no duplicate closing line


def test_status_lines_are_rate_limited_to_every_tenth_when_the_interval_is_long() -> None:
    stream = io.StringIO()
    with Progress("work", 1000, stream=stream, tty=False, every=3600, first=0) as progress:
        for _ in range(1000):
            progress.update()
    done = [int(m["done"]) for m in _status(stream.getvalue(), "work")]
    assert done == [100 * k for k in range(1, 11)]


def test_quiet_prints_nothing_and_a_failure_gets_no_closing_line() -> None:
    stream = io.StringIO()
    with Progress("work", 3, stream=stream, tty=False, quiet=True, every=0) as progress:
        progress.update(3)
        progress.write("a note")
    assert stream.getvalue() == ""
    with (
        pytest.raises(KeyError),
        Progress("work", 3, stream=stream, tty=False, every=3600, first=0) as progress,
    ):
        progress.update(1)  # 1/3 crosses a tenth: one line
        raise KeyError
    assert len(stream.getvalue().splitlines()) == 1  # 1/3 crossed a tenth; no closing line after the error


def test_a_terminal_gets_a_tqdm_bar_with_an_eta() -> None:
    stream = io.StringIO()
    with Progress("work", 10, stream=stream, tty=True) as progress:
        progress.update(5)
        progress.write("between")
    text = stream.getvalue()
    assert "work:" in text and "5/10" in text and "<" in text  # tqdm's "elapsed<remaining"
    assert "between" in text


def test_unknown_totals_and_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    with Progress("scan", None, stream=stream, tty=False, every=0, unit="file") as progress:
        progress.update(2)
    assert stream.getvalue().splitlines()[-1] == "scan: 2 file done, 0 s"
    monkeypatch.setenv(EVERY_VARIABLE, "0")  # a line after every update, however fast the work
    stream = io.StringIO()
    with Phases(prefix="x: ", stream=stream) as phases:
        phases.start("a", 1)(1)
        phases.start("b", 2)(2)
    descs = [line.split(":")[1].strip() for line in stream.getvalue().splitlines()]
    assert descs[0] == "a" and descs[-1] == "b"


def test_work_faster_than_the_first_line_prints_nothing() -> None:
    """Ten quick phases (discover's) print no "0 s, ETA 0 s" lines: under FIRST_LINE_AFTER seconds, nothing."""
    stream = io.StringIO()
    with Phases(prefix="discover: ", stream=stream) as phases:
        for name in "abcdefghij":
            step = phases.start(name, 10)
            for _ in range(10):
                step(1)
    assert stream.getvalue() == ""


def test_fractions_of_a_unit_count_and_read_as_decimals() -> None:
    stream = io.StringIO()
    with Progress("sweep: runs", 2, stream=stream, tty=False, every=0) as progress:
        progress.update(0.25)
        progress.update(0.75)
    assert stream.getvalue().splitlines()[:2] == [
        "sweep: runs: 0.2/2 (12%), 0 s, ETA 0 s",
        "sweep: runs: 1/2 (50%), 0 s, ETA 0 s",
    ]


def test_durations_read_as_words() -> None:
    assert [duration(s) for s in (0.4, 12, 282, 3900)] == ["0 s", "12 s", "4 min 42 s", "1 h 05 min"]


# -- every long command, not on a terminal ------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained FC-S on mnist-mini (the train command's own output)."""
    root = tmp_path_factory.mktemp("progress")
    (root / "c.toml").write_text(TINY_TOML)
    result = _invoke(["train", str(root / "c.toml"), "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    return root / "run" / "checkpoint.pt"


def test_train_reports_every_step_and_quiet_silences_it(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(TINY_TOML)
    loud = _invoke(["train", str(tmp_path / "c.toml"), "--out", str(tmp_path / "a")])
    assert loud.exit_code == 0, loud.stderr
    steps = _status(loud.stderr, "train cli-ibp")
    assert [int(m["done"]) for m in steps] == list(range(1, 7)) and steps[-1]["total"] == "6"
    assert _status(loud.stderr, "train cli-ibp final certification")[-1]["pct"] == "100"
    assert "epoch 1/2" in loud.stderr and "epoch 2/2" in loud.stderr  # the per-epoch lines stay
    assert "train cli-ibp:" not in loud.stdout
    quiet = _invoke(["train", str(tmp_path / "c.toml"), "--out", str(tmp_path / "b"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_certify_reports_images(checkpoint: Path) -> None:
    args = ["certify", str(checkpoint), "--n", "20", "--batch-size", "5", "--no-pgd"]
    loud = _invoke(args)
    assert loud.exit_code == 0, loud.stderr
    assert [int(m["done"]) for m in _status(loud.stderr, "certify")] == [5, 10, 15, 20]
    assert _invoke([*args, "--quiet"]).stderr == ""


def test_tightness_reports_radii(checkpoint: Path, tmp_path: Path) -> None:
    args = [
        "tightness",
        str(checkpoint),
        "-r",
        "IBP,CROWN",
        "--points",
        "3",
        "--n",
        "10",
        "--out",
        str(tmp_path),
    ]
    loud = _invoke(args)
    assert loud.exit_code == 0, loud.stderr
    lines = _status(loud.stderr, "tightness")
    assert lines[-1]["done"] == lines[-1]["total"] == "6"
    assert _invoke([*args, "--quiet"]).stderr == ""


def test_landscape_reports_curves(checkpoint: Path, tmp_path: Path) -> None:
    args = [
        "landscape",
        str(checkpoint),
        "-r",
        "IBP,hBox",
        "--eps",
        "0.05",
        "--points",
        "5",
        "--plot",
        str(tmp_path / "l.png"),
    ]
    loud = _invoke(args)
    assert loud.exit_code == 0, loud.stderr
    assert [m["done"] for m in _status(loud.stderr, "landscape")] == ["1", "2"]
    assert _invoke([*args, "--quiet"]).stderr == ""


def test_check_reports_relaxations() -> None:
    loud = _invoke(["check", "-r", "IBP", "-r", "hBox"])
    assert loud.exit_code == 0, loud.stderr
    assert [m["done"] for m in _status(loud.stderr, "check")] == ["1", "2"]
    assert "check:" not in loud.stdout
    assert _invoke(["check", "-r", "IBP", "--quiet"]).stderr == ""


def test_discover_reports_results() -> None:
    loud = _invoke(["discover", "--family", "none", "--no-relations"])
    assert loud.exit_code == 0, loud.stderr
    lines = _status(loud.stderr, "discover: results")
    assert lines and lines[-1]["pct"] == "100"
    assert _invoke(["discover", "--family", "none", "--no-relations", "--quiet"]).stderr == ""


def test_paradox_reports_each_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import relaxlab.experiments.paradox as paradox

    tiny = {"train_subset": 40, "test_subset": 10, "max_batches": 1, "batch_size": 20}
    monkeypatch.setattr(
        paradox,
        "run_paradox",
        functools.partial(paradox.run_paradox, tightness_points=2, tightness_n=10, overrides=tiny),
    )
    loud = _invoke(["paradox", "--quick", "--out", str(tmp_path / "a")])
    assert loud.exit_code == 0, loud.stderr
    descs = {m["desc"] for m in map(STATUS.match, loud.stderr.splitlines()) if m}
    assert {
        "paradox: paradox-ibp",
        "paradox: paradox-natural",
        "paradox: tightness",
        "paradox: certify IBP",
    } <= descs
    assert _invoke(["paradox", "--quick", "--out", str(tmp_path / "b"), "--quiet"]).stderr == ""


def test_sweep_reports_runs(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(
        'name = "s"\nseeds = [0]\n[base]\narchitecture = "FC-S"\nepochs = 1\nbatch_size = 50\nmax_batches = 1\n'
        "train_subset = 50\ntest_subset = 10\neps_train = 0.1\neps_test = 0.1\n"
        '[grid]\nrelaxation = ["IBP"]\n[certify]\nrelaxations = ["own"]\nn = 10\n'
    )
    args = ["sweep", str(tmp_path / "s.toml"), "--executor", "inprocess", "--out"]
    loud = _invoke([*args, str(tmp_path / "out")])
    assert loud.exit_code == 0, (loud.stdout, loud.stderr)
    assert [m["done"] for m in _status(loud.stderr, "sweep: runs")] == ["1"]
    within = [line for line in loud.stderr.splitlines() if line.startswith("sweep: runs: 0.")]
    assert within, loud.stderr  # the bar moved while the run trained, before it finished
    quiet = _invoke([*args, str(tmp_path / "out2"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_a_worker_reports_its_share_through_a_file(tmp_path: Path) -> None:
    """Ray workers write the share of their training steps done; the driver reads it (a sweep's bar moves)."""
    from relaxlab.experiments.runs import progress_file, read_progress, step_shares

    path = tmp_path / "run" / "progress"
    assert read_progress(path) is None
    phase = step_shares(progress_file(path, every=0))
    assert phase is not None
    step = phase("cli-ibp", 4)
    step(1)
    assert read_progress(path) == 0.25
    step(3)
    assert read_progress(path) == 1.0
    phase("cli-ibp final certification", 100)(100)  # certification is not training: the share stays
    assert read_progress(path) == 1.0
    path.write_text("junk")
    assert read_progress(path) is None
