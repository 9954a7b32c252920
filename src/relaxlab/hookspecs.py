"""Hook specifications: the complete contract between relaxlab and its plugins.

A plugin is a module (or object) with functions named after these hooks and
marked with :data:`relaxlab.hookimpl`. Built-in relaxations, candidate lines and
transforms, architectures, datasets and training objectives are provided by plugins implementing
exactly these hooks; third-party plugins come in through the ``relaxlab``
entry-point group.

Every hook *returns* values (no registration callbacks): a hook implementation
is a pure function that tests can call directly. The host records which plugin
provided each value, so errors and listings can name it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # keep this module import-cycle free
    from collections.abc import Iterable

    from relaxlab.core.relaxation import BoundsTransform, Line, ParamSpec, ReluRelaxation

hookspec = pluggy.HookspecMarker("relaxlab")
#: Marks a plugin's hook implementations (re-exported as ``relaxlab.hookimpl``).
hookimpl = pluggy.HookimplMarker("relaxlab")


@hookspec
def relaxlab_relaxations() -> Iterable[ReluRelaxation]:
    """Return the ReLU relaxations this plugin provides.

    Called once when the registry is built. Names are unique across all
    installed plugins, compared ignoring case, spaces and punctuation; a clash
    is reported with both plugins named and the later one is dropped. A value
    that is not a :class:`~relaxlab.core.relaxation.ReluRelaxation`, or a hook
    that raises, is reported by plugin name and does not affect the others.

    :return: relaxations, each fully specified for all three stability cases.

    .. versionadded:: 0.1
    """
    return ()


@hookspec
def relaxlab_candidate_lines() -> Iterable[tuple[str, str, Line]]:
    """Return extra candidate bound lines for relaxation discovery.

    Each item is ``(name, side, line)`` with ``side`` one of ``"lower"``,
    ``"upper"`` or ``"both"``; ``name`` is a short readable label (``"x-l"``)
    used in generated relaxation names. The discovery pipeline combines the
    candidates of all plugins and keeps, per stability case, only lines that
    are sound for that case, so an unsound candidate never reaches a result.

    :return: candidate lines.

    .. versionadded:: 0.1
    """
    return ()


@hookspec
def relaxlab_candidate_transforms() -> Iterable[tuple[str, BoundsTransform, tuple[ParamSpec, ...]]]:
    """Return candidate bounds transforms for relaxation discovery.

    Each item is ``(name, transform, params)``: a short readable label
    (``"loose-C"``) used in generated relaxation names, a
    :class:`~relaxlab.core.relaxation.BoundsTransform` that widens ``[l, u]``
    before the ReLU, and the :class:`~relaxlab.core.relaxation.ParamSpec` of
    every parameter its expressions use. Discovery proves that each transform
    widens (one that does not is left out with its counterexample) and applies
    it to every relaxation it keeps, at each value of its parameter grid.

    :return: candidate transforms.

    .. versionadded:: 0.1
    """
    return ()


@hookspec
def relaxlab_architectures() -> Iterable[Any]:
    """Return network architectures trainable by name.

    Each item is a :class:`relaxlab.architectures.Architecture`: a
    name, a summary and a builder from input shape, class count and the
    dataset's normalisation to an ``nn.Sequential`` the engine accepts.

    :return: architectures.

    .. versionadded:: 0.1
    """
    return ()


@hookspec
def relaxlab_datasets() -> Iterable[Any]:
    """Return datasets loadable by name.

    Each item is a :class:`relaxlab.data.datasets.Dataset`: a name, input
    shape, class count, normalisation constants and a loader from a directory.

    :return: datasets.

    .. versionadded:: 0.1
    """
    return ()


@hookspec
def relaxlab_objectives() -> Iterable[Any]:
    """Return training objectives usable by name (``relaxlab train --objective NAME``).

    Each item is a :class:`relaxlab.objectives.Objective`: a name, declared parameters
    (:class:`~relaxlab.core.relaxation.ParamSpec`: default and range; set as
    ``NAME(param=value)``), and a loss function of an
    :class:`~relaxlab.objectives.ObjectiveContext` (the model, the batch, the run's relaxation,
    the schedule's ε, κ and β, bounds over any box inside the ε-box and the attack) and the
    parameter values, returning the loss and the parts to log. Objectives work with every
    relaxation: the context computes bounds through the engine for whichever the run trains
    with. Names are unique across plugins (ignoring case, spaces and punctuation); a clash or
    a value that is not an ``Objective`` is reported by plugin name and does not affect the
    others.

    :return: objectives.

    .. versionadded:: 0.1
    """
    return ()
