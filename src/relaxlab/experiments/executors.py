"""Executors: where the runs of a sweep execute, behind one small interface.

An :class:`Executor` takes :class:`~relaxlab.experiments.runs.RunTask` values and yields their
:class:`~relaxlab.experiments.runs.RunOutcome` values as they finish (in any order). It takes a
task from the iterable only when a worker is free for it, so whoever hands the tasks over (a sweep,
which claims each run in its store as it goes) decides at the last moment. Both
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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from relaxlab.experiments.runs import RunOutcome, RunTask, execute_run

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

    @abc.abstractmethod
    def run(
        self, tasks: Iterable[RunTask], on_start: Callable[[RunTask], None] | None = None
    ) -> Iterator[RunOutcome]:
        """Run ``tasks``; yield one outcome per task as each finishes.

        :param tasks: the runs to execute, taken one by one as workers become free.
        :param on_start: called when a task is handed to a worker (for progress).
        """


class InProcessExecutor(Executor):
    """Runs the tasks one after another in this process (one torch thread each, like a Ray task)."""

    name = "in-process"

    def __init__(self, workers: int = 1) -> None:
        super().__init__(1)

    def run(
        self, tasks: Iterable[RunTask], on_start: Callable[[RunTask], None] | None = None
    ) -> Iterator[RunOutcome]:
        """Run each task in turn (see :meth:`Executor.run`)."""
        for task in tasks:
            if on_start is not None:
                on_start(task)
            yield execute_run(task)


def _ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def _ray_task(task: RunTask) -> RunOutcome:  # the body of each Ray task
    return execute_run(task)


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
        self, tasks: Iterable[RunTask], on_start: Callable[[RunTask], None] | None = None
    ) -> Iterator[RunOutcome]:
        """Keep ``workers`` tasks submitted; yield outcomes as Ray finishes them (see :meth:`Executor.run`)."""
        import ray

        started = self._start(ray)
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        pending: dict[Any, RunTask] = {}
        source = iter(tasks)

        def submit() -> None:  # fill the free workers
            while len(pending) < self.workers:
                task = next(source, None)
                if task is None:
                    return
                pending[remote.remote(task)] = task
                if on_start is not None:
                    on_start(task)

        try:
            submit()
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as error:  # noqa: BLE001 - a crashed worker fails its run only
                    outcome = RunOutcome.failure(task.key, error)
                submit()  # the next task starts while this outcome is recorded
                yield outcome
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


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
