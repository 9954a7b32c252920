"""The results store: one SQLite database recording every train / certify / tightness run.

Each run has a kind (``train``, ``certify``, ``tightness`` or anything an analysis adds), a name,
its config (JSON), its environment (versions, device, git commit) and a status; metrics are
``(run, step, name, value)`` rows. Every write is one transaction, so an interrupted process
never leaves half a record, and several processes may share a database (SQLite's locking,
with a generous busy timeout).

The schema is versioned with SQLite's ``user_version``: version 1 is the original layout (stores
written before versioning read 0 and have that layout), version 2 adds the ``key`` (a stable
identifier given by the writer, e.g. a sweep run's id) and ``error`` columns of ``runs``. Opening
an older store migrates it in place (one transaction); a store written by a newer relaxlab is
refused with a message that says so.

Usage::

    with open_store("runs/results.sqlite") as store:
        run = store.create_run("train", config={"relaxation": "IBP"}, name="ibp")
        store.log_metric(run, step=0, name="loss", value=1.25)
        store.finish_run(run)
        store.metrics(run, "loss")  # [(0, 1.25)]
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import attrs

from relaxlab import __version__

#: Environment variable for the default store path.
STORE_ENV = "RELAXLAB_STORE"
#: The file name of a store: it sits in the directory that holds the run directories.
STORE_NAME = "results.sqlite"
DEFAULT_STORE = Path("runs") / STORE_NAME

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    environment TEXT NOT NULL,
    key TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id, name);
"""

#: Current schema version (``PRAGMA user_version``); see the module docstring.
SCHEMA_VERSION = 2

#: Migrations: version -> statements that bring a store of that version to the next one.
_MIGRATIONS = {
    1: ("ALTER TABLE runs ADD COLUMN key TEXT", "ALTER TABLE runs ADD COLUMN error TEXT"),
}
_RUN_COLUMNS = "id, kind, name, created, finished, status, config, environment, key, error"


class StoreError(RuntimeError):
    """The store file is not a relaxlab results database, or a run id is unknown."""


@attrs.frozen(kw_only=True)
class Run:
    """One recorded run.

    :param id: run id.
    :param kind: ``train``, ``certify``, ``tightness``, ...
    :param name: human name.
    :param created: UNIX time.
    :param finished: UNIX time, ``None`` while running.
    :param status: ``running``, ``done``, ``failed``.
    :param config: the config as a dict.
    :param environment: versions, device, git commit.
    :param key: stable identifier given by the writer (a sweep run's id), ``None`` when not given.
    :param error: what went wrong, for a ``failed`` run that recorded it.
    """

    id: int
    kind: str
    name: str
    created: float
    finished: float | None
    status: str
    config: dict[str, Any] = attrs.field(eq=False)
    environment: dict[str, Any] = attrs.field(eq=False)
    key: str | None = None
    error: str | None = None


def default_store_path(run_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where results go unless the user says otherwise.

    :param run_dir: a run's directory (or a file inside it, such as its checkpoint's directory):
        the store is ``results.sqlite`` beside the run directories, ``run_dir/../results.sqlite``.
        Without it: ``$RELAXLAB_STORE`` or ``runs/results.sqlite``.
    """
    if run_dir is not None:
        return Path(run_dir).parent / STORE_NAME
    return Path(os.environ.get(STORE_ENV, DEFAULT_STORE))


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions of Python, torch and relaxlab, the platform, the device and the git commit."""


    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "relaxlab": __version__,
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }
    if "torch" in sys.modules or device is not None:
        import torch

        env["torch"] = torch.__version__
        env["threads"] = torch.get_num_threads()
        env["cuda"] = torch.cuda.is_available()
    if device is not None:
        env["device"] = device
    return env


class Store:
    """A results database (see the module docstring).

    :param path: SQLite file; created (with parent directories) if missing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60.0)
        self._depth = 0
        try:
            self._migrate()
        except sqlite3.DatabaseError as error:
            self._conn.close()
            raise StoreError(f"{self.path} is not a relaxlab results database ({error})") from error
        except StoreError:
            self._conn.close()
            raise

    def _migrate(self) -> None:
        """Create the tables, or bring an older store to :data:`SCHEMA_VERSION` (one transaction)."""
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has results-store schema version {version}, newer than this relaxlab "
                f"understands ({SCHEMA_VERSION}); upgrade relaxlab or use another --store"
            )
        if version == SCHEMA_VERSION:
            return
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")  # DDL too; another process may be migrating
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            if version == SCHEMA_VERSION:
                return
            tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "runs" not in tables:  # a new store
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
            else:  # written before versioning (0) or by an older relaxlab
                for step in range(max(version, 1), SCHEMA_VERSION):
                    for statement in _MIGRATIONS[step]:
                        self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """Make every write inside the block one transaction (nested blocks join the outer one)."""
        self._depth += 1
        try:
            if self._depth == 1:
                with self._conn:
                    yield self
            else:
                yield self
        finally:
            self._depth -= 1

    def _write(self) -> Any:
        """The context of one write: its own transaction, or the enclosing :meth:`transaction`."""
        return self._conn if self._depth == 0 else nullcontext()

    def verify(self) -> None:
        """Refuse a damaged database (``PRAGMA quick_check``), saying how to recover.

        :raises StoreError: the file is malformed (a lost page, a torn write).
        """
        try:
            problems = [row[0] for row in self._conn.execute("PRAGMA quick_check").fetchall()]
        except sqlite3.DatabaseError as error:
            problems = [str(error)]
        if problems != ["ok"]:
            raise StoreError(
                f"{self.path} is damaged ({'; '.join(problems[:3])}); move it aside and rebuild the records from "
                "the checkpoints: `relaxlab certify runs/*/checkpoint.pt --store NEW.sqlite` (training history "
                "is in each run's history.json)"
            )

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_run(
        self,
        kind: str,
        config: Mapping[str, Any],
        name: str | None = None,
        env: Mapping[str, Any] | None = None,
        key: str | None = None,
        created: float | None = None,
    ) -> int:
        """Record a new run (status ``running``) and return its id.

        :param kind: ``train``, ``certify``, ``tightness``, ...
        :param config: JSON-able mapping.
        :param name: human name (default: the config's ``name`` or the kind).
        :param env: environment (default: :func:`environment`).
        :param key: stable identifier of the run (see :meth:`runs`).
        :param created: UNIX time the run started (default: now), for work recorded after it ran.
        """
        with self._write():
            cursor = self._conn.execute(
                "INSERT INTO runs (kind, name, created, status, config, environment, key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    name or str(config.get("name", kind)),
                    time.time() if created is None else created,
                    "running",
                    json.dumps(dict(config), sort_keys=True, default=str),
                    json.dumps(dict(env if env is not None else environment()), sort_keys=True, default=str),
                    key,
                ),
            )
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid)

    def _check_run(self, run_id: int) -> None:
        if self._conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise StoreError(f"no run with id {run_id} in {self.path}")

    def log_metric(self, run_id: int, step: int, name: str, value: float) -> None:
        """Record one metric value."""
        self.log_metrics(run_id, step, {name: value})

    def log_metrics(self, run_id: int, step: int, values: Mapping[str, float]) -> None:
        """Record several metric values of one step in one transaction."""
        self._check_run(run_id)
        with self._write():
            self._conn.executemany(
                "INSERT INTO metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                [(run_id, int(step), name, float(value)) for name, value in values.items()],
            )

    def delete_metrics_from(self, run_id: int, step: int) -> None:
        """Drop a run's metrics at ``step`` and later (used when a run resumes from a checkpoint)."""
        with self._write():
            self._conn.execute("DELETE FROM metrics WHERE run_id = ? AND step >= ?", (run_id, step))

    def delete_runs(self, run_ids: Iterable[int]) -> None:
        """Delete runs and their metrics (e.g. an earlier failed attempt that is being redone)."""
        ids = [(int(i),) for i in run_ids]
        with self._write():
            self._conn.executemany("DELETE FROM metrics WHERE run_id = ?", ids)
            self._conn.executemany("DELETE FROM runs WHERE id = ?", ids)

    def finish_run(self, run_id: int, status: str = "done", error: str | None = None) -> None:
        """Mark a run finished (``done`` or ``failed``; ``error`` says what went wrong)."""
        self._check_run(run_id)
        with self._write():
            self._conn.execute(
                "UPDATE runs SET status = ?, finished = ?, error = ? WHERE id = ?",
                (status, time.time(), error, run_id),
            )

    def reopen_run(self, run_id: int) -> None:
        """Mark a run ``running`` again (resume)."""
        self._check_run(run_id)
        with self._write():
            self._conn.execute("UPDATE runs SET status = 'running', finished = NULL WHERE id = ?", (run_id,))

    def _run(self, row: tuple[Any, ...]) -> Run:
        return Run(
            id=row[0],
            kind=row[1],
            name=row[2],
            created=row[3],
            finished=row[4],
            status=row[5],
            config=json.loads(row[6]),
            environment=json.loads(row[7]),
            key=row[8],
            error=row[9],
        )

    def run(self, run_id: int) -> Run:
        """The run with id ``run_id``."""
        row = self._conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no run with id {run_id} in {self.path}")
        return self._run(row)

    def runs(self, kind: str | None = None, status: str | None = None, key: str | None = None) -> list[Run]:
        """All runs (optionally of one kind / status / key), oldest first."""
        query, args = f"SELECT {_RUN_COLUMNS} FROM runs WHERE 1=1", []
        for column, value in (("kind", kind), ("status", status), ("key", key)):
            if value is not None:
                query, args = query + f" AND {column} = ?", [*args, value]
        return [self._run(row) for row in self._conn.execute(query + " ORDER BY id", args)]

    def metrics(
        self, run_id: int, name: str | None = None
    ) -> list[tuple[int, float]] | dict[str, list[tuple[int, float]]]:
        """A run's metrics: ``[(step, value)]`` for one name, or ``{name: [(step, value)]}``."""
        if name is not None:
            rows = self._conn.execute(
                "SELECT step, value FROM metrics WHERE run_id = ? AND name = ? ORDER BY step, rowid",
                (run_id, name),
            )
            return [(int(s), float(v)) for s, v in rows]
        out: dict[str, list[tuple[int, float]]] = {}
        for metric, step, value in self._conn.execute(
            "SELECT name, step, value FROM metrics WHERE run_id = ? ORDER BY step, rowid", (run_id,)
        ):
            out.setdefault(metric, []).append((int(step), float(value)))
        return out

    def final_metrics(self, run_id: int) -> dict[str, float]:
        """The last value of each of a run's metrics."""
        return {name: rows[-1][1] for name, rows in self.metrics(run_id).items()}  # type: ignore[union-attr]

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only SQL query (tables ``runs`` and ``metrics``)."""
        if not sql.lstrip().lower().startswith(("select", "with")):
            raise StoreError("Store.query runs SELECT statements only")
        return list(self._conn.execute(sql, tuple(params)))


@contextmanager
def open_store(path: str | os.PathLike[str] | None = None) -> Iterator[Store]:
    """Open (and create if needed) the store at ``path`` (default: :func:`default_store_path`)."""
    store = Store(default_store_path() if path is None else path)
    try:
        yield store
    finally:
        store.close()
