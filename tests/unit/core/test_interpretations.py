"""The one dispatch over expression nodes: every interpretation handles every node type, and refuses others.

Each meaning of an expression (evaluation, printing, degree, interval extension, normal forms,
homogeneity, sign split, sensitivity's pieces and sympy forms, discovery's source code) is an
:class:`~relaxlab.core.expr.Interpretation`; this test finds them all by subclassing, so a new one is
checked wherever it is defined among :data:`MODULES`, and a new node class in ``core/expr.py`` fails here until it is a
node type with a method in every interpretation.
"""

from __future__ import annotations

import importlib

import pytest
from attrs import frozen

from relaxlab.core import expr as ex
from relaxlab.core import interval, scaling
from relaxlab.core.evaluate import SIGN_SPLIT
from relaxlab.discovery import emit

#: Where the interpretations live (the module docstring of ``core/expr.py`` lists them).
MODULES = (
    "relaxlab.core.expr",
    "relaxlab.core.interval",
    "relaxlab.core.rational",
    "relaxlab.core.scaling",
    "relaxlab.core.evaluate",
    "relaxlab.properties.sensitivity",
    "relaxlab.discovery.emit",
)


def _all_interpretations() -> set[type[ex.Interpretation[object]]]:
    for name in MODULES:
        importlib.import_module(name)
    found: set[type[ex.Interpretation[object]]] = set()
    todo = list(ex.Interpretation.__subclasses__())
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return found


def test_node_types_are_every_node_class_of_the_algebra() -> None:
    classes = {
        value
        for value in vars(ex).values()
        if isinstance(value, type) and issubclass(value, ex.Expr) and value is not ex.Expr
    }
    assert set(ex.NODE_TYPES) == classes


def test_every_interpretation_has_a_method_of_its_own_for_every_node_type() -> None:
    found = _all_interpretations()
    names = {cls.__name__ for cls in found}
    # the meanings the module docstring of core/expr.py lists (more may come; none may go unchecked)
    assert {
        "Evaluation",
        "Degree",
        "Substitution",
        "Names",
        "Text",
        "Enclosure",
        "RealForm",
        "FloatForm",
        "Homogeneity",
        "SignSplit",
        "_Pieces",
        "_Sympy",
        "Source",
    } <= names
    for cls in found:
        assert not cls.__abstractmethods__, f"{cls.__name__} lacks {sorted(cls.__abstractmethods__)}"
        for node_type in ex.NODE_TYPES:
            method = getattr(cls, node_type.__name__.lower())
            assert method is not getattr(ex.Interpretation, node_type.__name__.lower()), (cls, node_type)


def test_an_interpretation_that_misses_a_node_type_cannot_be_made() -> None:
    class OnlyConstants(ex.Interpretation[float]):
        def const(self, node: ex.Const) -> float:
            return node.value

    with pytest.raises(TypeError, match="abstract"):
        OnlyConstants()  # type: ignore[abstract]


@frozen
class Foreign(ex.Expr):
    """A node class that is no node type of the algebra."""

    body: ex.Expr


@pytest.mark.parametrize(
    "meaning",
    [
        lambda e: e.evaluate({"l": 1.0, "u": 2.0}),
        lambda e: e.degree(),
        lambda e: e.substitute({"l": ex.U}),
        lambda e: e.variables(),
        str,
        lambda e: interval.enclose(e, {"l": (0.0, 1.0), "u": (1.0, 2.0)}),
        scaling.homogeneity,
        SIGN_SPLIT,
        emit.expr_source,
    ],
    ids=["evaluate", "degree", "substitute", "variables", "str", "enclose", "homogeneity", "sign", "source"],
)
def test_an_unknown_node_is_refused_by_name_never_answered(meaning: object) -> None:
    """``homogeneity`` used to answer ``None`` (read as "not scale invariant") for a node it did not know."""
    with pytest.raises(TypeError, match="Foreign is not an expression node type"):
        meaning(ex.Mul(ex.L, Foreign(ex.U)))  # type: ignore[operator]


def test_a_subclass_of_a_node_type_means_what_its_type_means() -> None:
    @frozen
    class MyMul(ex.Mul):
        pass

    node = MyMul(ex.Const(3.0), ex.L)
    assert node.evaluate({"l": 2.0, "u": 5.0}) == 6.0
    assert node.degree() == 1 and scaling.homogeneity(node) == 1
    assert interval.enclose(node, {"l": (1.0, 2.0), "u": (2.0, 3.0)}).bounds == (3.0, 6.0)
