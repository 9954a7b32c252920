"""The CLI's shared vocabulary: one spelling, one meaning and one check per option.

- ``-r/--relaxation``: relaxations, on every command that takes them (repeatable, comma lists,
  ``all`` and ``paper`` as :meth:`relaxlab.registry.RelaxationRegistry.select` defines them, and
  the names ``relaxlab discover`` prints);
- ``--out DIR``: the directory a command writes into (never a file); ``--plot FILE``: an image;
- ``--n N``: how many test images (the first N), on every command that counts them;
- ``--data-dir DIR``: where a dataset's files are, on every command that reads a dataset;
- ``--device``: where tensors are computed, on every command that trains, certifies or bounds;
- ``--wide``: tables unwrapped, on every command that prints one;
- ``--threads``, ``--quiet``/``-q``, ``--store``, ``--eps`` mean the same everywhere.

``tests/meta/test_cli_vocabulary.py`` walks every command and holds them to it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from relaxlab.cli.format import fail
from relaxlab.registry import SELECTORS

_SELECTORS = ", ".join(f"'{word}' ({meaning})" for word, meaning in SELECTORS.items())


def relaxation_option(*, default: str | None = None, help_text: str = "") -> Callable[[Any], Any]:
    """``-r/--relaxation``: names, comma lists, or the selectors; repeatable. Value: a tuple of strings."""
    text = help_text or "Relaxation name(s)"
    return click.option(
        "-r",
        "--relaxation",
        "relaxation",
        multiple=True,
        default=(default,) if default else (),
        show_default=default is not None,
        help=f"{text}: a name, a comma list, {_SELECTORS}, or a name `relaxlab discover` prints; repeatable.",
    )


def select(spec: tuple[str, ...], *, allow_unsound: bool = False) -> list[Any]:
    """The relaxations ``-r`` selected (errors become one clear line).

    A value the registry does not know that reads as a name discovery generates
    (``gen(neg 0..0, unst x..x-l, pos x..x) + loose-C``) is looked up among discovery's results,
    so that every name ``relaxlab discover`` prints can be given to ``-r`` as it is printed.

    :param allow_unsound: also names of registered relaxations that failed the soundness check
        (``check`` and ``show`` report on them; nothing else may use them).
    """
    from relaxlab.api import get_registry, get_relaxation

    registry = get_registry().relaxations
    chosen: list[Any] = []
    try:
        for value in spec:
            try:
                names = registry.select(value)
            except LookupError:
                if not value.strip().startswith("gen"):
                    raise
                chosen.append(discovered(value.strip()))
                continue
            chosen += [get_relaxation(name, allow_unsound=allow_unsound) for name in names]
        if not spec:
            registry.select(list(spec))  # the registry's own message for an empty selection
    except (LookupError, ValueError, TypeError) as error:
        fail(str(error))
    unique: dict[str, Any] = {}
    for relaxation in chosen:
        unique.setdefault(relaxation.label, relaxation)
    return list(unique.values())


def select_methods(spec: tuple[str, ...]) -> list[Any]:
    """:func:`select`, where an item may also be ``opt:NAME``: the relaxation NAME with its parameters
    optimised per neuron (:func:`relaxlab.api.get_method`). Errors become one clear line."""
    from relaxlab.api import get_method
    from relaxlab.engine.optimise import OPTIMISED_PREFIX
    from relaxlab.registry import split_names

    methods: list[Any] = []
    for part in spec:
        # a value with opt: items is split here (commas inside parentheses kept); any other goes to select whole
        for item in split_names(part) if OPTIMISED_PREFIX in part.lower() else [part]:
            if item.lower().startswith(OPTIMISED_PREFIX):
                try:
                    methods.append(get_method(item))
                except (LookupError, ValueError, TypeError) as error:
                    fail(str(error))
            else:
                methods += select((item,))
    if not spec:
        select(spec)  # the registry's message for an empty selection
    unique: dict[str, Any] = {}
    for method in methods:
        unique.setdefault(method.label, method)
    return list(unique.values())


def discovered(name: str) -> Any:
    """The relaxation ``relaxlab discover`` (default settings) prints as ``name``."""
    try:
        return _discovery().get(name).relaxation
    except KeyError:
        fail(
            f"unknown relaxation {name!r}: neither registered nor a name `relaxlab discover` prints "
            "(give it exactly as printed, one per -r)"
        )


@functools.lru_cache(maxsize=1)
def _discovery() -> Any:
    """Discovery with its default settings, run once per process (seconds; only for generated names)."""
    from relaxlab.api import get_registry
    from relaxlab.discovery import discover

    return discover(get_registry(), relations=False)


def one_relaxation(spec: tuple[str, ...]) -> Any:
    """The single relaxation a command that takes one was given."""
    chosen = select(spec)
    if len(chosen) != 1:
        fail(f"-r/--relaxation: this command takes one relaxation, got {len(chosen)}")
    return chosen[0]


THREADS = click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's choice)."
)
QUIET = click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress (bar on a terminal, status lines otherwise) or per-epoch lines.",
)
WIDE = click.option("--wide", is_flag=True, help="Do not wrap tables at 100 columns.")
DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory with the dataset files (default: where the run's config says, "
    "else relaxlab's search path, docs/training.md).",
)
STORE = click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Results database (default: results.sqlite beside the run directories; "
    "report: $RELAXLAB_STORE or runs/results.sqlite).",
)
EPS = click.option("--eps", type=float, default=None, help="l_inf radius in pixel space [0, 1].")
#: Training options, named as the config keys they override (``None``: the config's value).
SMOOTHING_SAMPLES = click.option(
    "--smoothing-samples",
    type=click.IntRange(min=0),
    default=None,
    help="Loss smoothing: average each step's gradient over K weight perturbations (config key "
    "smoothing_samples; 0: off).",
)
SMOOTHING_SIGMA = click.option(
    "--smoothing-sigma",
    type=click.FloatRange(min=0),
    default=None,
    help="Loss smoothing: standard deviation of the weight perturbations (config key smoothing_sigma).",
)
LOSS_FUSION = click.option(
    "--loss-fusion/--no-loss-fusion",
    default=None,
    help="Bound the robust loss with one row per example (config key loss_fusion).",
)
DEVICE = click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where tensors are computed: cpu, cuda or cuda:N (results do not depend on it "
    "beyond floating-point order).",
)


def count_option(help_text: str, default: int | None = None) -> Callable[[Any], Any]:
    """``--n N``: how many test images (the first N); at least 1."""
    return click.option(
        "--n",
        "n",
        type=click.IntRange(min=1),
        default=default,
        show_default=default is not None,
        help=help_text,
    )


def renamed_option(old: str, hint: str) -> Callable[[Any], Any]:
    """A hidden ``old`` option that refuses itself with ``hint`` (the vocabulary's new spelling)."""

    def refuse(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            fail(f"{old} is gone: {hint}")

    return click.option(
        old,
        f"_renamed_{old.strip('-').replace('-', '_')}",
        hidden=True,
        default=None,
        expose_value=False,
        callback=refuse,
        help=hint,
    )


def executor_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of a command of the sweep engine (``sweep``, ``screen``): where its runs execute
    (``--workers``, ``--executor``, ``--address``), on which ``--device``, with which ``--data-dir``."""
    for option in reversed(
        (
            DEVICE,
            DATA_DIR,
            click.option(
                "--address",
                default=None,
                help="Address of an existing Ray cluster (`ray start --head` prints it).",
            ),
            click.option(
                "--workers",
                type=click.IntRange(min=1),
                default=1,
                show_default=True,
                help="Runs at the same time (local Ray).",
            ),
            click.option(
                "--executor",
                "executor_name",
                type=click.Choice(["auto", "ray", "inprocess"]),
                default="auto",
                show_default=True,
                help="auto: Ray when installed, else in-process.",
            ),
        )
    ):
        command = option(command)
    return command


def start_executor(name: str, workers: int, address: str | None) -> Any:
    """The executor the options chose, started (what Ray prints on start comes before any progress bar).

    Says so when ``--workers`` cannot be honoured without Ray.
    """
    from relaxlab.experiments.executors import make_executor

    executor = make_executor(name, workers, address)
    if name == "auto" and executor.name == "in-process" and workers > 1:
        click.echo("Ray is not installed: running one run at a time (pip install 'relaxlab[ray]')", err=True)
    executor.start()
    return executor


def check_device(device: str) -> str:
    """``--device`` as torch spells it; a CUDA device on a machine without one is bad input (exit 2)."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        fail(f"--device: {error}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        fail(
            f"--device {device}: no CUDA device is available here (torch {torch.__version__}); use --device cpu"
        )
    if parsed.type not in ("cpu", "cuda"):
        fail(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    return str(parsed)


def check_eps(eps: float, *, maximum: float | None = 1.0) -> float:
    """``--eps`` checked as everywhere in relaxlab (:func:`relaxlab.engine.box.check_eps`)."""
    from relaxlab.engine.box import check_eps as engine_check_eps

    try:
        return engine_check_eps(eps, maximum=maximum, name="--eps")
    except (TypeError, ValueError) as error:
        fail(str(error))


def out_dir_option(help_text: str, default: Path | None = None) -> Callable[[Any], Any]:
    """``--out DIR``: the directory a command writes into."""
    return click.option(
        "--out",
        "out_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=default,
        show_default=default is not None,
        help=help_text,
    )


def plot_option(help_text: str, default: Path | None = None) -> Callable[[Any], Any]:
    """``--plot FILE``: an image a command draws (PNG unless the suffix names another format)."""
    return click.option(
        "--plot",
        "plot_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=default,
        show_default=default is not None,
        help=help_text,
    )


def image_path(path: Path) -> Path:
    """The file an image of ``path`` is written to: ``path`` with ``.png`` added when it has no suffix."""
    return path if path.suffix else path.with_name(path.name + ".png")


def input_file_option(flag: str, dest: str, help_text: str) -> Callable[[Any], Any]:
    """A required input file that must exist (exit 2 with a usage error otherwise)."""
    return click.option(
        flag,
        dest,
        required=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help=help_text,
    )


def load_test_split(config: dict[str, Any], data_dir: str | None, n: int | None) -> tuple[Any, Any, Any]:
    """``(dataset, x, y)``: the first ``n`` test images of a run's dataset (``--data-dir`` or the run's)."""
    from relaxlab.api import get_registry

    dataset = get_registry().datasets[config["dataset"]]
    x, y = dataset.load("test", data_dir if data_dir is not None else config.get("data_dir"), n=n)
    return dataset, x, y
