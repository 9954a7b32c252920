"""The paper's training schedule (App. F.1): warm-up, ramp-up of eps/kappa/beta, learning rate.

Warm-up (``N_w`` epochs): natural training, eps = 0 and kappa = kappa_start. Ramp-up (``N_r``
epochs): eps rises linearly per step from ``eps_start`` to ``eps_train``, kappa moves linearly from
``kappa_start`` to ``kappa_end`` and the CROWN-IBP defense's beta from 1 to 0. Afterwards the end
values hold. The learning rate is a pure function of the epoch, so a resumed run needs no
scheduler state.
"""

from __future__ import annotations

import hashlib

import attrs

from relaxlab.training.config import TrainConfig


@attrs.frozen
class ScheduleValues:
    """Schedule values at one step.

    :param eps: perturbation radius.
    :param kappa: weight of the natural loss.
    :param beta: weight of the CROWN-IBP (R) loss in the CROWN-IBP defense (IBP gets 1 - beta).
    """

    eps: float
    kappa: float
    beta: float


def schedule_at(config: TrainConfig, step: int, steps_per_epoch: int) -> ScheduleValues:
    """Schedule values at global ``step`` (0-based); natural training always has kappa = 1, eps = 0.

    :param config: the run's config.
    :param step: global step index.
    :param steps_per_epoch: batches per epoch.
    :return: eps, kappa and beta for that step.
    """
    if config.method == "natural":
        return ScheduleValues(eps=0.0, kappa=1.0, beta=1.0)
    warmup = config.warmup_epochs * steps_per_epoch
    rampup = config.rampup_epochs * steps_per_epoch
    if step < warmup:
        return ScheduleValues(eps=0.0, kappa=config.kappa_start, beta=1.0)
    if step < warmup + rampup:
        t = (step - warmup + 1) / rampup
        return ScheduleValues(
            eps=config.eps_start + t * (config.eps_train - config.eps_start),
            kappa=config.kappa_start + t * (config.kappa_end - config.kappa_start),
            beta=1.0 - t,
        )
    return ScheduleValues(eps=config.eps_train, kappa=config.kappa_end, beta=0.0 if rampup else 1.0)


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """Learning rate for ``epoch`` (0-based).

    :param config: the run's config.
    :param epoch: epoch index.
    :return: ``lr`` times the schedule's factor.
    """
    if config.lr_schedule == "milestones":
        factor = 0.1 if config.lr_factor is None else config.lr_factor
        return config.lr * factor ** sum(1 for m in config.lr_milestones if epoch >= m)
    if config.lr_schedule == "steps":
        factor = 0.5 if config.lr_factor is None else config.lr_factor
        return config.lr * factor ** (epoch // config.lr_step_every)
    return config.lr


def step_seed(purpose: str, seed: int, step: int) -> int:
    """The seed of the random draws for ``purpose`` at global step ``step`` of a run seeded ``seed``.

    A hash, so that the draws are unrelated to the other streams of the same seed (initialisation,
    data order, the other purposes) and to neighbouring steps; a resumed run draws what an
    uninterrupted one draws with nothing in the checkpoint. Purposes: ``"loss smoothing"``
    (:mod:`relaxlab.training.smoothing`), ``"attack starts"`` (the objectives' PGD),
    ``"augmentation"`` (:mod:`relaxlab.training.augment`).

    :return: a non-negative 63-bit integer.
    """
    digest = hashlib.sha256(f"relaxlab {purpose}: seed {seed}, step {step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
