"""The certified-training loop (App. F.1 of the paper), reproducible and resumable.

:func:`train` runs a :class:`~relaxlab.training.config.TrainConfig`: it seeds torch, builds the
architecture, iterates over the training data in an order drawn from a seeded
``torch.Generator``, and minimises ``kappa * CE(natural) + (1 - kappa) * CE(worst case) + l1 |W|``
with Adam under the warm-up / ramp-up schedule, or another training objective
(:mod:`relaxlab.objectives`: SABR, MTL-IBP, ...; their attacks start from points drawn from a
generator seeded per step, so a resumed run attacks as an uninterrupted one) (optionally with the gradient of the loss smoothed
in weight space, :mod:`relaxlab.training.smoothing`, and the robust term fused,
:mod:`relaxlab.engine.fusion`). After every epoch it writes an atomic checkpoint
(model, optimizer, both RNG states, history), logs the epoch's metrics to the results store, and
can be resumed from that checkpoint to exactly the result of an uninterrupted run (same thread
count and device).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import Tensor, nn

from relaxlab.api import get_relaxation
from relaxlab.evaluation.certify import certify
from relaxlab.store import Store, environment
from relaxlab.training.augment import flip_crop
from relaxlab.training.checkpoint import (
    CheckpointError,
    build_model,
    make_payload,
    read_checkpoint,
    save_checkpoint,
)
from relaxlab.training.config import ConfigError, TrainConfig, from_dict, valid_keys, validate_names
from relaxlab.training.loss import training_loss
from relaxlab.training.schedule import ScheduleValues, learning_rate, schedule_at, step_seed
from relaxlab.training.smoothing import noise_generator, smoothed_backward, update_running_stats

if TYPE_CHECKING:
    from relaxlab.architectures import Architecture
    from relaxlab.data.datasets import Dataset
    from relaxlab.objectives import Objective

#: ``callback(step=, model=, batch=(x, y), eps=, relaxation=, store=, run_id=)``, called after each step.
Callback = Callable[..., None]

CHECKPOINT_NAME = "checkpoint.pt"


@attrs.frozen(kw_only=True)
class TrainResult:
    """What a training run produced.

    :param model: the trained network (eval mode).
    :param history: one dict of metrics per finished epoch.
    :param checkpoint: path of the last checkpoint.
    :param run_id: the run's id in the store (``None`` without a store).
    :param final: final evaluation metrics (test accuracy, certified robustness).
    :param finished: False when the run stopped early (``stop_after``).
    """

    model: nn.Sequential = attrs.field(eq=False)
    history: list[dict[str, float]]
    checkpoint: Path
    run_id: int | None
    final: dict[str, float]
    finished: bool


@attrs.frozen(kw_only=True)
class Data:
    """Loaded (and subset) train and test tensors of a run, and the held-out validation images."""

    dataset: Dataset
    train_x: Tensor = attrs.field(eq=False)
    train_y: Tensor = attrs.field(eq=False)
    test_x: Tensor = attrs.field(eq=False)
    test_y: Tensor = attrs.field(eq=False)
    val_x: Tensor | None = attrs.field(default=None, eq=False)
    val_y: Tensor | None = attrs.field(default=None, eq=False)


#: Seed of the permutation that picks validation images: the same split for every run and seed.
VALIDATION_SEED = 20220401


def validation_split(n: int, validation: int | float) -> tuple[Tensor, Tensor]:
    """``(train_index, validation_index)`` of a training split of ``n`` images, both ascending.

    :param n: size of the training split.
    :param validation: a count, or a fraction of ``n`` (rounded to the nearest count).
    :raises ConfigError: the validation split would leave no training image.
    """
    count = int(round(validation * n)) if isinstance(validation, float) else int(validation)
    if not 0 < count < n:
        raise ConfigError(
            f"validation = {validation!r} holds out {count} of {n} training images; need 1 to {n - 1}"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    return order[count:].sort().values, order[:count].sort().values


def load_data(config: TrainConfig) -> Data:
    """Load the config's dataset (train and test splits, subset as configured)."""
    dataset = validate_names(config).dataset
    train_x, train_y = dataset.load("train", config.data_dir)
    test_x, test_y = dataset.load("test", config.data_dir)
    return subset(
        Data(dataset=dataset, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y), config
    )


def subset(data: Data, config: TrainConfig) -> Data:
    """Hold out the validation images (unless ``data`` holds them out already), then take the first
    ``train_subset`` / ``test_subset`` examples (all when 0)."""
    if config.validation and data.val_x is None:
        keep, held = validation_split(int(data.train_y.shape[0]), config.validation)
        data = attrs.evolve(
            data,
            train_x=data.train_x[keep],
            train_y=data.train_y[keep],
            val_x=data.train_x[held],
            val_y=data.train_y[held],
        )
    n_train = config.train_subset or int(data.train_y.shape[0])
    n_test = config.test_subset or int(data.test_y.shape[0])
    return attrs.evolve(
        data,
        train_x=data.train_x[:n_train],
        train_y=data.train_y[:n_train],
        test_x=data.test_x[:n_test],
        test_y=data.test_y[:n_test],
    )


def steps_per_epoch(config: TrainConfig, n_train: int) -> int:
    """Optimisation steps in one epoch of ``n_train`` examples (``max_batches`` caps them).

    :param config: the run's config (batch size, ``max_batches``).
    :param n_train: training examples.
    :return: the number of batches of one epoch.
    """
    batches = -(-n_train // config.batch_size)
    return min(batches, config.max_batches) if config.max_batches else batches


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def check_resumable(payload: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume from a checkpoint of a different run."""
    saved = from_dict(json.loads(payload["config"]))
    if saved != config:
        diff = {
            k: (getattr(saved, k), getattr(config, k))
            for k in valid_keys()
            if getattr(saved, k) != getattr(config, k)
        }
        raise CheckpointError(
            f"cannot resume from {path}: it was written by a run with a different config "
            f"(checkpoint vs now: {diff}); use the same config or a new output directory"
        )


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    store: Store | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    stop_after: int | None = None,
    device: torch.device | str | None = None,
    data: Data | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a network as ``config`` says, checkpointing into ``out_dir`` after every epoch.

    :param config: the run's config (names are resolved before any work; bad names raise).
    :param out_dir: directory for ``checkpoint.pt`` and ``history.json``.
    :param store: results store; the run, its config, environment and per-epoch metrics go there.
    :param resume: continue from ``out_dir/checkpoint.pt`` (must come from the same config).
    :param callbacks: called after every optimisation step with keyword arguments ``step``,
        ``model``, ``batch`` (``(x, y)``), ``eps``, ``relaxation`` (the first relaxation of the loss,
        ``None`` for natural training), ``store`` and ``run_id``.
    :param progress: called once before the first step with the run's name and the number of
        optimisation steps this call will take; it returns the callback called with ``1`` after
        every step; called again for the final certification with ``"<name> final certification"``
        and the number of test images, its callback then counts images (default: no progress; the
        CLI passes its reporter).
    :param stop_after: stop after this many finished epochs (simulates an interruption).
    :param device: where to train (default: CUDA when available, else CPU).
    :param data: pre-loaded data of the config's dataset (subset as the config says; default: loaded).
    :param log: called with one line per epoch (default: nothing).
    :return: the trained model, its history and where it was saved.
    :raises ConfigError: unknown names; :class:`CheckpointError`: nothing or a foreign checkpoint to resume.
    """
    resolved = validate_names(config)
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    payload: dict[str, Any] | None = None
    if resume:
        payload = read_checkpoint(checkpoint_path)
        check_resumable(payload, config, checkpoint_path)
    elif checkpoint_path.exists():
        raise ConfigError(
            f"{checkpoint_path} already exists; pass --resume to continue that run or choose another --out"
        )
    data = load_data(config) if data is None else subset(data, config)
    if int(data.train_y.shape[0]) == 0:
        raise ConfigError(
            f"the training split of {config.dataset!r} is empty; check data_dir and train_subset"
        )
    if data.dataset.name != resolved.dataset.name:
        raise ConfigError(f"data of dataset {data.dataset.name!r} given for a config of {config.dataset!r}")
    device = _default_device() if device is None else torch.device(device)
    state = _start(config, resolved.architecture, data.dataset, payload, checkpoint_path, device)
    if store is not None:
        state.run_id = _open_run(store, state, config, device, out_dir)
    loop = _Loop(
        config=config,
        data=data,
        relaxations=resolved.relaxations,
        objective=resolved.objective,
        callbacks=tuple(callbacks),
        store=store,
    )
    finished = True
    try:
        last = config.epochs if stop_after is None else max(min(stop_after, config.epochs), state.epoch)
        steps = (last - state.epoch) * steps_per_epoch(config, int(data.train_y.shape[0]))
        step_done = progress(config.name, steps) if progress is not None else None
        for epoch in range(state.epoch, config.epochs):
            if stop_after is not None and epoch >= stop_after:
                finished = False
                break
            metrics = loop.epoch(state, epoch, step_done)
            state.history.append(metrics)
            if store is not None and state.run_id is not None:
                store.log_metrics(state.run_id, state.step - 1, metrics)
            save_checkpoint(
                checkpoint_path, _payload(state, config, resolved.architecture.name, data.dataset)
            )
            if log is not None:
                log(_format_epoch(config, metrics))
    except BaseException:
        if store is not None and state.run_id is not None:
            store.finish_run(state.run_id, "failed")
        raise
    final: dict[str, float] = {}
    if finished:
        images = (
            progress(f"{config.name} final certification", int(data.test_y.shape[0])) if progress else None
        )
        final = evaluate(state.model, data, config, resolved.relaxations, progress=images)
        if data.val_x is not None and data.val_y is not None:
            held_out = attrs.evolve(data, test_x=data.val_x, test_y=data.val_y)
            final.update(
                {
                    f"val_{k[5:]}": v
                    for k, v in evaluate(state.model, held_out, config, resolved.relaxations).items()
                }
            )
        if store is not None and state.run_id is not None:
            store.log_metrics(state.run_id, max(state.step - 1, 0), final)
            store.finish_run(state.run_id, "done")
        (out_dir / "history.json").write_text(
            json.dumps({"history": state.history, "final": final}, indent=1)
        )
    elif store is not None and state.run_id is not None:
        store.finish_run(state.run_id, "interrupted")
    state.model.eval()
    return TrainResult(
        model=state.model,
        history=state.history,
        checkpoint=checkpoint_path,
        run_id=state.run_id,
        final=final,
        finished=finished,
    )


@attrs.define(eq=False)
class _State:
    """What a run carries from one epoch to the next (and what its checkpoint holds)."""

    model: nn.Sequential
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    history: list[dict[str, float]]
    epoch: int = 0
    step: int = 0
    run_id: int | None = None


def _start(
    config: TrainConfig,
    architecture: Architecture,
    dataset: Dataset,
    payload: dict[str, Any] | None,
    checkpoint_path: Path,
    device: torch.device,
) -> _State:
    """A fresh state from the config's seed, or the state a checkpoint saved."""
    torch.manual_seed(config.seed)
    model = architecture.build(dataset.input_shape, dataset.num_classes, dataset.mean, dataset.std)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    state = _State(model=model, optimizer=optimizer, generator=generator, history=[])
    if payload is not None:
        state.model = build_model(payload, source=str(checkpoint_path))
        state.optimizer = torch.optim.Adam(state.model.parameters(), lr=config.lr)
        if payload.get("optimizer") is not None:
            state.optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["rng_torch"])
        generator.set_state(payload["rng_generator"])
        state.epoch, state.step = int(payload["epoch"]), int(payload["step"])
        state.history = json.loads(payload["history"])
        state.run_id = payload.get("run_id")
    state.model.to(device)
    _optimizer_to(state.optimizer, device)
    return state


def _open_run(store: Store, state: _State, config: TrainConfig, device: torch.device, out_dir: Path) -> int:
    """The run's id in the store: the interrupted run reopened, or a new one with the history so far.

    The record's config is the run's, plus ``run_dir``: where its checkpoint is (reports tell
    runs of one config apart by it, and match them to the certifications of that checkpoint).
    """
    if state.run_id is not None and any(r.id == state.run_id for r in store.runs(kind="train")):
        store.reopen_run(state.run_id, config=config.to_dict())  # refused when the id is another run here
        # metrics are logged at global step indices; drop what the interrupted run logged after
        # its last checkpoint (the resumed run logs it again, identically)
        store.delete_metrics_from(state.run_id, state.step)
        return state.run_id
    run_id = store.create_run(
        "train", {**config.to_dict(), "run_dir": str(out_dir)}, name=config.name, env=environment(str(device))
    )
    for metrics in state.history:
        store.log_metrics(run_id, int(metrics["step"]), metrics)
    return run_id


@attrs.frozen(kw_only=True)
class _Loop:
    """One epoch of certified training: batches, schedule, loss, step, callbacks."""

    config: TrainConfig
    data: Data
    relaxations: tuple[Any, ...]
    objective: Objective | None
    callbacks: tuple[Callback, ...]
    store: Store | None

    def epoch(
        self, state: _State, epoch: int, step_done: Callable[[int], None] | None = None
    ) -> dict[str, float]:
        """Train one epoch from ``state`` (updated in place); the epoch's metrics.

        :param step_done: called with ``1`` after every optimisation step.
        """
        config, data = self.config, self.data
        n = int(data.train_y.shape[0])
        batches = steps_per_epoch(config, n)
        lr = learning_rate(config, epoch)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        order = torch.randperm(n, generator=state.generator)
        state.model.train()
        device = next(state.model.parameters()).device
        sums: dict[str, float] = {}
        count = 0
        for b in range(batches):
            index = order[b * config.batch_size : (b + 1) * config.batch_size]
            x, y = data.train_x[index].to(device), data.train_y[index].to(device)
            if config.augment == "flip-crop":
                x = flip_crop(
                    x, torch.Generator().manual_seed(step_seed("augmentation", config.seed, state.step))
                )
            values = schedule_at(config, state.step, batches)
            parts = self._step(state, x, y, values, epoch)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value * int(y.shape[0])
            count += int(y.shape[0])
            state.step += 1
            if step_done is not None:
                step_done(1)
        state.epoch = epoch + 1
        metrics = {f"train_{k}": v / max(count, 1) for k, v in sums.items()}
        metrics.update(
            {
                "epoch": float(epoch + 1),
                "step": float(state.step - 1),
                "lr": lr,
                "eps": values.eps,
                "kappa": values.kappa,
            }
        )
        if config.method == "crown-ibp":
            metrics["beta"] = values.beta
        if config.eval_every and (epoch + 1) % config.eval_every == 0 and epoch + 1 != config.epochs:
            metrics.update(evaluate(state.model, data, config, self.relaxations))
        return metrics

    def _step(
        self, state: _State, x: Tensor, y: Tensor, values: ScheduleValues, epoch: int
    ) -> dict[str, float]:
        config = self.config
        starts = torch.Generator().manual_seed(step_seed("attack starts", config.seed, state.step))

        def loss_fn() -> tuple[Tensor, dict[str, float]]:
            loss, parts = training_loss(
                state.model,
                x,
                y,
                eps=values.eps,
                kappa=values.kappa,
                beta=values.beta,
                relaxations=self.relaxations,
                num_classes=self.data.dataset.num_classes,
                elision=config.elision,
                l1=config.l1,
                fusion=config.loss_fusion,
                objective=self.objective,
                generator=starts,
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {float(loss)} at epoch {epoch + 1}, step {state.step}; lower lr or add "
                    "grad_clip" + (" or lower smoothing_sigma" if config.smoothing_samples else "")
                )
            return loss, parts

        if config.smoothing_samples:
            parts = smoothed_backward(
                state.model,
                loss_fn,
                samples=config.smoothing_samples,
                sigma=config.smoothing_sigma,
                generator=noise_generator(config.seed, state.step),
            )
            update_running_stats(state.model, x)
        else:
            loss, parts = loss_fn()
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
        state.optimizer.step()
        for callback in self.callbacks:
            callback(
                step=state.step,
                model=state.model,
                batch=(x, y),
                eps=values.eps,
                relaxation=self.relaxations[0] if self.relaxations else None,
                store=self.store,
                run_id=state.run_id,
            )
        return parts


def _payload(state: _State, config: TrainConfig, architecture: str, dataset: Dataset) -> dict[str, Any]:
    return make_payload(
        config_json=config.to_json(),
        architecture=architecture,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        mean=dataset.mean,
        std=dataset.std,
        model=state.model,
        optimizer=state.optimizer,
        generator=state.generator,
        epoch=state.epoch,
        step=state.step,
        history=state.history,
        run_id=state.run_id,
    )


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, Tensor) and key != "step":
                state[key] = value.to(device)


def evaluate(
    model: nn.Module,
    data: Data,
    config: TrainConfig,
    relaxations: Sequence[Any],
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Test accuracy and certified robustness at ``eps_test`` with the first training relaxation.

    (PGD is left to :mod:`relaxlab.evaluation.certify`; natural training is certified with IBP.)
    ``test_n`` is the number of test images behind them.

    :param progress: called with the number of test images done after each batch.
    """
    relaxation = relaxations[0] if relaxations else get_relaxation("IBP")
    was_training = model.training
    result = certify(
        model,
        data.test_x.to(next(model.parameters()).device),
        data.test_y.to(next(model.parameters()).device),
        config.eps_test,
        [relaxation],
        num_classes=data.dataset.num_classes,
        pgd=False,
        batch_size=config.eval_batch_size,
        progress=progress,
    )[0]
    model.train(was_training)
    return {"test_accuracy": result.accuracy, "test_certified": result.certified, "test_n": float(result.n)}


def _format_epoch(config: TrainConfig, metrics: dict[str, float]) -> str:
    parts = [f"epoch {int(metrics['epoch'])}/{config.epochs}"]
    for key in ("train_loss", "train_accuracy", "eps", "kappa", "lr", "test_accuracy", "test_certified"):
        if key in metrics:
            parts.append(f"{key}={metrics[key]:.4g}")
    return " ".join(parts)
