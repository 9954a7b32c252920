"""The plugin manager and the registries it fills.

Built-ins are plugins registered directly (as pytest registers its own);
third-party plugins come in through the ``relaxlab`` entry-point group. Each
entry point is loaded on its own: one that fails to import, raises in a hook
or returns something invalid is recorded in :attr:`Registry.errors` with its
name and the reason, and every other plugin keeps working.

Environment switches:

- ``RELAXLAB_DISABLE_PLUGIN_AUTOLOAD=1`` — do not load entry points;
- ``RELAXLAB_BLOCK_PLUGINS=a,b`` — skip the named plugins (entry-point names or built-in modules).

Look-up by name ignores case, spaces and punctuation (``crown ibp r`` finds
``CROWN-IBP (R)``), accepts parameters (``LooseIBP-DC(F=10, omega=0.5)``) and
suggests close matches for unknown names. This module is the only name resolver of
relaxlab: :meth:`RelaxationRegistry.select` turns what a user types (a name, a comma list,
``all``, ``paper``) into relaxations, and ``all`` and ``paper`` are defined here once.

The registry needs nothing above :mod:`relaxlab.core`: the soundness check is an argument
of :func:`build_registry`; the facade (:func:`relaxlab.get_registry`) passes the prover.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import re
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import pluggy
from attrs import define, field, frozen

from relaxlab import hookspecs
from relaxlab.core.convert import as_tuple
from relaxlab.core.expr import BOUND_VARIABLES
from relaxlab.core.relaxation import BoundsTransform, Line, ParamSpec, ReluRelaxation
from relaxlab.objectives import Objective

#: A soundness check: ``None`` for a sound relaxation, else something whose ``str`` says why not.
SoundnessCheck = Callable[[ReluRelaxation], object | None]

PROJECT_NAME = "relaxlab"
ENTRY_POINT_GROUP = "relaxlab"
#: Built-ins go through the same hooks as third-party plugins.
BUILTIN_PLUGINS = (
    "relaxlab.relaxations.builtin",
    "relaxlab.architectures",
    "relaxlab.data.datasets",
    "relaxlab.objectives",
)
#: The paper's five relaxations (Table 1/2), in the paper's order: what ``paper`` selects.
PAPER_RELAXATIONS = ("IBP", "hBox", "DeepZ", "CROWN", "CROWN-IBP (R)")
#: Words :meth:`RelaxationRegistry.select` understands besides names.
SELECTORS = {
    "all": "every registered relaxation, aliases folded, unsound and sampled (unproved) ones left out",
    "paper": f"the paper's five: {', '.join(PAPER_RELAXATIONS)}",
}


class Named(Protocol):
    """What a :class:`NamedRegistry` holds: anything with a name."""

    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class UnknownNameError(LookupError, ValueError):
    """A name that no registered item has; the message lists close matches."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0])


class RegistryError(ValueError):
    """A registration that cannot be accepted (a name clash)."""


class UnsoundRelaxationError(ValueError):
    """A relaxation whose lines do not enclose the ReLU; the message holds a counterexample."""


def normalize_name(name: str) -> str:
    """The look-up key: lower case, letters, digits and "+" only (so CONV+ differs from CONV)."""
    return re.sub(r"[^0-9a-zλκ+]", "", name.lower())


@frozen
class PluginError:
    """A plugin that could not contribute, and why."""

    plugin: str
    reason: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r}: {self.reason}"


@define
class NamedRegistry(Generic[T]):
    """Items with a ``.name``, looked up ignoring case, spaces and punctuation."""

    kind: str
    _items: dict[str, T] = field(factory=dict)
    _sources: dict[str, str] = field(factory=dict)
    _keys: dict[str, str] = field(factory=dict)

    def add(self, item: T, source: str) -> None:
        name = item.name
        key = normalize_name(name)
        if key in self._keys:
            other = self._keys[key]
            raise RegistryError(
                f"{self.kind} {name!r} from plugin {source!r} clashes with {other!r} from plugin "
                f"{self._sources[other]!r}; rename one of them (plugins should prefix their names)"
            )
        self._items[name] = item
        self._sources[name] = source
        self._keys[key] = name

    def resolve(self, name: str) -> str:
        """The registered spelling of ``name``."""
        key = normalize_name(name)
        if key in self._keys:
            return self._keys[key]
        known = list(self._items)
        close = difflib.get_close_matches(key, list(self._keys), n=3, cutoff=0.6)
        close += [k for k in self._keys if key and (key in k or k in key) and k not in close]
        suggestions = list(dict.fromkeys(self._keys[k] for k in close))[:4]
        hint = f"; did you mean {', '.join(repr(c) for c in suggestions)}?" if suggestions else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(known)})")

    def __getitem__(self, name: str) -> T:
        return self._items[self.resolve(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return list(self._items)

    def values(self) -> list[T]:
        return list(self._items.values())

    def source(self, name: str) -> str:
        """The plugin that provided ``name``."""
        return self._sources[self.resolve(name)]


_PARAMS = re.compile(r"^(?P<name>.*?)\s*\((?P<args>[^()]*=[^()]*)\)\s*$")


@define
class RelaxationRegistry(NamedRegistry[ReluRelaxation]):
    """Relaxations by name, with aliases (identical specs) and soundness findings."""

    kind: str = "relaxation"
    #: name -> counterexample text, for relaxations whose lines fail the exact check.
    unsound: dict[str, str] = field(factory=dict)
    #: The soundness check relaxations were admitted with; :meth:`get` runs it on every new parameter setting.
    check: SoundnessCheck | None = None
    #: name -> whether its soundness is only sampled (each registered relaxation walked once).
    _sampled: dict[str, bool] = field(factory=dict, init=False, repr=False)

    def get(self, name: str) -> ReluRelaxation:
        """Look up ``name``, optionally with parameters: ``LooseIBP-DC(F=10, omega=0.5)``.

        A setting of the parameters is checked as the registered relaxation was (its proof covers the
        declared range up to a clip, and the new values may lie beyond it), so what comes back with
        parameters is never unproved.

        :raises UnsoundRelaxationError: the check refutes (or cannot prove) the relaxation at those values.
        """
        base, values = parse_parameters(name, self)
        if values is None:
            return base
        setting = base.with_params(**values)
        if self.check is not None and setting != base and base.name not in self.unsound:
            reason = self.check(setting)
            if reason is not None:
                raise UnsoundRelaxationError(f"relaxation {setting.label!r} is unsound: {reason}")
        return setting

    def add(self, item: ReluRelaxation, source: str) -> None:
        """Add a relaxation; a name that reads as a parameter setting is refused (see :func:`check_relaxation_name`)."""
        check_relaxation_name(item.name, source)
        super().add(item, source)

    def soundness(self, name: str) -> str:
        """``"proved"``, ``"sampled"`` (opaque lines: the check could only sample them) or ``"unsound"``."""
        canonical = self.resolve(name)
        if canonical in self.unsound:
            return "unsound"
        if canonical not in self._sampled:
            self._sampled[canonical] = is_sampled(self._items[canonical])
        return "sampled" if self._sampled[canonical] else "proved"

    @property
    def sampled(self) -> frozenset[str]:
        """Names whose soundness can only be sampled (opaque lines: never proved), unless found unsound."""
        return frozenset(n for n in self._items if self.soundness(n) == "sampled")

    def aliases(self, name: str) -> list[str]:
        """Other names whose spec is identical to ``name``'s."""
        canonical = self.resolve(name)
        key = self._items[canonical].spec_key()
        return [n for n, r in self._items.items() if n != canonical and r.spec_key() == key]

    def select(self, spec: str | Iterable[str]) -> list[str]:
        """Registered names for what a user typed: names, comma lists, ``all`` or ``paper``.

        ``all`` is every registered relaxation with aliases folded into the first-registered
        name and unsound ones left out; ``paper`` is :data:`PAPER_RELAXATIONS`. Names may carry
        parameters (``LooseIBP-C(omega=0.5)``: then the label is returned). Order is kept, and
        repeats are dropped.

        :raises UnknownNameError: an unknown name (close matches suggested); ``ValueError`` for
            an empty selection.
        """
        parts = [spec] if isinstance(spec, str) else list(spec)
        names: list[str] = []
        for part in parts:
            for item in split_names(part):
                word = item.lower()
                if word == "all":
                    unproved = self.sampled
                    names += [
                        n
                        for n in self._items
                        if n not in self.unsound and n not in unproved and self.primary(n) == n
                    ]
                elif word == "paper":
                    names += list(PAPER_RELAXATIONS)
                else:
                    names.append(self.get(item).label)
        if not names:
            raise ValueError(f"no relaxation given: name one, a comma list, or {' / '.join(SELECTORS)}")
        return list(dict.fromkeys(names))

    def register(self, relaxation: ReluRelaxation, source: str, check: SoundnessCheck | None = None) -> None:
        """Add ``relaxation`` after ``check`` found it sound.

        :raises UnsoundRelaxationError: with the check's reason; :class:`RegistryError`: a name clash.
        """
        if check is not None:
            reason = check(relaxation)
            if reason is not None:
                raise UnsoundRelaxationError(f"relaxation {relaxation.name!r} is unsound: {reason}")
        self.add(relaxation, source)

    def extended(
        self, relaxations: Iterable[ReluRelaxation], source: str, check: SoundnessCheck | None = None
    ) -> RelaxationRegistry:
        """A new table: this one's relaxations, sources and findings, plus ``relaxations`` (each as
        :meth:`register` adds it); this table is not changed."""
        # the copy keeps the check its relaxations were admitted with: get() proves new parameter settings by it
        table = RelaxationRegistry(
            items=dict(self._items),
            sources=dict(self._sources),
            keys=dict(self._keys),
            unsound=dict(self.unsound),
            check=self.check,
        )
        for relaxation in relaxations:
            table.register(relaxation, source, check=check)
        return table

    def primary(self, name: str) -> str:
        """The first-registered name among ``name`` and its aliases."""
        canonical = self.resolve(name)
        key = self._items[canonical].spec_key()
        return next(n for n, r in self._items.items() if r.spec_key() == key)


def check_relaxation_name(name: str, source: str) -> None:
    """Refuse a relaxation name in parameter syntax: ``LooseIBP-C(omega=0.5)`` would be read by :meth:`get`
    as LooseIBP-C at omega = 0.5, never as the relaxation registered under that name.

    :raises RegistryError: naming the plugin and the fix.
    """
    if _PARAMS.match(name):
        raise RegistryError(
            f"relaxation {name!r} from plugin {source!r} is named like a parameter setting (name(key=value)), which "
            "look-up reads as parameters of another relaxation; rename it without '=' inside parentheses"
        )


def is_sampled(relaxation: ReluRelaxation) -> bool:
    """Whether a check can only sample ``relaxation``: some expression of it is an opaque callable."""
    return any(expr.is_opaque() for expr in relaxation.expressions())


def parse_parameters(text: str, registry: NamedRegistry[T]) -> tuple[T, dict[str, float] | None]:
    """``NAME(key=value, ...)`` as the registered item and the values (``None``: a plain name).

    :raises UnknownNameError: an unknown name; ``ValueError``: a value that is not a number.
    """
    match = _PARAMS.match(text)
    if match is None:
        return registry[text], None
    base = registry[match["name"]]
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in match["args"].split(","))):
        key, _, raw = part.partition("=")
        if key.strip() in values:
            raise ValueError(
                f"{base.name}: parameter {key.strip()!r} is given twice in {text!r}; give each parameter once"
            )
        try:
            values[key.strip()] = float(raw)
        except ValueError:
            raise ValueError(
                f"{base.name}: parameter {key.strip()!r} needs a number, got {raw.strip()!r}"
            ) from None
    return base, values


@define
class ObjectiveRegistry(NamedRegistry[Objective]):
    """Training objectives by name (:mod:`relaxlab.objectives`)."""

    kind: str = "objective"

    def get(self, name: str) -> Objective:
        """Look up ``name``, optionally with parameters: ``SABR(lambda=0.6)`` (values checked here).

        :raises UnknownNameError: an unknown name (close matches suggested); ``ValueError``: a
            parameter the objective does not have, or a value outside its range.
        """
        base, values = parse_parameters(name, self)
        return base.with_params(**values) if values is not None else base


def split_names(text: str) -> list[str]:
    """Split a comma list, keeping commas inside parentheses (``LooseIBP-DC(F=10, omega=0.5)``)."""
    out, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += char
    out.append(current)
    return [part.strip() for part in out if part.strip()]


@frozen
class CandidateLine:
    """A candidate bound line for discovery, with the plugin that contributed it."""

    name: str
    side: str  # "lower", "upper" or "both"
    line: Line
    source: str


@frozen
class CandidateTransform:
    """A candidate bounds transform for discovery, with its parameters and the plugin that contributed it.

    :raises ValueError: when the transform uses a parameter ``params`` does not declare.
    """

    name: str
    transform: BoundsTransform
    params: tuple[ParamSpec, ...] = field(converter=as_tuple)
    source: str

    def __attrs_post_init__(self) -> None:
        used = (self.transform.lower.variables() | self.transform.upper.variables()) - BOUND_VARIABLES
        undeclared = used - {p.name for p in self.params}
        if undeclared:
            raise ValueError(
                f"candidate transform {self.name!r} uses undeclared parameter(s) {sorted(undeclared)}"
            )


@define
class Registry:
    """Everything the installed plugins provide."""

    relaxations: RelaxationRegistry = field(factory=RelaxationRegistry)
    architectures: NamedRegistry[Any] = field(factory=lambda: NamedRegistry("architecture"))
    datasets: NamedRegistry[Any] = field(factory=lambda: NamedRegistry("dataset"))
    objectives: ObjectiveRegistry = field(factory=ObjectiveRegistry)
    candidate_lines: list[CandidateLine] = field(factory=list)
    candidate_transforms: list[CandidateTransform] = field(factory=list)
    errors: list[PluginError] = field(factory=list)
    plugins: list[str] = field(factory=list)


def get_plugin_manager(
    *, load_entry_points: bool = True, blocked: Iterable[str] = ()
) -> tuple[pluggy.PluginManager, list[PluginError]]:
    """A fresh plugin manager with built-ins and (optionally) entry-point plugins.

    :return: the manager and the plugins that failed to load.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    env_blocked = os.environ.get("RELAXLAB_BLOCK_PLUGINS", "").split(",")
    blocked_names = {*blocked, *(b.strip() for b in env_blocked if b.strip())}
    errors: list[PluginError] = []
    for module_name in BUILTIN_PLUGINS:
        if module_name not in blocked_names:
            pm.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points and not os.environ.get("RELAXLAB_DISABLE_PLUGIN_AUTOLOAD"):
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name in blocked_names or pm.get_plugin(entry_point.name) is not None:
                continue
            try:
                plugin = _known_hooks_only(entry_point.load(), entry_point.name, errors)
                pm.register(plugin, name=entry_point.name)
            except Exception as error:  # a broken plugin must not take the others down
                errors.append(
                    PluginError(
                        entry_point.name,
                        f"failed to load {entry_point.value!r}: {type(error).__name__}: {error}",
                    )
                )
    try:
        pm.check_pending()  # a misspelled hook name fails here, not silently
    except pluggy.PluginValidationError as error:
        name = pm.get_name(error.plugin) or repr(error.plugin)
        errors.append(PluginError(name, f"unknown hook: {error}"))
        pm.unregister(error.plugin)
    return pm, errors


def _known_hooks_only(plugin: Any, name: str, errors: list[PluginError]) -> Any:
    """``plugin``, or a stand-in holding only its hooks with a spec: an unknown hook name (a typo such
    as ``relaxlab_relaxation``) is reported and dropped, and the plugin's other hooks keep working."""
    marked = {
        attr: getattr(plugin, attr)
        for attr in dir(plugin)
        if hasattr(getattr(plugin, attr, None), f"{PROJECT_NAME}_impl")
    }
    unknown = sorted(attr for attr in marked if not hasattr(hookspecs, attr))
    if not unknown:
        return plugin
    errors.append(
        PluginError(
            name,
            f"unknown hook(s) {unknown} ignored (no such hook; valid hooks: "
            f"{', '.join(h for h in dir(hookspecs) if h.startswith('relaxlab_'))})",
        )
    )
    return types.SimpleNamespace(**{attr: fn for attr, fn in marked.items() if attr not in unknown})


def _collect(
    pm: pluggy.PluginManager,
    hook_name: str,
    errors: list[PluginError],
    accept: Callable[[Any], bool],
    expected: str,
) -> Iterator[tuple[str, Any]]:
    """Call each implementation separately so every item keeps its source and one failure stays local."""
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        try:
            provided = list(impl.function() or ())
        except Exception as error:
            errors.append(
                PluginError(impl.plugin_name, f"{hook_name} raised {type(error).__name__}: {error}")
            )
            continue
        for item in provided:
            if not accept(item):
                errors.append(
                    PluginError(impl.plugin_name, f"{hook_name} returned {item!r}, expected {expected}")
                )
                continue
            yield impl.plugin_name, item


def build_registry(
    *, load_entry_points: bool = True, blocked: Iterable[str] = (), check: SoundnessCheck | None = None
) -> Registry:
    """Collect everything the plugins provide into a new :class:`Registry`.

    :param load_entry_points: also load third-party plugins (entry-point group ``relaxlab``).
    :param blocked: plugin names to skip (as ``RELAXLAB_BLOCK_PLUGINS``).
    :param check: the soundness check run on every relaxation (failures are recorded in
        :attr:`RelaxationRegistry.unsound` and :attr:`Registry.errors`); ``None``: no check.
    """
    pm, errors = get_plugin_manager(load_entry_points=load_entry_points, blocked=blocked)
    registry = Registry(errors=errors, plugins=[n for n, _ in pm.list_name_plugin()])
    for source, relaxation in _collect(
        pm, "relaxlab_relaxations", errors, lambda r: isinstance(r, ReluRelaxation), "a ReluRelaxation"
    ):
        _add(registry.relaxations, relaxation, source, errors)
    for source, arch in _collect(
        pm,
        "relaxlab_architectures",
        errors,
        lambda a: isinstance(getattr(a, "name", None), str),
        "an object with a name",
    ):
        _add(registry.architectures, arch, source, errors)
    for source, dataset in _collect(
        pm,
        "relaxlab_datasets",
        errors,
        lambda d: isinstance(getattr(d, "name", None), str),
        "an object with a name",
    ):
        _add(registry.datasets, dataset, source, errors)
    for source, objective in _collect(
        pm, "relaxlab_objectives", errors, lambda o: isinstance(o, Objective), "an Objective"
    ):
        _add(registry.objectives, objective, source, errors)
    for source, item in _collect(
        pm, "relaxlab_candidate_lines", errors, _is_candidate, "(name, 'lower'|'upper'|'both', Line)"
    ):
        name, side, ln = item
        registry.candidate_lines.append(CandidateLine(name, side, ln, source))
    for source, item in _collect(
        pm,
        "relaxlab_candidate_transforms",
        errors,
        _is_candidate_transform,
        "(name, BoundsTransform, (ParamSpec, ...))",
    ):
        name, transform, params = item
        try:
            registry.candidate_transforms.append(CandidateTransform(name, transform, params, source))
        except ValueError as error:
            errors.append(PluginError(source, str(error)))
    if check is not None:
        registry.relaxations.check = check
        for name, relaxation in list(registry.relaxations._items.items()):
            try:
                reason = check(relaxation)
            except Exception as error:  # a relaxation whose lines raise disables itself only
                reason = f"evaluating its lines raised {type(error).__name__}: {error}"
            if reason is not None:
                registry.relaxations.unsound[name] = str(reason)
                errors.append(
                    PluginError(
                        registry.relaxations.source(name), f"relaxation {name!r} is unsound: {reason}"
                    )
                )

    return registry


def _is_candidate(item: Any) -> bool:
    return (
        isinstance(item, tuple)
        and len(item) == 3
        and isinstance(item[0], str)
        and item[1] in ("lower", "upper", "both")
        and isinstance(item[2], Line)
    )


def _is_candidate_transform(item: Any) -> bool:
    return (
        isinstance(item, tuple)
        and len(item) == 3
        and isinstance(item[0], str)
        and isinstance(item[1], BoundsTransform)
        and isinstance(item[2], (tuple, list))
        and all(isinstance(p, ParamSpec) for p in item[2])
    )


def _add(target: NamedRegistry[Any], item: Any, source: str, errors: list[PluginError]) -> None:
    try:
        target.add(item, source)
    except RegistryError as error:
        errors.append(PluginError(source, str(error)))
