"""Executors: where the runs of a sweep execute, behind one small interface.

An :class:`Executor` takes :class:`~relaxlab.experiments.runs.RunTask` values and yields their
:class:`~relaxlab.experiments.runs.RunOutcome` values as they finish (in any order). It takes a
task from the iterable only when a worker is free for it, so whoever hands the tasks over (a sweep,
which claims each run in its store as it goes) decides at the last moment. Both
executors run the same function, :func:`~relaxlab.experiments.runs.execute_run`, so the same task
gives the same outcome wherever it ran:

- :class:`InProcessExecutor` runs tasks one after another in this process;
- :class:`RayExecutor` runs each task as a Ray task declaring one CPU, on a local Ray started on
  demand or on an existing cluster (``address``). Ray is imported only here, and only when a Ray
  executor is used.

A local Ray (:func:`start_local_ray`) is this machine's only: every process it starts (the GCS
server, the raylet, the workers, the runtime-env and dashboard agents) and the driver listen on
the loopback alone, and it is refused if Ray would not keep to that. An ``address`` must answer
within seconds (:func:`check_address`), or the executor is refused with one line, instead of Ray's
endless retries; a loopback address is used as given (Ray would rewrite ``127.0.0.1`` into the
machine's network address).
"""

from __future__ import annotations

import abc
import importlib.util
import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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
        self,
        tasks: Iterable[RunTask],
        on_start: Callable[[RunTask], None] | None = None,
        on_progress: OnProgress | None = None,
    ) -> Iterator[RunOutcome]:
        """Run ``tasks``; yield one outcome per task as each finishes.

        :param tasks: the runs to execute, taken one by one as workers become free.
        :param on_start: called when a task is handed to a worker (for progress).
        :param on_progress: called with a run's id and the share of its training steps done, as it trains.
        """


class InProcessExecutor(Executor):
    """Runs the tasks one after another in this process (one torch thread each, like a Ray task)."""

    name = "in-process"

    def __init__(self, workers: int = 1) -> None:
        super().__init__(1)

    def run(
        self,
        tasks: Iterable[RunTask],
        on_start: Callable[[RunTask], None] | None = None,
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


#: Ray's switch (read when it is imported) between a node address others can reach and the loopback.
_RAY_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Seconds an ``address`` has to answer.
CONNECT_TIMEOUT = 5.0


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


@contextmanager
def _on_loopback(ray: Any) -> Iterator[None]:
    """Inside the block, Ray takes the loopback as this node's address: so does every process it starts
    (they inherit the environment) and the driver (whose copy of the switch was read at import)."""
    constants: Any = getattr(getattr(ray, "_private", None), "ray_constants", None)  # private to ray
    before_env = os.environ.get(_RAY_CLUSTER_SWITCH)
    before = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_RAY_CLUSTER_SWITCH] = "0"
    if before is not None:
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if before is not None:
            constants.ENABLE_RAY_CLUSTER = before
        if before_env is None:
            os.environ.pop(_RAY_CLUSTER_SWITCH, None)
        else:
            os.environ[_RAY_CLUSTER_SWITCH] = before_env


_COMMON: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}


def start_local_ray(ray: Any, workers: int) -> None:
    """Start a Ray on this machine with ``workers`` CPUs, listening on the loopback only.

    :raises ExecutorError: Ray could not start, or would take an address beyond the loopback.
    """
    try:
        with _on_loopback(ray):
            ray.init(num_cpus=workers, _node_ip_address="127.0.0.1", **_COMMON)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ExecutorError(f"could not start a local Ray: {error}") from error
    node = ray.util.get_node_ip_address()
    if not is_loopback(node):
        ray.shutdown()
        raise ExecutorError(
            f"a local Ray would listen on {node}, beyond this machine's loopback (Ray {ray.__version__}); "
            "use --executor inprocess, or start a cluster yourself and pass its --address"
        )


def check_address(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse a cluster address that is not ``host:port`` or that nothing answers at within ``timeout`` s.

    ``auto`` (Ray finds the cluster ``ray start`` recorded on this machine) is left to Ray.

    :raises ExecutorError: one line naming the address, what went wrong and what to do.
    """
    if address == "auto":
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ExecutorError(
            f"--address {address!r} is not host:port (e.g. 127.0.0.1:6379, what `ray start --head` prints)"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ExecutorError(
            f"no Ray cluster answers at {address} ({reason}); start one with `ray start --head` and pass the "
            "address it prints, or leave out --address for a local Ray"
        ) from None


def _ray_task(task: RunTask) -> RunOutcome:  # the body of each Ray task; its progress goes to a file
    return execute_run(task, progress_file(Path(task.run_dir) / PROGRESS_NAME))


class RayExecutor(Executor):
    """Runs each task as a Ray task with ``num_cpus=1``.

    :param workers: CPUs of the local Ray started on demand (ignored with ``address``: the cluster's
        CPUs bound the parallelism).
    :param address: an existing cluster (``ray start --head`` prints it), or ``None`` for a local Ray
        (loopback only, see the module docstring).
    :raises ExecutorError: Ray is not installed, or nothing answers at ``address`` within seconds.
    """

    name = "ray"

    def __init__(self, workers: int = 1, address: str | None = None) -> None:
        super().__init__(workers)
        if not _ray_available():
            raise ExecutorError(
                "Ray is not installed; pip install 'relaxlab[ray]' (or use the in-process executor)"
            )
        if address is not None:
            check_address(address)
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
        if not self.address:
            start_local_ray(ray, self.workers)
            return True
        host = self.address.split("://", 1)[-1].rpartition(":")[0]
        try:
            if is_loopback(host):  # as given: Ray would rewrite it into this machine's network address
                with _on_loopback(ray):
                    ray.init(address=self.address, **_COMMON)
            else:
                ray.init(address=self.address, **_COMMON)
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ExecutorError(f"could not connect to the Ray cluster at {self.address}: {error}") from error
        return True

    def run(
        self,
        tasks: Iterable[RunTask],
        on_start: Callable[[RunTask], None] | None = None,
        on_progress: OnProgress | None = None,
    ) -> Iterator[RunOutcome]:
        """Keep ``workers`` tasks submitted; yield outcomes as Ray finishes them (see :meth:`Executor.run`).

        While it waits, it reads each running task's progress file (:func:`~relaxlab.experiments.runs.
        progress_file`, written by the worker into the run directory) once a second.
        """
        import ray

        self.start()
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        pending: dict[Any, RunTask] = {}
        source = iter(tasks)

        def submit() -> None:  # fill the free workers
            while len(pending) < self.workers:
                task = next(source, None)
                if task is None:
                    return
                (Path(task.run_dir) / PROGRESS_NAME).unlink(missing_ok=True)  # not an earlier attempt's share
                pending[remote.remote(task)] = task
                if on_start is not None:
                    on_start(task)

        try:
            submit()
            while pending:
                ready, _ = ray.wait(
                    list(pending), num_returns=1, timeout=None if on_progress is None else POLL_SECONDS
                )
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
                submit()  # the next task starts while this outcome is recorded
                yield outcome
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
