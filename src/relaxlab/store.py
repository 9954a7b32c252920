"""The results store: one SQLite database recording every train / certify / tightness run.

Each run has a kind (``train``, ``certify``, ``tightness`` or anything an analysis adds), a name,
its config (JSON), its environment (versions, device, git commit) and a status; metrics are
``(run, step, name, value)`` rows. Every write is one transaction, so an interrupted process
never leaves half a record, and several processes may share a database (SQLite's locking,
with a generous busy timeout).

The schema is versioned with SQLite's ``user_version``: version 1 is the original layout (stores
written before versioning read 0 and have that layout), version 2 adds the ``key`` (a stable
identifier given by the writer, e.g. a sweep run's id) and ``error`` columns of ``runs``, version 3
the ``claims`` table (which process is working on which key, see :meth:`Store.claim`). Opening an
older store for writing migrates it in place (one transaction); a store written by a newer
relaxlab is refused with a message that says so. ``Store(path, readonly=True)`` (what a report
uses) writes nothing at all: it reads stores of every version as they are, and refuses a missing
or empty file, or an SQLite database that is not a store, without creating or changing it.

Several processes may work on one store at once (two sweeps into one output directory): a
:meth:`Store.transaction` holds SQLite's write lock from its first statement (``BEGIN
IMMEDIATE``), so what it reads cannot change before it writes, and :meth:`Store.claim` gives each
key to one live process at a time.

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
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, overload

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
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    claimed REAL NOT NULL,
    heartbeat REAL NOT NULL
);
"""

#: Current schema version (``PRAGMA user_version``); see the module docstring.
SCHEMA_VERSION = 3

#: Migrations: version -> statements that bring a store of that version to the next one.
_MIGRATIONS = {
    1: ("ALTER TABLE runs ADD COLUMN key TEXT", "ALTER TABLE runs ADD COLUMN error TEXT"),
    2: (
        "CREATE TABLE claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed REAL NOT NULL, "
        "heartbeat REAL NOT NULL)",
    ),
}
_RUN_COLUMNS = (
    "id",
    "kind",
    "name",
    "created",
    "finished",
    "status",
    "config",
    "environment",
    "key",
    "error",
)

#: Seconds between two heartbeats of a process's claims (:func:`keep_claims_alive`).
HEARTBEAT_SECONDS = 30.0
#: A claim of a process on another machine whose heartbeat is older than this is taken over.
CLAIM_TIMEOUT = 10 * HEARTBEAT_SECONDS


class StoreError(RuntimeError):
    """The store file is not a relaxlab results database, or a run id is unknown."""


class RunMismatchError(StoreError, ValueError):
    """A run was to be continued in a store where its id belongs to another run (bad input, not a failure)."""


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


@attrs.frozen(kw_only=True)
class Claim:
    """A key some process works on (see :meth:`Store.claim`).

    :param key: the claimed key (a sweep run's id).
    :param owner: the process, as :func:`process_owner` names it.
    :param claimed: UNIX time of the claim.
    :param heartbeat: UNIX time its owner last said it is alive.
    """

    key: str
    owner: str
    claimed: float
    heartbeat: float

    @property
    def alive(self) -> bool:
        """Whether the owner may still be working on it: a process on this machine that still runs (the
        same pid started at the same time), or one elsewhere whose heartbeat is recent."""
        host, _, rest = self.owner.partition("/")
        pid_text, _, started = rest.partition("/")
        if host == socket.gethostname() and pid_text.isdigit():
            return _process_running(int(pid_text), started or None)
        return time.time() - self.heartbeat < CLAIM_TIMEOUT


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), ``None`` where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _process_running(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return started is None or _start_time(pid) in (None, started)


def process_owner() -> str:
    """This process as a claim names it: ``host/pid/start time`` (a reused pid is another owner)."""
    pid = os.getpid()
    return f"{socket.gethostname()}/{pid}/{_start_time(pid) or ''}"


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

    :param path: SQLite file; created (with parent directories) if missing, unless ``readonly``.
    :param readonly: only read: nothing is created, migrated or written (a write raises
        :class:`StoreError`); a missing or empty file, or a database that is not a store, is refused.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._depth = 0
        self._columns = ", ".join(_RUN_COLUMNS)
        if readonly:
            self._conn = self._open_readonly()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60.0)
        try:
            self._migrate()
        except sqlite3.DatabaseError as error:
            self._conn.close()
            raise StoreError(f"{self.path} is not a relaxlab results database ({error})") from error
        except StoreError:
            self._conn.close()
            raise

    def _open_readonly(self) -> sqlite3.Connection:
        """A connection that cannot write (SQLite's ``mode=ro``), on a file checked to be a store."""
        if not self.path.is_file():
            raise StoreError(
                f"no results database at {self.path}; run `relaxlab train` / `certify` first or pass --store"
            )
        if self.path.stat().st_size == 0:
            raise StoreError(
                f"{self.path} is empty, not a relaxlab results database; pass the store a "
                "sweep or `relaxlab train` wrote (results.sqlite)"
            )
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60.0)
        try:
            conn.execute("PRAGMA query_only = ON")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            columns = {
                name: {row[1] for row in conn.execute(f"PRAGMA table_info({name})")}
                for name in ("runs", "metrics")
            }
        except sqlite3.DatabaseError as error:
            conn.close()
            raise StoreError(f"{self.path} is not a relaxlab results database ({error})") from error
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreError(self._newer(version))
        if (
            not set(_RUN_COLUMNS[:8]) <= columns["runs"]
            or not {"run_id", "step", "name", "value"} <= columns["metrics"]
        ):
            conn.close()
            raise StoreError(
                f"{self.path} is not a relaxlab results database (no runs and metrics tables of "
                "a store); pass the store a sweep or `relaxlab train` wrote (results.sqlite)"
            )
        self._columns = ", ".join(c if c in columns["runs"] else f"NULL AS {c}" for c in _RUN_COLUMNS)
        return conn

    def _newer(self, version: int) -> str:
        return (
            f"{self.path} has results-store schema version {version}, newer than this relaxlab "
            f"understands ({SCHEMA_VERSION}); upgrade relaxlab or use another --store"
        )

    def _migrate(self) -> None:
        """Create the tables, or bring an older store to :data:`SCHEMA_VERSION` (one transaction)."""
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(self._newer(version))
        if version == SCHEMA_VERSION:
            return
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")  # DDL too; another process may be migrating
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            if version == SCHEMA_VERSION:
                return
            tables = {
                row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
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
        """Make everything inside the block one transaction (nested blocks join the outer one).

        It takes SQLite's write lock at once (``BEGIN IMMEDIATE``): another process can neither write
        between what the block reads and what it writes, nor start such a block until this one ends.
        """
        self._check_writable()
        self._depth += 1
        try:
            if self._depth == 1:
                with self._conn:
                    self._conn.execute("BEGIN IMMEDIATE")
                    yield self
            else:
                yield self
        finally:
            self._depth -= 1

    def _check_writable(self) -> None:
        if self.readonly:
            raise StoreError(f"{self.path} was opened read-only; open it with Store(path) to write")

    def _write(self) -> Any:
        """The context of one write: its own transaction, or the enclosing :meth:`transaction`."""
        self._check_writable()
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

    def reopen_run(self, run_id: int, config: Mapping[str, Any] | None = None) -> None:
        """Mark a run ``running`` again (resume).

        :param config: the config of the run being continued: refuse when run ``run_id`` of this store
            recorded another (a checkpoint's run id read in another store names another run).
        :raises RunMismatchError: ``run_id`` is another run here; nothing is changed.
        """
        with self.transaction():
            run = self.run(run_id)
            if config is not None:
                self._check_same_run(run, config)
            self._conn.execute("UPDATE runs SET status = 'running', finished = NULL WHERE id = ?", (run_id,))

    def _check_same_run(self, run: Run, config: Mapping[str, Any]) -> None:
        """Refuse ``run`` when its recorded config differs from ``config`` on a key both have (a key only one
        has was added to configs after the other was written)."""
        given = json.loads(json.dumps(dict(config), sort_keys=True, default=str))
        differ = {
            k: (run.config[k], given[k])
            for k in sorted(set(run.config) & set(given))
            if run.config[k] != given[k]
        }
        if differ:
            shown = ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in list(differ.items())[:4])
            raise RunMismatchError(
                f"run {run.id} of {self.path} is another run ({run.kind} {run.name!r}; {shown}), not the one "
                "being continued; resume with the store it was trained with (--store), or start it anew in "
                "another directory"
            )

    # ----------------------------------------------------------------------- claims

    def claim(self, key: str, owner: str) -> Claim | None:
        """Give ``key`` to ``owner`` unless another process holds it and is alive (:attr:`Claim.alive`).

        Runs as one transaction (joining an enclosing :meth:`transaction`, so the caller can check what
        is recorded for the key in the same one).

        :param owner: the claiming process (:func:`process_owner`).
        :return: ``None`` when ``owner`` holds the key now; else the live claim of another process.
        """
        with self.transaction():
            row = self._conn.execute(
                "SELECT key, owner, claimed, heartbeat FROM claims WHERE key = ?", (key,)
            ).fetchone()
            if row is not None:
                held = Claim(key=row[0], owner=row[1], claimed=row[2], heartbeat=row[3])
                if held.owner != owner and held.alive:
                    return held
            now = time.time()
            self._conn.execute(
                "INSERT OR REPLACE INTO claims (key, owner, claimed, heartbeat) VALUES (?, ?, ?, ?)",
                (key, owner, now, now),
            )
        return None

    def release(self, owner: str, keys: Iterable[str] | None = None) -> None:
        """Drop ``owner``'s claims (of ``keys``, or all of them)."""
        with self._write():
            if keys is None:
                self._conn.execute("DELETE FROM claims WHERE owner = ?", (owner,))
            else:
                self._conn.executemany(
                    "DELETE FROM claims WHERE owner = ? AND key = ?", [(owner, key) for key in keys]
                )

    def heartbeat(self, owner: str) -> None:
        """Say that ``owner`` is alive: its claims' heartbeat becomes now."""
        with self._write():
            self._conn.execute("UPDATE claims SET heartbeat = ? WHERE owner = ?", (time.time(), owner))

    def claims(self) -> list[Claim]:
        """Every claim, oldest first (none in a store older than schema version 3)."""
        try:
            rows = self._conn.execute("SELECT key, owner, claimed, heartbeat FROM claims ORDER BY claimed")
        except sqlite3.OperationalError:  # a read-only store of an older version
            return []
        return [Claim(key=k, owner=o, claimed=c, heartbeat=h) for k, o, c, h in rows]

    # ----------------------------------------------------------------------- reading

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
        row = self._conn.execute(f"SELECT {self._columns} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no run with id {run_id} in {self.path}")
        return self._run(row)

    def runs(self, kind: str | None = None, status: str | None = None, key: str | None = None) -> list[Run]:
        """All runs (optionally of one kind / status / key), oldest first."""
        query, args = f"SELECT {self._columns} FROM runs WHERE 1=1", list[str]()
        for column, value in (("kind", kind), ("status", status), ("key", key)):
            if value is not None:
                query, args = query + f" AND {column} = ?", [*args, value]
        return [self._run(row) for row in self._conn.execute(query + " ORDER BY id", args)]

    @overload
    def metrics(self, run_id: int, name: str) -> list[tuple[int, float]]: ...
    @overload
    def metrics(self, run_id: int, name: None = None) -> dict[str, list[tuple[int, float]]]: ...
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
        return {name: rows[-1][1] for name, rows in self.metrics(run_id).items()}

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only SQL query (tables ``runs`` and ``metrics``)."""
        if not sql.lstrip().lower().startswith(("select", "with")):
            raise StoreError("Store.query runs SELECT statements only")
        return list(self._conn.execute(sql, tuple(params)))


@contextmanager
def open_store(path: str | os.PathLike[str] | None = None, *, readonly: bool = False) -> Iterator[Store]:
    """Open (and create if needed, unless ``readonly``) the store at ``path`` (default:
    :func:`default_store_path`)."""
    store = Store(default_store_path() if path is None else path, readonly=readonly)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def keep_claims_alive(
    path: str | os.PathLike[str], owner: str, every: float = HEARTBEAT_SECONDS
) -> Iterator[None]:
    """Inside the block, a thread renews ``owner``'s claims in the store at ``path`` every ``every``
    seconds (its own connection), so processes on other machines see them alive; they are released
    when the block ends."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                with Store(path) as store:
                    store.heartbeat(owner)
            except (sqlite3.Error, StoreError):  # a busy or vanished store: try again next time
                continue

    thread = threading.Thread(target=beat, name="relaxlab-claims", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with Store(path) as store:
            store.release(owner)
