"""Training configuration: an attrs frozen value read from TOML (``tomllib``).

Every knob of the paper's App. F.1 is a key; a run is fully determined by its config (and the
data files). Unknown keys are refused with the valid keys listed, and values are checked before
any work starts. Names of relaxations, architectures and datasets are checked against the
registry by :func:`validate_names` (kept separate so that building a config stays cheap).
"""

from __future__ import annotations

import difflib
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from relaxlab.api import get_registry, get_relaxation
from relaxlab.core.convert import as_tuple
from relaxlab.engine.box import check_eps
from relaxlab.engine.fusion import check_fusable
from relaxlab.training.augment import AUGMENTATIONS

if TYPE_CHECKING:
    from relaxlab.architectures import Architecture
    from relaxlab.core.relaxation import ReluRelaxation
    from relaxlab.data.datasets import Dataset
    from relaxlab.objectives import Objective

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

METHODS = ("certified", "crown-ibp", "natural")
LR_SCHEDULES = ("constant", "milestones", "steps")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it and the fix."""


def _fraction(_instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{attribute.name} must be in [0, 1], got {value}")


def _radius(name: str) -> Any:
    def check(_instance: Any, _attribute: Any, value: float) -> None:
        try:
            check_eps(value, maximum=1.0, name=name)
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from None

    return check


def _non_negative(_instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{attribute.name} must be a finite number >= 0, got {value}")
    if value < 0:
        raise ConfigError(f"{attribute.name} must be >= 0, got {value}")


def _positive(_instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # nan <= 0 is false: say it
        raise ConfigError(f"{attribute.name} must be a finite number > 0, got {value}")
    if value <= 0:
        raise ConfigError(f"{attribute.name} must be > 0, got {value}")


#: The seeds torch accepts (``torch.manual_seed``).
SEED_RANGE = (-(2**63), 2**64 - 1)


def _seed(_instance: Any, _attribute: Any, value: int) -> None:
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise ConfigError(
            f"seed must be an integer in [-2**63, 2**64 - 1] (what torch can seed with), got {value}"
        )


def _milestones(_instance: Any, _attribute: Any, value: tuple[int, ...]) -> None:
    if not all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in value):
        raise ConfigError(
            f"lr_milestones must be epochs, integers >= 0 (the epoch at which the new rate starts), got {list(value)}"
        )


def _validation_size(_instance: Any, _attribute: Any, value: int | float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"validation must be a count or a fraction, got {value!r}")
    if isinstance(value, float) and not 0.0 <= value < 1.0 or isinstance(value, int) and value < 0:
        raise ConfigError(
            f"validation must be a count of images (an int >= 0) or a fraction of the training split "
            f"in [0, 1) (a float), got {value!r}"
        )


def _no_zero_float(value: Any) -> Any:
    """``0.0`` and ``0`` both mean "no validation split"; keep one spelling (configs hash the same)."""
    return 0 if isinstance(value, float) and value == 0.0 else value


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ConfigError(f"{attribute.name} must be one of {list(choices)}, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class TrainConfig:
    """All knobs of one training run (defaults: a short CPU-friendly schedule).

    :param name: run name (directory name under the output root).
    :param dataset: registry name of the dataset.
    :param data_dir: directory with the dataset files (``None``: probe the defaults).
    :param architecture: registry name of the architecture (Table 7).
    :param method: ``certified`` (train with ``relaxation``), ``crown-ibp`` (the CROWN-IBP defense:
        CROWN-IBP (R) and IBP losses mixed with beta ramped 1 -> 0 over the ramp-up), or ``natural``.
    :param relaxation: relaxation for ``certified`` training.
    :param objective: what ``certified`` training minimises, a registered objective with optional
        parameters (:mod:`relaxlab.objectives`): ``kappa-mix`` (the paper's loss, the default),
        ``CROWN-IBP``, ``SABR(lambda=0.6)``, ``MTL-IBP(alpha=0.5)``, ``CC-IBP``, ``EXP-IBP``, or a
        plugin's. ``method = "crown-ibp"`` is the ``CROWN-IBP`` objective with CROWN-IBP (R).
    :param epochs: total epochs.
    :param warmup_epochs: N_w, natural training epochs at the start (kappa = kappa_start, eps = 0).
    :param rampup_epochs: N_r, epochs over which eps rises linearly (per step) from ``eps_start`` to
        ``eps_train`` and kappa moves from ``kappa_start`` to ``kappa_end``.
    :param eps_train: training radius in pixel space ``[0, 1]``.
    :param eps_start: radius at the start of the ramp-up.
    :param eps_test: radius used for the per-epoch certified evaluation.
    :param kappa_start: weight of the natural loss at the start.
    :param kappa_end: weight of the natural loss after the ramp-up.
    :param elision: elide the last layer with the margin specification.
    :param lr: Adam's initial learning rate alpha.
    :param lr_schedule: ``constant``, ``milestones`` (x ``lr_factor`` at each of ``lr_milestones``) or
        ``steps`` (x ``lr_factor`` every ``lr_step_every`` epochs).
    :param lr_milestones: epochs (0-based, the epoch at which the new rate starts).
    :param lr_step_every: period of the ``steps`` schedule.
    :param lr_factor: multiplier; ``None``: 0.1 for milestones, 0.5 for steps (the paper's choices).
    :param l1: L1 regularisation strength lambda on weights.
    :param batch_size: training batch size.
    :param eval_batch_size: batch size for evaluation and bounds at test time.
    :param seed: seeds initialisation and data order.
    :param grad_clip: max gradient norm (0: off).
    :param validation: images held out of the training split for validation (model selection): a
        count (int) or a fraction of the training split (float in (0, 1)); 0: none. They are drawn
        by a fixed permutation (the same for every seed and run), never trained on, and evaluated
        (accuracy, certified robustness) at the end of training.
    :param train_subset: use the first n training examples (0: all; counted after the validation
        images are held out).
    :param test_subset: evaluate on the first n test examples (0: all).
    :param max_batches: stop each epoch after this many batches (0: no limit).
    :param track_every: call the analysis tracking callback every k steps (0: off).
    :param eval_every: certified evaluation on the test subset every k epochs (0: only at the end).
    :param smoothing_samples: Gaussian loss smoothing in weight space (Balauca et al. 2024): each
        step's gradient is the mean of the gradients at this many perturbed weights
        ``theta + smoothing_sigma * eps_i`` (:mod:`relaxlab.training.smoothing`); 0: off.
    :param smoothing_sigma: the perturbations' standard deviation (> 0 when smoothing is on, 0 when off).
    :param augment: data augmentation of training batches: ``none`` or ``flip-crop`` (CTBench's CIFAR
        augmentation: random horizontal flip, random crop from the image edge-padded by 2 pixels;
        :mod:`relaxlab.training.augment`), drawn per step from a generator seeded by ``(seed, step)``.
    :param loss_fusion: bound the robust cross-entropy directly with one backsubstituted row per
        example instead of one per class (:mod:`relaxlab.engine.fusion`); needs ``elision`` and
        relaxations whose intermediate bounds are intervals.
    """

    name: str = "run"
    dataset: str = "mnist-mini"
    data_dir: str | None = None
    architecture: str = "CONV"
    method: str = attrs.field(default="certified", validator=_one_of(METHODS))
    relaxation: str = "IBP"
    objective: str = "kappa-mix"
    epochs: int = attrs.field(default=10, validator=_positive)
    warmup_epochs: int = attrs.field(default=0, validator=_non_negative)
    rampup_epochs: int = attrs.field(default=0, validator=_non_negative)
    eps_train: float = attrs.field(default=0.3, validator=_radius("eps_train"))
    eps_start: float = attrs.field(default=0.0, validator=_radius("eps_start"))
    eps_test: float = attrs.field(default=0.3, validator=_radius("eps_test"))
    kappa_start: float = attrs.field(default=1.0, validator=_fraction)
    kappa_end: float = attrs.field(default=0.0, validator=_fraction)
    elision: bool = True
    lr: float = attrs.field(default=5e-4, validator=_positive)
    lr_schedule: str = attrs.field(default="constant", validator=_one_of(LR_SCHEDULES))
    lr_milestones: tuple[int, ...] = attrs.field(default=(), converter=as_tuple, validator=_milestones)
    lr_step_every: int = attrs.field(default=20, validator=_positive)
    lr_factor: float | None = None
    l1: float = attrs.field(default=0.0, validator=_non_negative)
    batch_size: int = attrs.field(default=100, validator=_positive)
    eval_batch_size: int = attrs.field(default=200, validator=_positive)
    seed: int = attrs.field(default=0, validator=_seed)
    grad_clip: float = attrs.field(default=0.0, validator=_non_negative)
    validation: int | float = attrs.field(default=0, converter=_no_zero_float, validator=_validation_size)
    train_subset: int = attrs.field(default=0, validator=_non_negative)
    test_subset: int = attrs.field(default=0, validator=_non_negative)
    max_batches: int = attrs.field(default=0, validator=_non_negative)
    track_every: int = attrs.field(default=0, validator=_non_negative)
    eval_every: int = attrs.field(default=0, validator=_non_negative)
    smoothing_samples: int = attrs.field(default=0, validator=_non_negative)
    smoothing_sigma: float = attrs.field(default=0.0, validator=_non_negative)
    loss_fusion: bool = False
    augment: str = attrs.field(default="none", validator=_one_of(AUGMENTATIONS))

    def __attrs_post_init__(self) -> None:
        if self.eps_start > self.eps_train:
            raise ConfigError(f"eps_start ({self.eps_start}) must not exceed eps_train ({self.eps_train})")
        if self.warmup_epochs + self.rampup_epochs > self.epochs:
            raise ConfigError(
                f"warmup_epochs + rampup_epochs ({self.warmup_epochs} + {self.rampup_epochs}) exceed "
                f"epochs ({self.epochs})"
            )
        if self.lr_factor is not None and not 0 < self.lr_factor <= 1:
            raise ConfigError(f"lr_factor must be in (0, 1], got {self.lr_factor}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"name must be a plain directory name, got {self.name!r}")
        self._check_smoothing()
        if self.loss_fusion and self.method == "natural":
            raise ConfigError(
                "loss_fusion bounds the robust loss, which method = 'natural' does not have; "
                "choose method 'certified' or 'crown-ibp', or set loss_fusion = false"
            )
        if self.objective != OFF_BY_DEFAULT["objective"] and self.method != "certified":
            raise ConfigError(
                f"objective {self.objective!r} needs method = 'certified' (method {self.method!r} "
                + ("has no robust loss" if self.method == "natural" else "is the CROWN-IBP objective already")
                + "); set method = 'certified' or leave objective out"
            )
        if self.loss_fusion and not self.elision:
            raise ConfigError(
                "loss_fusion folds its one row per example into the last layer, as elision does; "
                "set elision = true or loss_fusion = false"
            )

    def _check_smoothing(self) -> None:
        if not math.isfinite(self.smoothing_sigma):
            raise ConfigError(f"smoothing_sigma must be a finite number, got {self.smoothing_sigma}")
        if self.smoothing_samples > 0 and self.smoothing_sigma <= 0:
            raise ConfigError(
                f"smoothing_sigma must be > 0 when smoothing_samples > 0 (got smoothing_samples = "
                f"{self.smoothing_samples}, smoothing_sigma = {self.smoothing_sigma}); set smoothing_sigma to the "
                "noise scale in weight space (e.g. 0.01), or smoothing_samples = 0 to train without smoothing"
            )
        if self.smoothing_samples == 0 and self.smoothing_sigma > 0:
            raise ConfigError(
                f"smoothing_sigma = {self.smoothing_sigma} has no effect with smoothing_samples = 0 (smoothing "
                "off); set smoothing_samples > 0 to smooth, or leave smoothing_sigma at 0"
            )

    @property
    def train_relaxations(self) -> tuple[str, ...]:
        """Relaxations the loss uses (by name)."""
        if self.method == "natural":
            return ()
        if self.method == "crown-ibp":
            return ("CROWN-IBP (R)", "IBP")
        return (self.relaxation,)

    @property
    def objective_label(self) -> str:
        """The objective as reports show it (``SABR(lambda=0.6)`` as the registry spells it), ``CROWN-IBP``
        for the defense, ``-`` for natural training."""
        if self.method != "certified":
            return {"natural": "-", "crown-ibp": "CROWN-IBP"}[self.method]
        try:
            return get_registry().objectives.get(self.objective).label
        except (LookupError, ValueError):  # not installed here: as the config spells it
            return self.objective

    @property
    def label(self) -> str:
        """Row label in reports: the relaxation, ``CROWN-IBP`` for the defense, ``natural``."""
        return {"natural": "natural", "crown-ibp": "CROWN-IBP"}.get(self.method, self.relaxation)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists for tuples); the keys of :data:`OFF_BY_DEFAULT` only when on."""
        data = attrs.asdict(self)
        data["lr_milestones"] = list(self.lr_milestones)
        for key, off in OFF_BY_DEFAULT.items():
            if data[key] == off:
                del data[key]
        return data

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): what checkpoints and the store hold."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (validated like a fresh config; unknown keys refused)."""
        return from_dict({**self.to_dict(), **changes})


#: Options added after runs were recorded, with their "off" value. A config that leaves them off
#: writes no such key, so its JSON (checkpoints) and its sweep run id stay what they were before
#: the option existed; reading fills in the default.
OFF_BY_DEFAULT: dict[str, Any] = {
    "smoothing_samples": 0,
    "smoothing_sigma": 0.0,
    "loss_fusion": False,
    "objective": "kappa-mix",
    "augment": "none",
}


def valid_keys() -> list[str]:
    """The keys a config may have."""
    return [field.name for field in attrs.fields(TrainConfig)]


def unknown_keys(keys: Iterable[str], valid: Sequence[str]) -> str:
    """The ``keys`` not in ``valid``, quoted, each with close valid names suggested ("" when none).

    :param keys: the keys given.
    :param valid: the keys allowed.
    """
    hints = []
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=2)
            hints.append(f"{key!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
    return ", ".join(hints)


def from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Build a config from a mapping, refusing unknown keys (with close names suggested).

    :param data: key -> value (a ``[train]`` table or the top level of a TOML file).
    :return: the validated config.
    :raises ConfigError: unknown key, wrong type or invalid value.
    """
    keys = valid_keys()
    unknown = unknown_keys(data, keys)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {', '.join(keys)}")
    fields = {field.name: field for field in attrs.fields(TrainConfig)}
    clean: dict[str, Any] = {}
    for key, value in data.items():
        default = fields[key].default
        expected = type(default) if default is not None and default is not attrs.NOTHING else None
        if key == "lr_factor" and value is not None:
            expected = float
        if key == "data_dir" and value is not None:
            expected = str
        if key == "validation" and isinstance(value, float):
            expected = float  # a fraction; an int is a count
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is tuple and isinstance(value, list):
            value = tuple(value)
        if (
            expected is not None
            and not isinstance(value, expected)
            or (expected is int and isinstance(value, bool))
        ):
            raise ConfigError(f"config key {key!r} must be {expected.__name__}, got {value!r}")
        clean[key] = value
    return TrainConfig(**clean)


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Parse a TOML file.

    :param path: the file.
    :param what: what the file is, for error messages.
    :raises ConfigError: the file is missing or not valid TOML.
    """
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))  # TOML is UTF-8, whatever the locale
    except FileNotFoundError as error:
        raise ConfigError(f"{what} {path} does not exist") from error
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte {error.start}: {error.reason}); "
            "save it as UTF-8, as TOML requires"
        ) from error
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be read: {error.strerror or error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{what} {path} is not valid TOML: {error}") from error


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a TOML config file (keys at the top level, or in a ``[train]`` table).

    :param path: the ``.toml`` file.
    :param overrides: keys that replace the file's values (``None`` values are ignored).
    :return: the validated config.
    """
    path = Path(path)
    data = read_toml(path)
    if "train" in data and isinstance(data["train"], dict):
        extra = [k for k in data if k != "train"]
        if extra:
            raise ConfigError(f"config file {path}: keys {extra} outside [train]; put every key in [train]")
        data = data["train"]
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"config file {path}: {error}") from error


@attrs.frozen(kw_only=True)
class Resolved:
    """What the names of a config stand for in the registry."""

    dataset: Dataset
    architecture: Architecture
    relaxations: tuple[ReluRelaxation, ...]
    objective: Objective | None = None


def validate_names(config: TrainConfig) -> Resolved:
    """The registry's dataset, architecture, relaxations and objective for the config's names.

    :raises ConfigError: an unknown (close names suggested) or unsound name; an objective parameter
        it does not have or out of its range; a relaxation that loss fusion does not take
        (:func:`relaxlab.engine.fusion.check_fusable`) when it is on, or an objective whose
        certified term is not the ε-box cross-entropy fusion bounds.
    """
    registry = get_registry()
    try:
        objective = None
        if config.method != "natural":
            objective = registry.objectives.get(
                "CROWN-IBP" if config.method == "crown-ibp" else config.objective
            )
        resolved = Resolved(
            dataset=registry.datasets[config.dataset],
            architecture=registry.architectures[config.architecture],
            relaxations=tuple(get_relaxation(name) for name in config.train_relaxations),
            objective=objective,
        )
        if config.loss_fusion:
            for relaxation in resolved.relaxations:
                check_fusable(relaxation)
            if objective is not None and not objective.fusable:
                raise ValueError(
                    f"loss_fusion bounds the cross-entropy over the ε-box, which objective {objective.label!r} does "
                    "not use (it bounds other boxes or combines margins); set loss_fusion = false"
                )
    except (LookupError, ValueError) as error:
        raise ConfigError(str(error)) from error
    return resolved
