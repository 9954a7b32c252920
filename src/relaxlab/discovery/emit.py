"""Persist discovered relaxations: register them in-process, or write them out as a plugin module.

:func:`plugin_source` writes a self-contained plugin module that declares the
relaxations with the expression algebra, node for node (so the written specs
equal the discovered ones), and implements ``relaxlab_relaxations``. Install it
like any plugin: put the module in a package and name it in the ``relaxlab``
entry-point group (``[project.entry-points.relaxlab] discovered = "my_pkg.discovered"``),
or register it on a plugin manager yourself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from relaxlab.core import expr as ex
from relaxlab.core.relaxation import BoundsTransform, CaseBounds, Line, ParamSpec, ReluRelaxation
from relaxlab.discovery.pipeline import Discovery, Result
from relaxlab.registry import Registry, SoundnessCheck


def new_results(discovery: Discovery) -> list[Result]:
    """Kept results that no registered relaxation equals (the genuinely new ones), one per name.

    A transform applied at several grid values gives results with one name and different
    parameter values: they are one parametrized relaxation, kept once (at the first values found).
    """
    seen: set[str] = set()
    out = []
    for result in discovery.results:
        if not result.equivalent_to and result.relaxation.name not in seen:
            seen.add(result.relaxation.name)
            out.append(result)
    return out


def register_results(
    results: Iterable[Result], registry: Registry, check: SoundnessCheck, source: str = "relaxlab discover"
) -> list[str]:
    """Register results in ``registry`` after ``check`` found each sound; the names registered.

    Discovery never touches a registry on its own: this is the one place it writes, when asked.
    Names already registered (e.g. by an earlier call) are skipped.
    """
    names = []
    for result in results:
        if result.relaxation.name in registry.relaxations:
            continue
        registry.relaxations.register(result.relaxation, source, check=check)
        names.append(result.name)
    return names


class Source(ex.Interpretation[str]):
    """Python source that rebuilds an expression node for node (names of :mod:`relaxlab.core.expr`)."""

    def const(self, node: ex.Const) -> str:
        return f"Const({node.value!r})"

    def var(self, node: ex.Var) -> str:
        return "L" if node.name == "l" else "U"

    def param(self, node: ex.Param) -> str:
        return f"Param({node.name!r})"

    def _binary(self, node: ex.Add | ex.Mul | ex.Ge) -> str:
        return f"{type(node).__name__}({self(node.left)}, {self(node.right)})"

    add = mul = ge = _binary

    def div(self, node: ex.Div) -> str:
        return f"Div({self(node.numerator)}, {self(node.denominator)})"

    def sigmoid(self, node: ex.Sigmoid) -> str:
        return f"Sigmoid({self(node.arg)})"

    def step(self, node: ex.Step) -> str:
        return f"Step({node.kind!r}, {self(node.arg)})"

    def switch(self, node: ex.Switch) -> str:
        return f"Switch({self(node.condition)}, {self(node.then)}, {self(node.otherwise)})"

    def named(self, node: ex.Named) -> str:
        return f"Named({node.name!r}, {self(node.body)})"

    def opaque(self, node: ex.Opaque) -> str:
        raise ValueError(
            f"cannot write the opaque callable {node.name!r} as source; keep that plugin installed"
        )


def expr_source(expr: ex.Expr) -> str:
    """Python source that rebuilds ``expr`` node for node."""
    return Source()(expr)


def _line_source(line: Line) -> str:
    return f"Line({expr_source(line.slope)}, {expr_source(line.offset)})"


def _case_source(case: CaseBounds) -> str:
    return f"CaseBounds({_line_source(case.lower)}, {_line_source(case.upper)})"


def _param_source(spec: ParamSpec) -> str:
    return (
        f"ParamSpec({spec.name!r}, {spec.default!r}, minimum={spec.minimum!r}, strict={spec.strict!r}, "
        f"maximum={spec.maximum!r}, description={spec.description!r})"
    )


def _transform_source(transform: BoundsTransform | None) -> str:
    if transform is None:
        return "None"
    return f"BoundsTransform({expr_source(transform.lower)}, {expr_source(transform.upper)})"


def relaxation_source(relaxation: ReluRelaxation) -> str:
    """Python source for a :class:`ReluRelaxation`."""
    params = ", ".join(_param_source(p) for p in relaxation.params)
    return (
        "ReluRelaxation(\n"
        f"    name={relaxation.name!r},\n"
        f"    negative={_case_source(relaxation.negative)},\n"
        f"    unstable={_case_source(relaxation.unstable)},\n"
        f"    positive={_case_source(relaxation.positive)},\n"
        f"    intermediate={relaxation.intermediate!r},\n"
        f"    final={relaxation.final!r},\n"
        f"    transform={_transform_source(relaxation.transform)},\n"
        f"    params=({params}{',' if relaxation.params else ''}),\n"
        f"    values={relaxation.values!r},\n"
        f"    summary={relaxation.summary or 'Found by relaxlab discover.'!r},\n"
        f"    reference={'relaxlab discover'!r},\n"
        ")"
    )


def plugin_source(results: Sequence[Result]) -> str:
    """A plugin module that provides ``results`` through ``relaxlab_relaxations``."""
    body = ",\n".join(relaxation_source(r.relaxation) for r in results)
    names = "\n".join(f"#   {r.name}  [{r.flags}]" for r in results)
    return f'''"""Relaxations found by ``relaxlab discover`` (generated; edit with care).

Register as a relaxlab plugin through the ``relaxlab`` entry-point group, e.g. in pyproject.toml:

    [project.entry-points.relaxlab]
    discovered = "your_package.this_module"
"""

# Contents:
{names}

from __future__ import annotations

from collections.abc import Iterable

import relaxlab
from relaxlab.core.expr import Add, Const, Div, Ge, L, Mul, Named, Param, Sigmoid, Step, Switch, U
from relaxlab.core.relaxation import BoundsTransform, CaseBounds, Line, ParamSpec, ReluRelaxation

RELAXATIONS: tuple[ReluRelaxation, ...] = (
{body}{"," if results else ""}
)


@relaxlab.hookimpl
def relaxlab_relaxations() -> Iterable[ReluRelaxation]:
    return RELAXATIONS
'''
