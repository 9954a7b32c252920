"""One sweep run: train a config, certify the network, return plain results (never writes the store).

:func:`execute_run` is what every executor runs, in the driver's process or in a Ray worker: it
pins torch to one thread, trains :attr:`RunTask.config` into :attr:`RunTask.run_dir` (resuming
from a checkpoint an interrupted attempt left there), certifies the network on the test images
and on the held-out validation images, and returns a :class:`RunOutcome` of plain values. The
driver alone writes outcomes to the results store, so a worker needs no access to it.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

#: Fully loaded datasets of this process, by (dataset, data_dir): a worker loads each once.
_DATA_CACHE: dict[tuple[str, str | None], Any] = {}


@attrs.frozen(kw_only=True)
class CertifySpec:
    """What to certify after training (the ``[certify]`` table of a sweep file).

    :param relaxations: certifying relaxations; ``own`` stands for the run's training
        relaxation(s) (IBP for natural training), ``all`` for the paper's five.
    :param n: certify the first ``n`` test images of the run's test subset (0: all of it).
    :param eps: radius; ``None``: each run's ``eps_test``.
    :param pgd: also run the PGD attack on the test images.
    """

    relaxations: tuple[str, ...] = attrs.field(default=("own",), converter=tuple)
    n: int = 0
    eps: float | None = None
    pgd: bool = True


@attrs.frozen(kw_only=True)
class RunTask:
    """Everything one run needs, as plain values (picklable, for Ray).

    :param key: the run id.
    :param config: the resolved train config (:meth:`TrainConfig.to_dict`).
    :param certifiers: resolved names of the certifying relaxations.
    :param eps: certification radius.
    :param n: test images to certify (0: the run's whole test subset).
    :param pgd: run PGD on the test images.
    :param run_dir: directory for the checkpoint and history.
    """

    key: str
    config: dict[str, Any] = attrs.field(eq=False)
    certifiers: tuple[str, ...]
    eps: float
    n: int
    pgd: bool
    run_dir: str


@attrs.frozen(kw_only=True)
class CertifyOutcome:
    """One certifier's numbers on the test images and (when held out) the validation images."""

    certifier: str
    eps: float
    n: int
    accuracy: float
    pgd: float | None
    certified: float
    val_n: int = 0
    val_accuracy: float | None = None
    val_certified: float | None = None


@attrs.frozen(kw_only=True)
class RunOutcome:
    """What a run produced, as plain values.

    :param key: the run id.
    :param status: ``done`` or ``failed``.
    :param error: for a failed run, the exception (type, message and the innermost frame).
    :param history: per-epoch training metrics.
    :param final: final metrics of the training run (test and validation accuracy / CR).
    :param certify: one entry per certifier.
    :param environment: versions, device, threads of the process that ran it.
    :param seconds: wall time of the run.
    """

    key: str
    status: str
    error: str | None = None
    history: list[dict[str, float]] = attrs.field(factory=list, eq=False)
    final: dict[str, float] = attrs.field(factory=dict, eq=False)
    certify: tuple[CertifyOutcome, ...] = ()
    environment: dict[str, Any] = attrs.field(factory=dict, eq=False)
    seconds: float = attrs.field(default=0.0, eq=False)

    @classmethod
    def failure(cls, key: str, error: BaseException | str, seconds: float = 0.0) -> RunOutcome:
        """A failed run's outcome, the error described in one or two lines."""
        return cls(key=key, status="failed", error=describe_error(error), seconds=seconds)


def describe_error(error: BaseException | str) -> str:
    """``Type: message (at file:line in function)`` for an exception; a string is kept."""
    if isinstance(error, str):
        return error
    text = f"{type(error).__name__}: {error}"
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        frame = frames[-1]
        text += f" (at {Path(frame.filename).name}:{frame.lineno} in {frame.name})"
    return text


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block (restored after), so parallel runs never oversubscribe."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _full_data(dataset: str, data_dir: str | None) -> Any:
    from relaxlab.training.config import TrainConfig
    from relaxlab.training.trainer import load_data

    key = (dataset, data_dir)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_data(TrainConfig(dataset=dataset, data_dir=data_dir))
    return _DATA_CACHE[key]


def execute_run(task: RunTask) -> RunOutcome:
    """Train and certify one run (see the module docstring); an ``Exception`` becomes a failed outcome.

    ``KeyboardInterrupt`` and other ``BaseException`` propagate: an interrupted run is not a result.
    """
    start = time.monotonic()
    try:
        with one_thread():
            return _execute(task, start)
    except Exception as error:  # noqa: BLE001 - a failing run is recorded, the sweep goes on
        return RunOutcome.failure(task.key, error, seconds=time.monotonic() - start)


def _execute(task: RunTask, start: float) -> RunOutcome:
    from relaxlab.api import select_relaxations
    from relaxlab.evaluation.certify import certify
    from relaxlab.store import environment
    from relaxlab.training.checkpoint import CheckpointError
    from relaxlab.training.config import from_dict
    from relaxlab.training.trainer import CHECKPOINT_NAME, subset, train

    config = from_dict(task.config)
    full = _full_data(config.dataset, config.data_dir)
    run_dir = Path(task.run_dir)
    resume = (run_dir / CHECKPOINT_NAME).is_file()
    try:
        result = train(config, run_dir, resume=resume, data=full, device="cpu")
    except CheckpointError:  # an unreadable checkpoint from an earlier attempt: start over
        (run_dir / CHECKPOINT_NAME).unlink()
        result = train(config, run_dir, data=full, device="cpu")
    data = subset(full, config)
    n = task.n or int(data.test_y.shape[0])
    relaxations = select_relaxations(list(task.certifiers))
    classes = data.dataset.num_classes
    tests = certify(
        result.model,
        data.test_x[:n],
        data.test_y[:n],
        task.eps,
        relaxations,
        num_classes=classes,
        pgd=task.pgd,
    )
    vals: list[Any] = [None] * len(relaxations)
    if data.val_x is not None and data.val_y is not None:
        vals = certify(
            result.model, data.val_x, data.val_y, task.eps, relaxations, num_classes=classes, pgd=False
        )
    outcomes = tuple(
        CertifyOutcome(
            certifier=name,
            eps=task.eps,
            n=test.n,
            accuracy=test.accuracy,
            pgd=test.pgd,
            certified=test.certified,
            val_n=0 if val is None else val.n,
            val_accuracy=None if val is None else val.accuracy,
            val_certified=None if val is None else val.certified,
        )
        for name, test, val in zip(task.certifiers, tests, vals, strict=True)
    )
    return RunOutcome(
        key=task.key,
        status="done",
        history=result.history,
        final=result.final,
        certify=outcomes,
        environment=environment("cpu"),
        seconds=time.monotonic() - start,
    )
