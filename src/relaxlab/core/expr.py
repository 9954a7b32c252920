"""A small expression algebra over the pre-activation bounds ``l``, ``u`` and named parameters.

Line coefficients of a relaxation are built from these nodes, not from opaque
functions, so the library can *derive* properties from them:

- :meth:`Expr.degree` — the polynomial degree in ``(l, u)`` on every piece of
  the domain (switches and floors split it into pieces); ``math.inf`` for
  rational or transcendental dependence, ``None`` when unknown (opaque
  callables);
- :meth:`Expr.switches` and :meth:`Expr.steps` — where the expression may jump;
- :meth:`Expr.evaluate` — batched evaluation on torch tensors (any device),
  differentiable.

Expressions are frozen attrs values: they compare and hash by structure, so two
relaxations declared with the same lines are recognised as the same.

Names: ``L`` and ``U`` are the variables ``l`` and ``u``; :class:`Param`
refers to a parameter whose value the relaxation supplies.

**The one dispatch.** What a node *means* is given by an :class:`Interpretation`: a class with one
method per node type (``const``, ``var``, ``param``, ``add``, ``mul``, ``div``, ``sigmoid``,
``step``, ``ge``, ``switch``, ``named``, ``opaque``: :data:`NODE_TYPES`), all abstract in the base,
so an interpretation that forgets one cannot even be made, and a node of a type it does not know
is refused by name (``TypeError``), never answered with ``None``. Every meaning in relaxlab is one:
evaluation (:class:`Evaluation`, with an explicit memo of named sub-expressions), the degree,
substitution, printing and the names used (here), the interval extension
(:mod:`relaxlab.core.interval`), exact and floating-point normal forms
(:mod:`relaxlab.core.rational`), homogeneity (:mod:`relaxlab.core.scaling`), the evaluator's sign
split (:mod:`relaxlab.core.evaluate`), sensitivity's pieces and sympy forms
(:mod:`relaxlab.properties.sensitivity`) and discovery's code generation
(:mod:`relaxlab.discovery.emit`); ``tests/unit/core/test_interpretations.py`` checks them all.
"""

from __future__ import annotations

import abc
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Generic, TypeAlias, TypeVar, cast

import attrs
from attrs import field, frozen

from relaxlab.core.rounding import round32_down, round32_up

if TYPE_CHECKING:  # torch loads with the first tensor, not with the algebra (the CLI starts without it)
    import torch
    from torch import Tensor
    from typing_extensions import TypeIs  # typing.TypeIs from Python 3.13

#: Names of the two bound variables.
BOUND_VARIABLES = frozenset({"l", "u"})

#: Sigmoid arguments are clamped to this magnitude: sigma(80) differs from 1 by 2e-35,
#: and the clamp keeps gradients finite when ``l/u`` overflows for tiny ``u``.
_SIGMOID_CLAMP = 80.0

Value: TypeAlias = "Tensor | float"
Environment = Mapping[str, Value]
T = TypeVar("T")


def _is_tensor(value: object) -> TypeIs[Tensor]:
    """Whether ``value`` is a torch tensor; no tensor exists before torch is imported, so this never imports it."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


class Expr:
    """Base of all expression nodes. Supports ``+ - * /`` and unary ``-``."""

    # -- meanings (each an Interpretation) ------------------------------------
    def evaluate(self, env: Environment, memo: dict[int, Value] | None = None) -> Value:
        """Value of the expression for ``env`` (``"l"``, ``"u"`` and parameter names).

        :param memo: named sub-expressions already evaluated for this ``env`` (filled as they are):
            a name used several times (``λ`` in a slope and an offset) is evaluated once.
        """
        return Evaluation(env, memo)(self)

    def degree(self) -> float | None:
        """Polynomial degree in ``(l, u)`` on each piece; ``inf`` if not polynomial, ``None`` if unknown."""
        return DEGREE(self)

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        """The expression with variables/parameters replaced by expressions."""
        return Substitution(mapping)(self)

    def variables(self) -> frozenset[str]:
        """Names of bound variables and parameters the expression mentions."""
        return NAMES(self)

    def __str__(self) -> str:
        return TEXT(self)

    # -- structure ----------------------------------------------------------
    def children(self) -> tuple[Expr, ...]:
        """The sub-expressions, in field order."""
        return tuple(getattr(self, name) for name in _child_fields(type(self)))

    def walk(self) -> Iterator[Expr]:
        """Every node, depth first, this one included."""
        yield self
        for child in self.children():
            yield from child.walk()

    def switches(self) -> tuple[Switch, ...]:
        return tuple(node for node in self.walk() if isinstance(node, Switch))

    def steps(self) -> tuple[Step, ...]:
        """Floor and ceil nodes: places where the expression may jump."""
        return tuple(node for node in self.walk() if isinstance(node, Step))

    def is_opaque(self) -> bool:
        return any(isinstance(node, Opaque) for node in self.walk())

    def is_zero(self) -> bool:
        return isinstance(self, Const) and self.value == 0.0

    def is_one(self) -> bool:
        return isinstance(self, Const) and self.value == 1.0

    # -- operators ----------------------------------------------------------
    def __add__(self, other: ExprLike) -> Expr:
        return add(self, other)

    def __radd__(self, other: ExprLike) -> Expr:
        return add(other, self)

    def __sub__(self, other: ExprLike) -> Expr:
        return add(self, mul(-1.0, other))

    def __rsub__(self, other: ExprLike) -> Expr:
        return add(other, mul(-1.0, self))

    def __mul__(self, other: ExprLike) -> Expr:
        return mul(self, other)

    def __rmul__(self, other: ExprLike) -> Expr:
        return mul(other, self)

    def __truediv__(self, other: ExprLike) -> Expr:
        return div(self, other)

    def __rtruediv__(self, other: ExprLike) -> Expr:
        return div(other, self)

    def __neg__(self) -> Expr:
        return mul(-1.0, self)


_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}


def _child_fields(cls: type) -> tuple[str, ...]:
    """The fields of a node class that hold sub-expressions (annotated ``Expr`` or ``Ge``)."""
    if cls not in _CHILD_FIELDS:
        _CHILD_FIELDS[cls] = tuple(f.name for f in attrs.fields(cls) if f.type in ("Expr", "Ge"))
    return _CHILD_FIELDS[cls]


ExprLike = Expr | float | int


def as_expr(value: ExprLike) -> Expr:
    """Wrap numbers as :class:`Const`; pass expressions through."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"cannot use {value!r} in an expression: give a number or an Expr")
    if not math.isfinite(value):
        raise ValueError(f"expression constants must be finite, got {value!r}")
    return Const(float(value))


def _fmt_number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


@frozen
class Const(Expr):
    """A finite constant."""

    value: float


@frozen
class Var(Expr):
    """A bound variable: ``"l"`` or ``"u"``."""

    name: str = field()

    @name.validator
    def _check(self, attribute: object, value: str) -> None:
        if value not in BOUND_VARIABLES:
            raise ValueError(f"Var must be 'l' or 'u', got {value!r}; use Param for parameters")


@frozen
class Param(Expr):
    """A named parameter of the relaxation (constant with respect to ``l, u``)."""

    name: str


@frozen
class Add(Expr):
    left: Expr
    right: Expr


@frozen
class Mul(Expr):
    left: Expr
    right: Expr


@frozen
class Div(Expr):
    """``numerator / denominator``; the denominator is kept away from zero, sign preserved.

    For a chord slope ``u/(u-l)`` the guard can only lower the slope when ``u - l`` is below
    ``sqrt(tiny)``, by at most ``u`` itself: an absolute error under 1e-19 in float32.
    """

    numerator: Expr
    denominator: Expr


@frozen
class Sigmoid(Expr):
    """The logistic function ``1 / (1 + exp(-a))``."""

    arg: Expr


@frozen
class Step(Expr):
    """``floor(a)`` or ``ceil(a)``: piecewise constant, jumps where ``a`` crosses an integer."""

    kind: str = field()
    arg: Expr = field()

    @kind.validator
    def _check(self, attribute: object, value: str) -> None:
        if value not in ("floor", "ceil"):
            raise ValueError(f"Step kind must be 'floor' or 'ceil', got {value!r}")


def floor(arg: ExprLike) -> Expr:
    return Step("floor", as_expr(arg))


def ceil(arg: ExprLike) -> Expr:
    return Step("ceil", as_expr(arg))


@frozen
class Ge(Expr):
    """The condition ``left >= right`` (1.0 or 0.0 when evaluated)."""

    left: Expr
    right: Expr

    def margin(self, env: Environment) -> Value:
        """``left - right``: the condition holds where this is >= 0."""
        return self.left.evaluate(env) - self.right.evaluate(env)


@frozen
class Switch(Expr):
    """``then`` where ``condition`` holds, else ``otherwise``."""

    condition: Ge
    then: Expr
    otherwise: Expr


def switch(condition: Ge, then: ExprLike, otherwise: ExprLike) -> Expr:
    """A :class:`Switch`, or just the branch when both branches are the same."""
    then_e, otherwise_e = as_expr(then), as_expr(otherwise)
    if then_e == otherwise_e:
        return then_e
    return Switch(condition, then_e, otherwise_e)


@frozen
class Named(Expr):
    """A named sub-expression (``λ``, ``κ``): prints as its name, analyses as its body."""

    name: str
    body: Expr


@frozen
class Opaque(Expr):
    """A plain callable of the environment, for third-party relaxations.

    Analysis cannot look inside it (its degree is unknown): properties of
    relaxations that use it are established by numeric probing only.
    Compared by ``name`` and ``uses``; the callable itself is not compared.

    :param name: printed name; also the identity of the node.
    :param fn: ``fn(env) -> Tensor`` where ``env`` maps ``"l"``, ``"u"`` and parameters.
    :param uses: the variable/parameter names ``fn`` reads.
    """

    name: str
    fn: Callable[[Environment], Value] = field(eq=False, repr=False)
    uses: frozenset[str] = frozenset(BOUND_VARIABLES)


#: Every node type: each :class:`Interpretation` has a method for each (the class name in lower case).
NODE_TYPES: tuple[type[Expr], ...] = (
    Const,
    Var,
    Param,
    Add,
    Mul,
    Div,
    Sigmoid,
    Step,
    Ge,
    Switch,
    Named,
    Opaque,
)


def _wrap(expr: Expr, parent: type, strict: bool = False) -> str:
    """``expr`` printed, in parentheses where it binds more loosely than a ``parent`` operand."""
    text = str(expr)
    needs = isinstance(expr, (Add, Switch)) or (strict and isinstance(expr, (Mul, Div)))
    if isinstance(expr, Const) and expr.value < 0:
        needs = True
    return f"({text})" if needs else text


# -- smart constructors with light constant folding ---------------------------------------------


def add(a: ExprLike, b: ExprLike) -> Expr:
    left, right = as_expr(a), as_expr(b)
    if isinstance(left, Const) and isinstance(right, Const):
        return Const(left.value + right.value)
    if left.is_zero():
        return right
    if right.is_zero():
        return left
    return Add(left, right)


def mul(a: ExprLike, b: ExprLike) -> Expr:
    left, right = as_expr(a), as_expr(b)
    if isinstance(left, Const) and isinstance(right, Const):
        return Const(left.value * right.value)
    if left.is_zero() or right.is_zero():
        return Const(0.0)
    if left.is_one():
        return right
    if right.is_one():
        return left
    if isinstance(right, Const):  # constants first: "-l", "2x"
        left, right = right, left
    if isinstance(left, Mul) and isinstance(left.left, Const) and not isinstance(right, Const):
        return mul(left.left, mul(left.right, right))  # (-λ)·l -> -(λl): constants lead
    if isinstance(left, Const) and left.value == -1.0 and isinstance(right, Mul):
        inner = right
        if isinstance(inner.left, Const) and inner.left.value == -1.0:
            return inner.right  # -(-a) = a
    return Mul(left, right)


def div(a: ExprLike, b: ExprLike) -> Expr:
    num, den = as_expr(a), as_expr(b)
    if isinstance(den, Const):
        if den.value == 0.0:
            raise ZeroDivisionError(f"division of {num} by the constant 0")
        return mul(1.0 / den.value, num)
    if num.is_zero():
        return Const(0.0)
    return Div(num, den)


def ge(a: ExprLike, b: ExprLike) -> Ge:
    return Ge(as_expr(a), as_expr(b))


def sigmoid(a: ExprLike) -> Expr:
    return Sigmoid(as_expr(a))


#: The variables ``l`` and ``u``.
L = Var("l")
U = Var("u")


# -- the one dispatch ------------------------------------------------------------------------------

_METHODS: dict[type, str] = {cls: cls.__name__.lower() for cls in NODE_TYPES}


def _method_name(cls: type) -> str:
    """The interpretation method for a node class (a subclass of a node type takes its type's)."""
    name = _METHODS.get(cls)
    if name is None:
        name = next((_METHODS[base] for base in cls.__mro__ if base in _METHODS), None)
        if name is None:
            raise TypeError(
                f"{cls.__name__} is not an expression node type (known: "
                f"{', '.join(c.__name__ for c in NODE_TYPES)})"
            )
        _METHODS[cls] = name
    return name


class Interpretation(abc.ABC, Generic[T]):
    """One meaning of the expression nodes: a method per node type, called through ``self(node)``.

    Every method is abstract here, so a subclass that misses a node type cannot be instantiated;
    ``self(node)`` of a node whose type is none of :data:`NODE_TYPES` raises ``TypeError`` naming it.
    State an interpretation needs (an environment, a box, a memo) lives on its instance.
    """

    def __call__(self, node: Expr) -> T:
        try:
            method = _method_name(type(node))
        except TypeError as error:
            raise TypeError(f"{type(self).__name__}: {error}") from None
        return getattr(self, method)(node)

    @abc.abstractmethod
    def const(self, node: Const) -> T: ...

    @abc.abstractmethod
    def var(self, node: Var) -> T: ...

    @abc.abstractmethod
    def param(self, node: Param) -> T: ...

    @abc.abstractmethod
    def add(self, node: Add) -> T: ...

    @abc.abstractmethod
    def mul(self, node: Mul) -> T: ...

    @abc.abstractmethod
    def div(self, node: Div) -> T: ...

    @abc.abstractmethod
    def sigmoid(self, node: Sigmoid) -> T: ...

    @abc.abstractmethod
    def step(self, node: Step) -> T: ...

    @abc.abstractmethod
    def ge(self, node: Ge) -> T: ...

    @abc.abstractmethod
    def switch(self, node: Switch) -> T: ...

    @abc.abstractmethod
    def named(self, node: Named) -> T: ...

    @abc.abstractmethod
    def opaque(self, node: Opaque) -> T: ...


class Evaluation(Interpretation[Value]):
    """The value of an expression for one environment: Python numbers or torch tensors (any device).

    :param env: ``"l"``, ``"u"`` and parameter values.
    :param memo: named sub-expressions evaluated for this ``env``, by node (filled as they are);
        ``None``: no memo.
    """

    def __init__(self, env: Environment, memo: dict[int, Value] | None = None) -> None:
        self.env = env
        self.memo = memo

    def const(self, node: Const) -> Value:
        return node.value

    def var(self, node: Var) -> Value:
        return self.env[node.name]

    def param(self, node: Param) -> Value:
        try:
            return self.env[node.name]
        except KeyError:
            raise KeyError(f"no value for parameter {node.name!r}") from None

    def add(self, node: Add) -> Value:
        return self(node.left) + self(node.right)

    def mul(self, node: Mul) -> Value:
        return self(node.left) * self(node.right)

    def div(self, node: Div) -> Value:
        num, den = self(node.numerator), self(node.denominator)
        if _is_tensor(den):
            import torch

            # Keep |den| >= sqrt(tiny): the backward pass divides by den**2, which must not underflow
            # (it would turn gradients into inf/NaN). Clamp before dividing: torch.where evaluates
            # both branches. Only denominators below 1e-19 (float32) / 1e-154 (float64) are affected.
            # copysign(max(|den|, guard), den) is den itself wherever |den| >= guard; it avoids
            # torch.where, which costs about ten elementwise passes on some CPU builds.
            guard = math.sqrt(torch.finfo(den.dtype).tiny)
            den = den.abs().clamp_min(guard).copysign(den)
        elif den == 0.0:
            den = math.ulp(0.0)
        return num / den

    def sigmoid(self, node: Sigmoid) -> Value:
        value = self(node.arg)
        if _is_tensor(value):
            import torch

            return torch.sigmoid(value.clamp(-_SIGMOID_CLAMP, _SIGMOID_CLAMP))
        value = max(-_SIGMOID_CLAMP, min(_SIGMOID_CLAMP, value))
        return 1.0 / (1.0 + math.exp(-value))

    def step(self, node: Step) -> Value:
        value = self(node.arg)
        if _is_tensor(value):
            import torch

            # floor/ceil have zero gradient; keep the graph so callers can differentiate the rest.
            return torch.floor(value) if node.kind == "floor" else torch.ceil(value)
        return float(math.floor(value) if node.kind == "floor" else math.ceil(value))

    def ge(self, node: Ge) -> Value:
        # Compared exactly: a number meeting a float32 tensor is replaced by the float32 that
        # decides the same way (the smallest float32 >= it on the right, the largest <= it on
        # the left), never by its nearest float32 (4.1 would become 4.0999999).
        a, b = self(node.left), self(node.right)
        if _is_tensor(a) and not _is_tensor(b):
            return a >= _threshold(b, a, up=True)
        if _is_tensor(b) and not _is_tensor(a):
            return _threshold(a, b, up=False) >= b
        return a >= b

    def switch(self, node: Switch) -> Value:
        cond = self(node.condition)
        a, b = self(node.then), self(node.otherwise)
        if not _is_tensor(cond):
            return a if cond else b
        import torch

        dtype = _dtype(a, b, self.env)
        if not _is_tensor(a) and not _is_tensor(b):
            # Constant branches: c·a + (1-c)·b with c in {0, 1} is exact (one term is 0), and
            # cheaper than torch.where; a bool tensor converts fastest through uint8.
            c = cond.view(torch.uint8).to(dtype)
            if (a, b) == (1.0, 0.0):
                return c
            if (a, b) == (0.0, 1.0):
                return 1.0 - c
            return c * a + (1.0 - c) * b
        return torch.where(
            cond,
            torch.as_tensor(a, dtype=dtype).to(cond.device),
            torch.as_tensor(b, dtype=dtype).to(cond.device),
        )

    def named(self, node: Named) -> Value:
        # A Named node usually appears several times in a relaxation (λ in a slope and an
        # offset); with a memo it is evaluated once per environment.
        if self.memo is None:
            return self(node.body)
        key = id(node)  # the nodes outlive the memo: it lives for one environment
        if key not in self.memo:
            self.memo[key] = self(node.body)
        return self.memo[key]

    def opaque(self, node: Opaque) -> Value:
        return node.fn(self.env)


def _threshold(number: Value, tensor: Tensor, *, up: bool) -> Value:
    """A number that ``tensor`` compares with as it would with the exact ``number``."""
    import torch

    if tensor.dtype == torch.float64:
        return number
    if tensor.dtype == torch.float32:
        return round32_up(float(number)) if up else round32_down(float(number))
    raise TypeError(f"conditions are evaluated in float32 or float64, not {tensor.dtype}")


def _dtype(a: Value, b: Value, env: Environment) -> torch.dtype:
    import torch

    for value in (a, b, *env.values()):
        if _is_tensor(value) and value.is_floating_point():
            return value.dtype
    return torch.get_default_dtype()


class Degree(Interpretation["float | None"]):
    """Polynomial degree in ``(l, u)`` on each piece; ``inf`` if not polynomial, ``None`` if unknown."""

    def const(self, node: Const) -> float | None:
        return 0

    def var(self, node: Var) -> float | None:
        return 1

    def param(self, node: Param) -> float | None:
        return 0

    def _sum(self, a: Expr, b: Expr) -> float | None:
        da, db = self(a), self(b)
        return None if da is None or db is None else max(da, db)

    def add(self, node: Add) -> float | None:
        return self._sum(node.left, node.right)

    def mul(self, node: Mul) -> float | None:
        a, b = self(node.left), self(node.right)
        return None if a is None or b is None else a + b

    def div(self, node: Div) -> float | None:
        a, b = self(node.numerator), self(node.denominator)
        if a is None or b is None:
            return None
        return a if b == 0 else math.inf

    def sigmoid(self, node: Sigmoid) -> float | None:
        inner = self(node.arg)
        if inner is None:
            return None
        return 0 if inner == 0 else math.inf

    def step(self, node: Step) -> float | None:
        return None if self(node.arg) is None else 0  # constant on each piece

    def ge(self, node: Ge) -> float | None:
        return 0

    def switch(self, node: Switch) -> float | None:
        return self._sum(node.then, node.otherwise)

    def named(self, node: Named) -> float | None:
        return self(node.body)

    def opaque(self, node: Opaque) -> float | None:
        return 0 if not (node.uses & BOUND_VARIABLES) else None


class Substitution(Interpretation[Expr]):
    """The expression with variables/parameters replaced by expressions of ``mapping``."""

    def __init__(self, mapping: Mapping[str, Expr]) -> None:
        self.mapping = mapping

    def const(self, node: Const) -> Expr:
        return node

    def var(self, node: Var) -> Expr:
        return self.mapping.get(node.name, node)

    def param(self, node: Param) -> Expr:
        return self.mapping.get(node.name, node)

    def add(self, node: Add) -> Expr:
        return add(self(node.left), self(node.right))

    def mul(self, node: Mul) -> Expr:
        return mul(self(node.left), self(node.right))

    def div(self, node: Div) -> Expr:
        return div(self(node.numerator), self(node.denominator))

    def sigmoid(self, node: Sigmoid) -> Expr:
        return Sigmoid(self(node.arg))

    def step(self, node: Step) -> Expr:
        return Step(node.kind, self(node.arg))

    def ge(self, node: Ge) -> Expr:
        return Ge(self(node.left), self(node.right))

    def switch(self, node: Switch) -> Expr:
        condition = cast(Ge, self(node.condition))  # ge() above substitutes a Ge into a Ge
        return switch(condition, self(node.then), self(node.otherwise))

    def named(self, node: Named) -> Expr:
        body = self(node.body)
        return node if body == node.body else body

    def opaque(self, node: Opaque) -> Expr:
        if not (set(self.mapping) & node.uses):
            return node
        captured = dict(self.mapping)
        inner = node.fn

        def composed(env: Environment) -> Value:
            return inner({**env, **{k: v.evaluate(env) for k, v in captured.items()}})

        uses = (node.uses - set(captured)) | frozenset().union(*(captured[k].variables() for k in captured))
        return Opaque(f"{node.name}∘({', '.join(f'{k}={v}' for k, v in captured.items())})", composed, uses)


class Names(Interpretation[frozenset[str]]):
    """The names of bound variables and parameters an expression mentions."""

    def const(self, node: Const) -> frozenset[str]:
        return frozenset()

    def var(self, node: Var) -> frozenset[str]:
        return frozenset({node.name})

    def param(self, node: Param) -> frozenset[str]:
        return frozenset({node.name})

    def _union(self, node: Expr) -> frozenset[str]:
        return frozenset().union(*(self(child) for child in node.children()))

    add = mul = div = sigmoid = step = ge = switch = named = _union

    def opaque(self, node: Opaque) -> frozenset[str]:
        return frozenset(node.uses)


class Text(Interpretation[str]):
    """How an expression prints: ``λx - λl``, ``(0 if -l >= u else 1)``, ``σ(γ(l/u - u/l))``."""

    def const(self, node: Const) -> str:
        return _fmt_number(node.value)

    def var(self, node: Var) -> str:
        return node.name

    def param(self, node: Param) -> str:
        return node.name

    def add(self, node: Add) -> str:
        right = self(node.right)
        if right.startswith("-"):
            return f"{self(node.left)} - {right[1:]}"
        return f"{self(node.left)} + {right}"

    def mul(self, node: Mul) -> str:
        if isinstance(node.left, Const) and node.left.value == -1.0:
            return f"-{_wrap(node.right, Mul)}"
        # "λl" reads better than "λ*l" when both factors are single symbols
        juxtapose = all(
            isinstance(f, (Var, Param, Named)) and len(self(f)) == 1 for f in (node.left, node.right)
        )
        return f"{_wrap(node.left, Mul)}{'' if juxtapose else '*'}{_wrap(node.right, Mul)}"

    def div(self, node: Div) -> str:
        return f"{_wrap(node.numerator, Div)}/{_wrap(node.denominator, Div, strict=True)}"

    def sigmoid(self, node: Sigmoid) -> str:
        return f"σ({self(node.arg)})"

    def step(self, node: Step) -> str:
        return f"⌊{self(node.arg)}⌋" if node.kind == "floor" else f"⌈{self(node.arg)}⌉"

    def ge(self, node: Ge) -> str:
        return f"{self(node.left)} >= {self(node.right)}"

    def switch(self, node: Switch) -> str:
        return f"({self(node.then)} if {self(node.condition)} else {self(node.otherwise)})"

    def named(self, node: Named) -> str:
        return node.name

    def opaque(self, node: Opaque) -> str:
        return node.name


#: The stateless interpretations, made once.
DEGREE, NAMES, TEXT = Degree(), Names(), Text()
