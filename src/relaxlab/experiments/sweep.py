"""Sweeps: a grid of training configs x seeds, trained and certified, resumable, recorded in the store.

A sweep file (TOML) has these tables (every one optional except that something must be trained):

- ``name``: the sweep's name (default: the file's stem);
- ``[base]``: train-config keys every run shares, or ``config = "path.toml"`` (relative to the sweep
  file) plus keys that override it;
- ``[grid]``: keys mapped to lists of values; their cartesian product (in file order);
- ``[[runs]]``: explicit points, each a table of keys over ``[base]`` (added after the grid);
- ``seeds``: a list of seeds; every point runs once per seed (default: the base's seed);
- ``[certify]``: ``relaxations`` (names, ``own``, ``paper`` or ``all``), ``n``, ``eps``, ``pgd``;
- ``[select]``: ``over`` (the hyper-parameter keys chosen on the validation split) and ``metric``
  (``certified`` or ``accuracy``).

Every run's id is a hash of its canonical resolved config (all train keys, names as the registry
spells them, without ``name``) and its resolved certification; the run's ``name`` is its id. The
whole file is validated before any work: a bad key or value raises :class:`SweepError` naming the
key and the fix. :func:`run_sweep` skips runs the store already holds as done, hands the others to
an :class:`~relaxlab.experiments.executors.Executor`, and writes each outcome (train run, certify
runs, or the failure) to the store in one transaction, so a killed sweep resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from relaxlab.api import select_relaxations
from relaxlab.evaluation.seeds import SWEEP_KIND
from relaxlab.experiments.executors import Executor
from relaxlab.experiments.runs import CertifySpec, RunOutcome, RunTask
from relaxlab.store import Store
from relaxlab.training.config import (
    ConfigError,
    TrainConfig,
    from_dict,
    load_config,
    read_toml,
    unknown_keys,
    valid_keys,
    validate_names,
)

SWEEP_KEYS = ("name", "base", "grid", "runs", "seeds", "certify", "select")
CERTIFY_KEYS = ("relaxations", "n", "eps", "pgd")
SELECT_KEYS = ("over", "metric")
SELECT_METRICS = ("certified", "accuracy")
#: keys a sweep sets itself
RESERVED = {
    "name": "every run is named by its id; name the sweep with the top-level `name`",
    "seed": "list the seeds in the top-level `seeds = [...]`",
}
STORE_NAME = "results.sqlite"


class SweepError(ConfigError):
    """A sweep file is invalid; the message names the key and the fix."""


@attrs.frozen(kw_only=True)
class SelectSpec:
    """Validation-based selection (the ``[select]`` table).

    :param over: the hyper-parameter keys to choose (each must vary in the sweep).
    :param metric: ``certified`` (validation CR with the run's own relaxation) or ``accuracy``.
    """

    over: tuple[str, ...] = attrs.field(converter=tuple)
    metric: str = "certified"


@attrs.frozen(kw_only=True)
class SweepRun:
    """One run of a sweep.

    :param key: the run id (hash of the resolved config and certification).
    :param config: the resolved train config (its ``name`` is ``key``).
    :param params: the values of the sweep's varying keys (and ``seed``) for this run.
    :param certifiers: resolved certifying relaxations.
    :param eps: certification radius.
    """

    key: str
    config: TrainConfig
    params: tuple[tuple[str, Any], ...]
    certifiers: tuple[str, ...]
    eps: float

    @property
    def label(self) -> str:
        """``key=value`` pairs of the varying keys, for listings."""
        return ", ".join(f"{k}={v}" for k, v in self.params) or "(base)"


@attrs.frozen(kw_only=True)
class Sweep:
    """A validated sweep: its runs in order and how to certify and select."""

    name: str
    source: str
    runs: tuple[SweepRun, ...]
    varying: tuple[str, ...]
    certify: CertifySpec
    select: SelectSpec | None = None

    def record(self) -> dict[str, Any]:
        """What the store keeps about the sweep (kind ``sweep``): runs, varying keys, selection."""
        return {
            "name": self.name,
            "source": self.source,
            "varying": list(self.varying),
            "runs": [{"key": r.key, "params": dict(r.params)} for r in self.runs],
            "certify": attrs.asdict(self.certify),
            "select": None if self.select is None else attrs.asdict(self.select),
        }

    @property
    def key(self) -> str:
        """Id of the sweep record (a hash of :meth:`record` without ``source``)."""
        return "sweep-" + _digest({k: v for k, v in self.record().items() if k != "source"})


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _unknown(keys: Sequence[str], valid: Sequence[str], where: str) -> None:
    unknown = unknown_keys(keys, valid)
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(valid)}")


def _table(data: Mapping[str, Any], key: str, default: Any) -> Any:
    value = data.get(key, default)
    if not isinstance(value, dict):
        raise SweepError(f"`{key}` must be a table ([{key}]), got {value!r}")
    return value


def _check_train_keys(table: Mapping[str, Any], where: str) -> None:
    _unknown(list(table), [*valid_keys(), *(["config"] if where == "[base]" else [])], where)
    for key, why in RESERVED.items():
        if key in table:
            raise SweepError(f"{where}: `{key}` is set by the sweep; {why}")


def _canonical(config: TrainConfig) -> TrainConfig:
    """Names as the registry spells them (``ibp`` -> ``IBP``), so equal runs get equal ids."""
    resolved = validate_names(config)
    changes: dict[str, Any] = {"dataset": resolved.dataset.name, "architecture": resolved.architecture.name}
    if config.method == "certified":
        changes["relaxation"] = resolved.relaxations[0].label
    return config.replace(**changes)


def _certifiers(spec: CertifySpec, config: TrainConfig) -> tuple[str, ...]:
    names: list[str] = []
    for name in spec.relaxations:
        if name.lower() == "own":
            names += config.train_relaxations or ("IBP",)
        else:
            names.append(name)  # a name, or a selector such as 'paper' or 'all'
    try:
        return tuple(relaxation.label for relaxation in select_relaxations(names))
    except (LookupError, ValueError) as error:
        raise SweepError(f"[certify] relaxations: {error}") from None


def _parse_certify(table: Mapping[str, Any]) -> CertifySpec:
    _unknown(list(table), CERTIFY_KEYS, "[certify]")
    relaxations = table.get("relaxations", ["own"])
    if isinstance(relaxations, str):
        relaxations = [relaxations]
    if not relaxations or not all(isinstance(r, str) and r for r in relaxations):
        raise SweepError(
            f"[certify] relaxations must be a non-empty list of names (or 'own', 'paper', 'all'), got {relaxations!r}"
        )
    n = table.get("n", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SweepError(f"[certify] n must be an int >= 0 (0: the run's whole test subset), got {n!r}")
    eps = table.get("eps")
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 <= eps <= 1):
        raise SweepError(
            f"[certify] eps must be a number in [0, 1] (omit it for each run's eps_test), got {eps!r}"
        )
    pgd = table.get("pgd", True)
    if not isinstance(pgd, bool):
        raise SweepError(f"[certify] pgd must be true or false, got {pgd!r}")
    return CertifySpec(relaxations=tuple(relaxations), n=n, eps=None if eps is None else float(eps), pgd=pgd)


def _parse_seeds(data: Mapping[str, Any], default: int) -> list[int]:
    seeds = data.get("seeds", [default])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise SweepError(
            f"`seeds` must be a non-empty list of integers, e.g. seeds = [0, 1, 2]; got {seeds!r}"
        )
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"`seeds` lists a seed twice: {seeds}; list each seed once")
    return seeds


def _points(data: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The grid's cartesian product and the explicit runs, as key -> value overrides; the varying keys."""
    grid = _table(data, "grid", {})
    _check_train_keys(grid, "[grid]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(
                f"[grid] {key} must be a non-empty list of values, e.g. {key} = [...]; got {values!r}"
            )
    runs = data.get("runs", [])
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise SweepError("`runs` must be an array of tables: write each as [[runs]] followed by its keys")
    for index, run in enumerate(runs):
        _check_train_keys(run, f"[[runs]] #{index + 1}")
    points = (
        [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())] if grid else []
    )
    points += [dict(run) for run in runs]
    varying = list(dict.fromkeys([*grid, *(k for run in runs for k in run)]))
    return points or [{}], varying


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file completely (see the module docstring).

    :param path: the ``.toml`` sweep file.
    :return: the sweep with every run resolved.
    :raises SweepError: any invalid key or value, naming it and the fix.
    """
    path = Path(path)
    try:
        data = read_toml(path, "sweep file")
    except ConfigError as error:
        raise SweepError(str(error)) from error
    try:
        return parse_sweep(data, name=path.stem, source=path.name, root=path.parent)
    except ConfigError as error:
        raise SweepError(f"sweep file {path}: {error}") from error


def parse_sweep(data: Mapping[str, Any], *, name: str, source: str = "", root: Path | None = None) -> Sweep:
    """Validate a sweep given as a mapping (the parsed TOML); see :func:`load_sweep`."""
    _unknown(list(data), SWEEP_KEYS, "top level")
    sweep_name = data.get("name", name)
    if not isinstance(sweep_name, str) or not sweep_name or "/" in sweep_name:
        raise SweepError(f"`name` must be a plain name, got {sweep_name!r}")
    base = dict(_table(data, "base", {}))
    _check_train_keys(base, "[base]")
    base_config: dict[str, Any] = {}
    if "config" in base:
        file = Path(str(base.pop("config")))
        file = file if file.is_absolute() or root is None else root / file
        base_config = load_config(file).to_dict()
        del base_config["name"], base_config["seed"]
    base_config.update(base)
    points, varying = _points(data)
    seeds = _parse_seeds(data, default=0)
    certify = _parse_certify(_table(data, "certify", {}))
    select = None
    if "select" in data:
        table = _table(data, "select", {})
        _unknown(list(table), SELECT_KEYS, "[select]")
        over = table.get("over")
        if isinstance(over, str):
            over = [over]
        if not isinstance(over, list) or not over or not all(k in varying for k in over):
            raise SweepError(
                f"[select] over must list keys that vary in [grid] or [[runs]] ({', '.join(varying) or 'none vary'}); "
                f"got {over!r}"
            )
        metric = table.get("metric", "certified")
        if metric not in SELECT_METRICS:
            raise SweepError(f"[select] metric must be one of {list(SELECT_METRICS)}, got {metric!r}")
        select = SelectSpec(over=tuple(over), metric=metric)
    runs: list[SweepRun] = []
    seen: dict[str, str] = {}
    for point in points:
        for seed in seeds:
            label = ", ".join(f"{k}={v!r}" for k, v in point.items()) or "[base]"
            try:
                config = _canonical(from_dict({**base_config, **point, "seed": seed}))
                certifiers = _certifiers(certify, config)
            except ConfigError as error:
                raise SweepError(f"run {label}, seed {seed}: {error}") from error
            eps = config.eps_test if certify.eps is None else certify.eps
            ident = {
                "train": {k: v for k, v in config.to_dict().items() if k != "name"},
                "certify": {"relaxations": list(certifiers), "eps": eps, "n": certify.n, "pgd": certify.pgd},
            }
            key = _digest(ident)
            if key in seen:
                raise SweepError(
                    f"run {label}, seed {seed} is the same run as {seen[key]}; list each run once"
                )
            seen[key] = f"{label}, seed {seed}"
            params = tuple((k, _plain(getattr(config, k))) for k in varying)
            runs.append(
                SweepRun(
                    key=key,
                    config=config.replace(name=key),
                    params=(*params, ("seed", seed)),
                    certifiers=certifiers,
                    eps=eps,
                )
            )
    if select is not None and any(not run.config.validation for run in runs):
        raise SweepError(
            "[select] needs a validation split: set `validation` (a count or a fraction) in [base]"
        )
    return Sweep(
        name=sweep_name,
        source=source,
        runs=tuple(runs),
        varying=(*varying, "seed"),
        certify=certify,
        select=select,
    )


# --------------------------------------------------------------------------- the store side


def run_status(store: Store, key: str) -> str:
    """``done``, ``failed`` or ``pending`` (nothing recorded, or an attempt that never finished)."""
    statuses = {run.status for run in store.runs(kind="train", key=key)}
    return "done" if "done" in statuses else "failed" if "failed" in statuses else "pending"


def record_outcome(store: Store, run: SweepRun, outcome: RunOutcome, sweep: str = "") -> int:
    """Write one outcome (train run with its metrics, certify runs; or the failure) in one transaction.

    Earlier unfinished or failed records of the same run are replaced, so the store holds one
    attempt per run id.

    :return: the id of the train run record.
    """
    with store.transaction():
        store.delete_runs(r.id for r in store.runs(key=run.key) if r.status != "done")
        config = run.config.to_dict()
        train_id = store.create_run("train", config, name=run.key, env=outcome.environment, key=run.key)
        if outcome.status != "done":
            store.finish_run(train_id, "failed", error=outcome.error)
            return train_id
        last = 0
        for metrics in outcome.history:
            last = int(metrics["step"])
            store.log_metrics(train_id, last, metrics)
        store.log_metrics(train_id, last, outcome.final)
        store.finish_run(train_id, "done")
        for result in outcome.certify:
            certify_id = store.create_run(
                "certify",
                {
                    "checkpoint": f"{run.key}/checkpoint.pt",
                    "certifier": result.certifier,
                    "eps": result.eps,
                    "dataset": run.config.dataset,
                    "architecture": run.config.architecture,
                    "method_label": run.config.label,
                    "n": result.n,
                    "val_n": result.val_n,
                    "sweep": sweep,
                },
                name=f"certify-{run.key}-{result.certifier}",
                env=outcome.environment,
                key=run.key,
            )
            metrics = {"accuracy": result.accuracy, "certified": result.certified}
            if result.pgd is not None:
                metrics["pgd"] = result.pgd
            if result.val_accuracy is not None and result.val_certified is not None:
                metrics.update({"val_accuracy": result.val_accuracy, "val_certified": result.val_certified})
            store.log_metrics(certify_id, 0, metrics)
            store.finish_run(certify_id, "done")
    return train_id


def _open_sweep_record(store: Store, sweep: Sweep) -> int:
    existing = store.runs(kind=SWEEP_KIND, key=sweep.key)
    if existing:
        store.reopen_run(existing[0].id)
        return existing[0].id
    return store.create_run(SWEEP_KIND, sweep.record(), name=sweep.name, key=sweep.key)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class Progress:
    """done / running / failed counts with an ETA: one line per change, or one updated line on a terminal.

    :param total: runs to execute in this call.
    :param skipped: runs already done before this call.
    :param workers: how many run at once.
    :param write: where lines go (default: stderr).
    :param tty: overwrite one line (default: stderr is a terminal).
    """

    def __init__(
        self,
        total: int,
        skipped: int,
        workers: int,
        write: Callable[[str], None] | None = None,
        tty: bool | None = None,
    ) -> None:
        self.total, self.skipped, self.workers = total, skipped, workers
        self.done = self.failed = self.started = 0
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self._last = ""

    @property
    def running(self) -> int:
        """Runs handed to a worker and not finished."""
        return self.started - self.done - self.failed

    def line(self) -> str:
        """The current progress line."""
        finished = self.done + self.failed
        remaining = self.total - finished
        eta = "—"
        if finished and remaining:
            eta = _duration((time.monotonic() - self.start) / finished * remaining)
        elif not remaining:
            eta = "0m00s"
        skipped = f" (+{self.skipped} done earlier)" if self.skipped else ""
        return (
            f"{self.done}/{self.total} done{skipped}, {self.running} running, {self.failed} failed, "
            f"ETA {eta}, elapsed {_duration(time.monotonic() - self.start)}"
        )

    def update(self, *, started: int = 0, done: int = 0, failed: int = 0) -> None:
        """Count events and show the line when the counts changed."""
        self.started += started
        self.done += done
        self.failed += failed
        line = self.line()
        counts = line.split(", ETA")[0]
        if counts != self._last.split(", ETA")[0]:
            self._last = line
            if self.tty:
                self._write("\r" + line + "\x1b[K")
            else:
                self._write(line)


@attrs.frozen(kw_only=True)
class SweepSummary:
    """What a call of :func:`run_sweep` did."""

    trained: tuple[str, ...]
    failed: dict[str, str]
    skipped: tuple[str, ...]
    seconds: float
    store: Path


def run_sweep(
    sweep: Sweep,
    out_dir: str | Path,
    executor: Executor,
    *,
    write: Callable[[str], None] | None = None,
    tty: bool | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> SweepSummary:
    """Execute the runs of ``sweep`` that the store does not hold as done; record every outcome.

    :param sweep: a validated sweep (:func:`load_sweep`).
    :param out_dir: run directories (``<out_dir>/<run id>/``) and the store ``<out_dir>/results.sqlite``.
    :param executor: where runs execute.
    :param write: where progress lines go (default: stderr).
    :param tty: progress as one updated line (default: when stderr is a terminal).
    :param progress: instead of those lines: called once with ``"runs"`` and the number of runs
        to execute; it returns the callback called with ``1`` after each finished (or failed) run.
    :return: which runs trained, failed (with their errors) and were skipped.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with Store(out_dir / STORE_NAME) as store:
        sweep_id = _open_sweep_record(store, sweep)
        todo = [run for run in sweep.runs if run_status(store, run.key) != "done"]
        skipped = tuple(run.key for run in sweep.runs if run not in todo)
        by_key = {run.key: run for run in todo}
        tasks = [
            RunTask(
                key=run.key,
                config=run.config.to_dict(),
                certifiers=run.certifiers,
                eps=run.eps,
                n=sweep.certify.n,
                pgd=sweep.certify.pgd,
                run_dir=str((out_dir / run.key).resolve()),
            )
            for run in todo
        ]
        finished = progress("runs", len(tasks)) if progress is not None and tasks else None
        if progress is not None:
            write, tty = (lambda _line: None), False
        counts = Progress(len(tasks), len(skipped), executor.workers, write=write, tty=tty)
        trained: list[str] = []
        failed: dict[str, str] = {}
        if tasks:
            counts.update()
        for outcome in executor.run(tasks, on_start=lambda _task: counts.update(started=1)):
            record_outcome(store, by_key[outcome.key], outcome, sweep=sweep.name)
            if finished is not None:
                finished(1)
            if outcome.status == "done":
                trained.append(outcome.key)
                counts.update(done=1)
            else:
                failed[outcome.key] = outcome.error or "unknown error"
                counts.update(failed=1)
        if counts.tty and tasks:
            (write or (lambda line: print(line, file=sys.stderr)))("")
        statuses = {run_status(store, run.key) for run in sweep.runs}
        store.finish_run(sweep_id, "done" if statuses == {"done"} else "failed")
    return SweepSummary(
        trained=tuple(trained),
        failed=failed,
        skipped=skipped,
        seconds=time.monotonic() - start,
        store=out_dir / STORE_NAME,
    )
