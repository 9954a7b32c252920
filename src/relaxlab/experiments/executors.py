"""Executors: where the runs of a sweep execute, behind one small interface.

An :class:`Executor` takes :class:`~relaxlab.experiments.runs.RunTask` values and yields their
:class:`~relaxlab.experiments.runs.RunOutcome` values as they finish (in any order). Both
executors run the same function, :func:`~relaxlab.experiments.runs.execute_run`, so the same task
gives the same outcome wherever it ran:

- :class:`InProcessExecutor` runs tasks one after another in this process;
- :class:`RayExecutor` runs each task as a Ray task declaring one CPU, on a local Ray started on
  demand (loopback only, no dashboard) or on an existing cluster (``address``). Ray is imported
  only here, and only when a Ray executor is used.
"""

from __future__ import annotations

import abc
import importlib.util
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from relaxlab.experiments.runs import (
    PROGRESS_NAME,
    RunOutcome,
    RunTask,
    execute_run,
    progress_file,
    read_progress,
)

#: ``on_progress(key, share)``: the share of a run's training steps done.
OnProgress = Callable[[str, float], None]
#: Seconds the Ray executor waits for a finished run before it reads the runs' progress files.
POLL_SECONDS = 1.0

#: Names accepted by :func:`make_executor`.
EXECUTORS = ("auto", "ray", "inprocess")


class ExecutorError(RuntimeError):
    """An executor cannot start (Ray missing, cluster unreachable)."""


class Executor(abc.ABC):
    """Runs tasks and yields their outcomes as they finish.

    :param workers: how many tasks may run at the same time.
    """

    #: short name for progress lines and docs
    name: str = "executor"

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def start(self) -> None:
        """Get ready to run tasks now rather than in :meth:`run` (nothing to do in process).

        A caller that draws a progress bar starts the executor first, so that what starting
        prints (Ray's notices) comes before the bar instead of through it.
        """
        return None
    @abc.abstractmethod
    def run(
        self, tasks: Sequence[RunTask], on_start: Callable[[RunTask], None] | None = None,
        on_progress: OnProgress | None = None,
    ) -> Iterator[RunOutcome]:
        """Run ``tasks``; yield one outcome per task as each finishes.

        :param tasks: the runs to execute.
        :param on_start: called when a task is handed to a worker (for progress).
        :param on_progress: called with a run's id and the share of its training steps done, as it trains.
        """


class InProcessExecutor(Executor):
    """Runs the tasks one after another in this process (one torch thread each, like a Ray task)."""

    name = "in-process"

    def __init__(self, workers: int = 1) -> None:
        super().__init__(1)

    def run(
        self, tasks: Sequence[RunTask], on_start: Callable[[RunTask], None] | None = None,
        on_progress: OnProgress | None = None,
    ) -> Iterator[RunOutcome]:
        """Run each task in turn (see :meth:`Executor.run`)."""
        for task in tasks:
            if on_start is not None:
                on_start(task)
            report = None if on_progress is None else (lambda share, key=task.key: on_progress(key, share))
            yield execute_run(task, report)


def _ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def _ray_task(task: RunTask) -> RunOutcome:  # the body of each Ray task; its progress goes to a file
    return execute_run(task, progress_file(Path(task.run_dir) / PROGRESS_NAME))


class RayExecutor(Executor):
    """Runs each task as a Ray task with ``num_cpus=1``.

    :param workers: CPUs of the local Ray started on demand (ignored with ``address``: the cluster's
        CPUs bound the parallelism).
    :param address: an existing cluster (``ray start --head`` prints it), or ``None`` for a local Ray.
    """

    name = "ray"

    def __init__(self, workers: int = 1, address: str | None = None) -> None:
        super().__init__(workers)
        if not _ray_available():
            raise ExecutorError(
                "Ray is not installed; pip install 'relaxlab[ray]' (or use the in-process executor)"
            )
        self.address = address
        self._owned: bool | None = None  # None: not started; True: this executor started Ray (shuts it down)

    def start(self) -> None:
        """Connect to or start Ray now (see :meth:`Executor.start`); a second call does nothing."""
        import ray

        if self._owned is None:
            self._owned = self._start(ray)

    def _start(self, ray: Any) -> bool:
        """Connect to or start Ray; ``True`` when this call started it (and must shut it down)."""
        if ray.is_initialized():
            return False
        common: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        try:
            if self.address:
                ray.init(address=self.address, **common)
                self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
            else:
                ray.init(num_cpus=self.workers, _node_ip_address="127.0.0.1", **common)
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            raise ExecutorError(f"could not start {where}: {error}") from error
        return True

    def run(
        self, tasks: Sequence[RunTask], on_start: Callable[[RunTask], None] | None = None,
        on_progress: OnProgress | None = None,
    ) -> Iterator[RunOutcome]:
        """Submit every task, then yield outcomes as Ray finishes them (see :meth:`Executor.run`).

        While it waits, it reads each running task's progress file (:func:`~relaxlab.experiments.runs.
        progress_file`, written by the worker into the run directory) once a second.
        """
        import ray

        self.start()
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        pending: dict[Any, RunTask] = {}
        for task in tasks:  # an earlier attempt's share is not this attempt's
            (Path(task.run_dir) / PROGRESS_NAME).unlink(missing_ok=True)
        try:
            for task in tasks:
                pending[remote.remote(task)] = task
            for task in list(pending.values())[: self.workers]:
                if on_start is not None:
                    on_start(task)
            queued = list(pending.values())[self.workers :]
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=None if on_progress is None else POLL_SECONDS)
                if not ready:
                    for task in pending.values():
                        share = read_progress(Path(task.run_dir) / PROGRESS_NAME)
                        if share is not None and on_progress is not None:
                            on_progress(task.key, share)
                    continue
                (ref,) = ready
                task = pending.pop(ref)
                (Path(task.run_dir) / PROGRESS_NAME).unlink(missing_ok=True)
                try:
                    outcome = ray.get(ref)
                except Exception as error:  # noqa: BLE001 - a crashed worker fails its run only
                    outcome = RunOutcome.failure(task.key, error)
                yield outcome
                if queued and on_start is not None:  # Ray hands the freed CPU to the next task
                    on_start(queued.pop(0))
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if self._owned:
                ray.shutdown()
            self._owned = None


def make_executor(kind: str = "auto", workers: int = 1, address: str | None = None) -> Executor:
    """The executor called ``kind``: ``ray``, ``inprocess``, or ``auto`` (Ray when installed or an address is given).

    :raises ExecutorError: ``ray`` (or an ``address``) without Ray installed.
    """
    if kind not in EXECUTORS:
        raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {kind!r}")
    if kind == "ray" or address is not None or (kind == "auto" and _ray_available()):
        if kind == "inprocess":
            raise ValueError("--address needs the Ray executor, not inprocess")
        return RayExecutor(workers, address)
    return InProcessExecutor(workers)
