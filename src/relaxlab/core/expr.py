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
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeAlias

from attrs import field, frozen

from relaxlab.core.rounding import round32_down, round32_up

if TYPE_CHECKING:  # torch loads with the first tensor, not with the algebra (the CLI starts without it)
    import torch
    from torch import Tensor

#: Names of the two bound variables.
BOUND_VARIABLES = frozenset({"l", "u"})

#: Environment key of an optional memo (a dict) for :class:`Named` sub-expressions: with it,
#: a name used several times is evaluated once per environment. Never a variable name.
MEMO = "\0memo"

#: Sigmoid arguments are clamped to this magnitude: sigma(80) differs from 1 by 2e-35,
#: and the clamp keeps gradients finite when ``l/u`` overflows for tiny ``u``.
_SIGMOID_CLAMP = 80.0

Value: TypeAlias = "Tensor | float"
Environment = Mapping[str, Value]


def _is_tensor(value: object) -> bool:
    """Whether ``value`` is a torch tensor; no tensor exists before torch is imported, so this never imports it."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


class Expr:
    """Base of all expression nodes. Supports ``+ - * /`` and unary ``-``."""

    # -- evaluation and analysis (overridden by every node) -----------------
    def evaluate(self, env: Environment) -> Value:
        """Value of the expression for ``env`` (``"l"``, ``"u"`` and parameter names)."""
        raise NotImplementedError

    def children(self) -> tuple[Expr, ...]:
        return ()

    def degree(self) -> float | None:
        """Polynomial degree in ``(l, u)`` on each piece; ``inf`` if not polynomial, ``None`` if unknown."""
        raise NotImplementedError

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        """The expression with variables/parameters replaced by expressions."""
        raise NotImplementedError

    # -- derived helpers ----------------------------------------------------
    def walk(self) -> Iterator[Expr]:
        """Every node, depth first, this one included."""
        yield self
        for child in self.children():
            yield from child.walk()

    def variables(self) -> frozenset[str]:
        """Names of bound variables and parameters the expression mentions."""
        names: set[str] = set()
        for node in self.walk():
            if isinstance(node, (Var, Param)):
                names.add(node.name)
            elif isinstance(node, Opaque):
                names.update(node.uses)
        return frozenset(names)

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

    def evaluate(self, env: Environment) -> Value:
        return self.value

    def degree(self) -> float | None:
        return 0

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        return self

    def __str__(self) -> str:
        return _fmt_number(self.value)


@frozen
class Var(Expr):
    """A bound variable: ``"l"`` or ``"u"``."""

    name: str = field()

    @name.validator
    def _check(self, attribute: object, value: str) -> None:
        if value not in BOUND_VARIABLES:
            raise ValueError(f"Var must be 'l' or 'u', got {value!r}; use Param for parameters")

    def evaluate(self, env: Environment) -> Value:
        return env[self.name]

    def degree(self) -> float | None:
        return 1

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        return mapping.get(self.name, self)

    def __str__(self) -> str:
        return self.name


@frozen
class Param(Expr):
    """A named parameter of the relaxation (constant with respect to ``l, u``)."""

    name: str

    def evaluate(self, env: Environment) -> Value:
        try:
            return env[self.name]
        except KeyError:
            raise KeyError(f"no value for parameter {self.name!r}") from None

    def degree(self) -> float | None:
        return 0

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        return mapping.get(self.name, self)

    def __str__(self) -> str:
        return self.name


@frozen
class Add(Expr):
    left: Expr
    right: Expr

    def evaluate(self, env: Environment) -> Value:
        return self.left.evaluate(env) + self.right.evaluate(env)

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)

    def degree(self) -> float | None:
        a, b = self.left.degree(), self.right.degree()
        return None if a is None or b is None else max(a, b)

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        return add(self.left.substitute(mapping), self.right.substitute(mapping))

    def __str__(self) -> str:
        right = str(self.right)
        if right.startswith("-"):
            return f"{self.left} - {right[1:]}"
        return f"{self.left} + {right}"


@frozen
class Mul(Expr):
    left: Expr
    right: Expr

    def evaluate(self, env: Environment) -> Value:
        return self.left.evaluate(env) * self.right.evaluate(env)

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)

    def degree(self) -> float | None:
        a, b = self.left.degree(), self.right.degree()
        return None if a is None or b is None else a + b

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        return mul(self.left.substitute(mapping), self.right.substitute(mapping))

    def __str__(self) -> str:
        if isinstance(self.left, Const) and self.left.value == -1.0:
            return f"-{_wrap(self.right, Mul)}"
        return f"{_wrap(self.left, Mul)}{_wrap(self.right, Mul)}" if _juxtapose(self) else (
            f"{_wrap(self.left, Mul)}*{_wrap(self.right, Mul)}"
        )


def _juxtapose(node: Mul) -> bool:
    # "λl" reads better than "λ*l" when both factors are single symbols.
    return all(isinstance(f, (Var, Param, Named)) and len(str(f)) == 1 for f in (node.left, node.right))


@frozen
class Div(Expr):
    """``numerator / denominator``; the denominator is kept away from zero, sign preserved.

    For a chord slope ``u/(u-l)`` the guard can only lower the slope when ``u - l`` is below
    ``sqrt(tiny)``, by at most ``u`` itself: an absolute error under 1e-19 in float32.
    """

    numerator: Expr
    denominator: Expr

    def evaluate(self, env: Environment) -> Value:
        num = self.numerator.evaluate(env)
        den = self.denominator.evaluate(env)
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

    def children(self) -> tuple[Expr, ...]:
        return (self.numerator, self.denominator)

    def degree(self) -> float | None:
        a, b = self.numerator.degree(), self.denominator.degree()
        if a is None or b is None:
            return None
        return a if b == 0 else math.inf

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        return div(self.numerator.substitute(mapping), self.denominator.substitute(mapping))

    def __str__(self) -> str:
        return f"{_wrap(self.numerator, Div)}/{_wrap(self.denominator, Div, strict=True)}"


@frozen
class Sigmoid(Expr):
    """The logistic function ``1 / (1 + exp(-a))``."""

    arg: Expr

    def evaluate(self, env: Environment) -> Value:
        value = self.arg.evaluate(env)
        if _is_tensor(value):
            import torch

            return torch.sigmoid(value.clamp(-_SIGMOID_CLAMP, _SIGMOID_CLAMP))
        value = max(-_SIGMOID_CLAMP, min(_SIGMOID_CLAMP, value))
        return 1.0 / (1.0 + math.exp(-value))

    def children(self) -> tuple[Expr, ...]:
        return (self.arg,)

    def degree(self) -> float | None:
        inner = self.arg.degree()
        if inner is None:
            return None
        return 0 if inner == 0 else math.inf

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        return Sigmoid(self.arg.substitute(mapping))

    def __str__(self) -> str:
        return f"σ({self.arg})"


@frozen
class Step(Expr):
    """``floor(a)`` or ``ceil(a)``: piecewise constant, jumps where ``a`` crosses an integer."""

    kind: str = field()
    arg: Expr = field()

    @kind.validator
    def _check(self, attribute: object, value: str) -> None:
        if value not in ("floor", "ceil"):
            raise ValueError(f"Step kind must be 'floor' or 'ceil', got {value!r}")

    def evaluate(self, env: Environment) -> Value:
        value = self.arg.evaluate(env)
        if _is_tensor(value):
            import torch

            # floor/ceil have zero gradient; keep the graph so callers can differentiate the rest.
            return torch.floor(value) if self.kind == "floor" else torch.ceil(value)
        return float(math.floor(value) if self.kind == "floor" else math.ceil(value))

    def children(self) -> tuple[Expr, ...]:
        return (self.arg,)

    def degree(self) -> float | None:
        inner = self.arg.degree()
        return None if inner is None else 0  # constant on each piece

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        return Step(self.kind, self.arg.substitute(mapping))

    def __str__(self) -> str:
        return f"⌊{self.arg}⌋" if self.kind == "floor" else f"⌈{self.arg}⌉"


def floor(arg: ExprLike) -> Expr:
    return Step("floor", as_expr(arg))


def ceil(arg: ExprLike) -> Expr:
    return Step("ceil", as_expr(arg))


@frozen
class Ge(Expr):
    """The condition ``left >= right`` (1.0 or 0.0 when evaluated)."""

    left: Expr
    right: Expr

    def evaluate(self, env: Environment) -> Value:
        # Compared exactly: a number meeting a float32 tensor is replaced by the float32 that
        # decides the same way (the smallest float32 >= it on the right, the largest <= it on
        # the left), never by its nearest float32 (4.1 would become 4.0999999).
        a, b = self.left.evaluate(env), self.right.evaluate(env)
        if _is_tensor(a) and not _is_tensor(b):
            return a >= _threshold(b, a, up=True)
        if _is_tensor(b) and not _is_tensor(a):
            return _threshold(a, b, up=False) >= b
        return a >= b

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)

    def degree(self) -> float | None:
        return 0

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        return Ge(self.left.substitute(mapping), self.right.substitute(mapping))

    def margin(self, env: Environment) -> Value:
        """``left - right``: the condition holds where this is >= 0."""
        return self.left.evaluate(env) - self.right.evaluate(env)

    def __str__(self) -> str:
        return f"{self.left} >= {self.right}"


@frozen
class Switch(Expr):
    """``then`` where ``condition`` holds, else ``otherwise``."""

    condition: Ge
    then: Expr
    otherwise: Expr

    def evaluate(self, env: Environment) -> Value:
        cond = self.condition.evaluate(env)
        a, b = self.then.evaluate(env), self.otherwise.evaluate(env)
        if not _is_tensor(cond):
            return a if cond else b
        import torch

        dtype = _dtype(a, b, env)
        if not _is_tensor(a) and not _is_tensor(b):
            # Constant branches: c·a + (1-c)·b with c in {0, 1} is exact (one term is 0), and
            # cheaper than torch.where; a bool tensor converts fastest through uint8.
            c = cond.view(torch.uint8).to(dtype)
            if (a, b) == (1.0, 0.0):
                return c
            if (a, b) == (0.0, 1.0):
                return 1.0 - c
            return c * a + (1.0 - c) * b
        return torch.where(cond, torch.as_tensor(a, dtype=dtype).to(cond.device),
                           torch.as_tensor(b, dtype=dtype).to(cond.device))

    def children(self) -> tuple[Expr, ...]:
        return (self.condition, self.then, self.otherwise)

    def degree(self) -> float | None:
        a, b = self.then.degree(), self.otherwise.degree()
        return None if a is None or b is None else max(a, b)

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        return switch(
            self.condition.substitute(mapping),  # type: ignore[arg-type]
            self.then.substitute(mapping),
            self.otherwise.substitute(mapping),
        )

    def __str__(self) -> str:
        return f"({self.then} if {self.condition} else {self.otherwise})"


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
        if _is_tensor(value) and value.is_floating_point():  # type: ignore[union-attr]
            return value.dtype  # type: ignore[union-attr]
    return torch.get_default_dtype()


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

    def evaluate(self, env: Environment) -> Value:
        # A Named node usually appears several times in a relaxation (λ in a slope and an
        # offset); with a memo in the environment it is evaluated once per environment.
        memo = env.get(MEMO)
        if not isinstance(memo, dict):
            return self.body.evaluate(env)
        key = id(self)
        if key not in memo:
            memo[key] = self.body.evaluate(env)
        return memo[key]

    def children(self) -> tuple[Expr, ...]:
        return (self.body,)

    def degree(self) -> float | None:
        return self.body.degree()

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        body = self.body.substitute(mapping)
        return self if body == self.body else body

    def __str__(self) -> str:
        return self.name


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

    def evaluate(self, env: Environment) -> Value:
        return self.fn({k: v for k, v in env.items() if k != MEMO} if MEMO in env else env)

    def degree(self) -> float | None:
        return 0 if not (self.uses & BOUND_VARIABLES) else None

    def substitute(self, mapping: Mapping[str, Expr]) -> Expr:
        if not (set(mapping) & self.uses):
            return self
        captured = dict(mapping)
        inner = self.fn

        def composed(env: Environment) -> Value:
            return inner({**env, **{k: v.evaluate(env) for k, v in captured.items()}})

        uses = (self.uses - set(mapping)) | frozenset().union(*(captured[k].variables() for k in captured))
        return Opaque(f"{self.name}∘({', '.join(f'{k}={v}' for k, v in captured.items())})", composed, uses)

    def __str__(self) -> str:
        return self.name


def _wrap(expr: Expr, parent: type, strict: bool = False) -> str:
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
