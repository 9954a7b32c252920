"""A roofline of the engine: FLOPs and bytes a bound and a training step need, against what runs.

Run: ``.venv/bin/python benchmarks/roofline.py [--nets FC CONV CONV+] [--methods IBP "CROWN-IBP (R)" CROWN DeepZ]
[--batch 100] [--repeats 3] [--no-profile] [--json out.json]``

Setting (issue 24): one thread, batch 100, 1x28x28 inputs uniform in [0, 1], the registered
FC / CONV / CONV+ with PyTorch's default initialisation (seed 0), eps = 0.1 clipped to [0, 1],
float32, 9 margin rows per example (elided into the last layer), ``lower_only``. *bound*: the
lower bounds under ``torch.no_grad()``; *step*: the lower bounds, the robust cross-entropy and
``backward()`` with the model in training mode. Only the public API runs the engine
(``relaxlab.compute_bounds``).

**How the counts are derived** (``Count``; from the layer shapes and the one engine's algorithm,
``engine/bounder.py``, ``engine/relu_step.py`` and ``engine/patches.py``; docs/engine.md). ``B`` batch, ``S = 9``
rows, ``n_k`` neurons of layer ``k``, ``MAC(L)`` the multiply-adds of layer ``L`` for one example
(``Linear``: ``n_in·n_out``; ``Conv2d``: ``C_out·H_out·W_out·C_in·k_h·k_w``). One MAC = 2 FLOPs.

- *Interval segment* (IBP everywhere; CROWN-IBP's intermediate bounds; every method's first
  ReLU, whose segment has one non-diagonal layer): centre and radius through each affine layer,
  ``W c`` and ``|W| r``: 2 products of ``B·MAC(L)``; plus elementwise passes over ``B·n`` for the
  centre/radius (10 traversals of the input, 6 of the output).
- *Rows pulled back* ("backsub", ``Bounder.rows_lower``): ``R`` rows per example start at a layer's output.
  A trailing ``Linear`` is *elided* into the rows first: ``rows @ W``, ``R·n_out·n_in`` MACs, once
  for the whole batch for the identity rows ``[I; -I]`` of intermediate bounds (``R = 2n``, rows
  shared by the batch until the first ReLU step), ``B·S·K·n_in`` for the margins. Then, down to the
  input: each ReLU step (CROWN: ``clamp``, one matrix-vector product with the upper offsets,
  ``mul_``, ``addcmul_``; 8 traversals of the rows tensor ``B·R·n``, 5 for DeepZ's equal slopes; the
  first step on shared rows is a ``(B, n) @ (n, R)`` product and 3 traversals), each ``Linear``
  ``B·R·MAC(L)`` plus the bias ``B·R·n_out``, each ``Conv2d`` a polyphase ``conv2d`` (``transposed_conv``:
  ``s_h·s_w`` phases of ``ceil(k/s)^2`` taps on the output grid padded by ``ceil(k/s) - 1``:
  ``B·R·C_out·C_in·s_h·s_w·t_h·t_w·h·w`` MACs, more than ``MAC(L)`` by the border) and an
  interleaving copy, the first convolution next to the box without the copy
  (``backward_phases``); then the *concretisation* ``c·u + max(c, 0)·(l - u)``: a clamp and two
  matrix-vector products over the input positions (4 traversals).
- *Patches* (``engine/patches.py``; CROWN's bounds of a convolution's neurons when every segment
  down to the input is one convolution: CONV+'s second ReLU): ``G = 2·C_out`` kernel rows per
  window position, ``L`` positions; ReLU step on ``(B·L, G, K)``; each convolution a product with
  its ``(K, K')`` transfer matrix, ``B·L·G·K·K'`` MACs; concretisation over ``(B·L, G, K_box)``.
- *Step*: every product is differentiated with respect to each operand that needs a gradient
  (weights, and rows once they depend on weights; not the input box, the margins or the identity
  rows): one more product of the same size per such operand. The ReLU step's hand-written
  backward (``_ReluStep.backward``) makes about 30 traversals of the rows tensor for CROWN (24
  for DeepZ), the concretisation's (``_Concretize.backward``) 10 and no product (products only
  for the gradient of a box that needs one: the interval boxes of IBP's final step); the
  interval passes' about twice their forward.
- *Bytes*: products read both operands and write the result once (4 bytes an entry, no reuse
  across products); elementwise passes read/write 4 bytes an entry per traversal (masks 1).
- *Lines*: evaluating the relaxation's lines at ``B·n`` neurons; its traversals per neuron are
  counted by running ``coefficients`` once under a dispatch counter.

The neuron-sized terms are small; the counts of products are checked against torch's
``flop_registry`` (what ``FlopCounterMode`` counts) on the real run (column ``torch``: products as executed; ``counted/torch``
near 1 means the model above is the algorithm that ran).

**Rates.** *achieved*: counted product FLOPs / measured time. *machine*: every distinct product
shape of the count, timed alone on random data (``torch.mm`` / ``conv2d`` / batched
matrix-vector, one thread, best of 3), gives the time the products would take at the machine's
rate for those shapes; the elementwise traffic at the measured bandwidth of a large ``addcmul``
gives its floor. *profile*: ``torch.profiler`` self CPU time of one step, split into products
(``mm``, ``bmm``, ``addmm``, ``conv``), other aten ops (elementwise, reductions, copies) and the
rest of the wall time (Python, dispatch, allocation, the profiler's own overhead).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import best_time, load_note  # noqa: E402

import relaxlab  # noqa: E402
from relaxlab.engine.spec import margin_spec  # noqa: E402
from relaxlab.nn import Normalize  # noqa: E402

BATCH, EPS, DOMAIN, NUM_CLASSES, SPECS = 100, 0.1, (0.0, 1.0), 10, 9
MEAN, STD = [0.1307], [0.3081]
#: the engine's CPU budget of one coefficient tensor (elements) for intermediate rows (bounder.py)
MAX_ELEMENTS_CPU = 1 << 21
BYTES = 4


# ---------------------------------------------------------------------------------------------
# the network as the engine sees it


@dataclass(frozen=True)
class Layer:
    kind: str  # "linear", "conv" or "diag"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: tuple[int, ...] = ()
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)

    @property
    def mac(self) -> int:
        if self.kind == "linear":
            return self.n_in * self.n_out
        if self.kind == "conv":
            return self.n_out * self.weight[1] * self.weight[2] * self.weight[3]
        return 0

    def polyphase(self) -> tuple[int, int]:
        """``(MACs per row, entries of the phase layout)`` of the polyphase transposed convolution."""
        c_out, c_in, k_h, k_w = self.weight
        (s_h, s_w), (_, h_out, w_out) = self.stride, self.out_shape
        t_h, t_w = -(-k_h // s_h), -(-k_w // s_w)
        h, w = h_out + t_h - 1, w_out + t_w - 1
        return c_out * c_in * s_h * s_w * t_h * t_w * h * w, c_in * s_h * s_w * h * w


def segments_of(model: nn.Sequential, input_shape: tuple[int, ...]) -> list[list[Layer]]:
    """The affine layers between the ReLUs (the engine's segments), with their shapes."""
    segments: list[list[Layer]] = [[]]
    x = torch.zeros(1, *input_shape)
    for module in model:
        y = module(x)
        shapes = (tuple(x.shape[1:]), tuple(y.shape[1:]))
        if isinstance(module, nn.ReLU):
            segments.append([])
        elif isinstance(module, nn.Linear):
            segments[-1].append(Layer("linear", *shapes, tuple(module.weight.shape)))
        elif isinstance(module, nn.Conv2d):
            segments[-1].append(
                Layer(
                    "conv", *shapes, tuple(module.weight.shape), tuple(module.stride), tuple(module.padding)
                )
            )
        elif isinstance(module, (nn.Flatten, Normalize)):
            segments[-1].append(Layer("diag", *shapes))
        else:
            raise ValueError(f"roofline: no count for {type(module).__name__}")
        x = y
    return segments


# ---------------------------------------------------------------------------------------------
# the count


@dataclass
class Count:
    """Products (with their shapes, for the machine rate) and elementwise traffic, forward and backward."""

    products: list[dict] = field(default_factory=list)
    elementwise: list[dict] = field(default_factory=list)

    def product(
        self, what: str, macs: float, operands: tuple[float, float, float], shape: tuple, grads: int
    ) -> None:
        """``macs`` multiply-adds reading operands of ``operands[0:2]`` entries, writing ``operands[2]``;
        ``grads``: how many of the two operands need a gradient in a training step."""
        self.products.append(
            {
                "what": what,
                "flops": 2.0 * macs,
                "bytes": BYTES * sum(operands),
                "shape": shape,
                "grads": grads,
            }
        )

    def passes(
        self, what: str, entries: float, traversals: float, backward: float, flops_per_entry: float = 1.0
    ) -> None:
        self.elementwise.append(
            {
                "what": what,
                "entries": entries,
                "traversals": traversals,
                "backward": backward,
                "flops": flops_per_entry * entries,
            }
        )

    def largest(self, step: bool, most: int = 4) -> list[str]:
        """The ``most`` largest counted items: products by FLOPs, elementwise passes by bytes."""
        flops: dict[str, float] = defaultdict(float)
        moved: dict[str, float] = defaultdict(float)
        for p in self.products:
            flops[p["what"]] += p["flops"] * (1 + (p["grads"] if step else 0))
        for e in self.elementwise:
            moved[e["what"]] += BYTES * e["entries"] * (e["traversals"] + (e["backward"] if step else 0))
        top = sorted(flops.items(), key=lambda item: -item[1])[:most]
        top_moved = sorted(moved.items(), key=lambda item: -item[1])[:most]
        return [f"{what} {value / 1e9:.2f} GFLOP" for what, value in top] + [
            f"{what} {value / 1e9:.2f} GB" for what, value in top_moved
        ]

    def totals(self, step: bool) -> dict[str, float]:
        flops = sum(p["flops"] * (1 + (p["grads"] if step else 0)) for p in self.products)
        product_bytes = sum(p["bytes"] * (1 + (p["grads"] if step else 0)) for p in self.products)
        elem_bytes = sum(
            BYTES * e["entries"] * (e["traversals"] + (e["backward"] if step else 0))
            for e in self.elementwise
        )
        elem_flops = sum(e["flops"] * (2 if step else 1) for e in self.elementwise)
        return {
            "product_flops": flops,
            "product_bytes": product_bytes,
            "elementwise_bytes": elem_bytes,
            "elementwise_flops": elem_flops,
        }


RELU_STEP = {  # traversals of the rows tensor: forward (full rows), forward (shared rows), backward
    "CROWN": (8, 3, 30),
    "CROWN-IBP (R)": (8, 3, 30),
    "DeepZ": (5, 2, 24),
}


def count_interval(count: Count, segment: list[Layer], batch: int, first: bool) -> None:
    """Centre/radius through one segment; after the first, the box depends on the weights too."""
    for layer in segment:
        count.passes(
            "interval: centre/radius in", batch * layer.n_in, 10 if layer.kind != "diag" else 4, 2.0 * 10
        )
        if layer.kind == "diag":
            continue
        shape = ("mm", batch, layer.n_in, layer.n_out) if layer.kind == "linear" else ("conv", batch, layer)
        for what in ("interval: W c", "interval: |W| r"):
            count.product(
                what,
                batch * layer.mac,
                (batch * layer.n_in, math.prod(layer.weight), batch * layer.n_out),
                shape,
                1 if first else 2,
            )
        count.passes("interval: c - r, c + r", batch * layer.n_out, 6, 12)


def count_rows(
    count: Count,
    segments: list[list[Layer]],
    start: int,
    rows: int,
    batch: int,
    method: str,
    *,
    shared: bool,
    chunk: int,
) -> None:
    """Rows ``R`` on the output of ``segments[start]`` pulled back to the input box (``Bounder.rows_lower``)."""
    step_fwd, step_shared, step_bwd = RELU_STEP[method]
    layers = [list(segment) for segment in segments[: start + 1]]
    width = {True: 1, False: batch}
    is_shared = shared
    top = layers[start]
    if top and top[-1].kind == "linear":  # elision
        layer = top.pop()
        n = width[is_shared]
        count.product(
            "rows: elided Linear",
            n * rows * layer.mac,
            (n * rows * layer.n_out, layer.mac, n * rows * layer.n_in),
            ("mm", n * min(rows, chunk), layer.n_out, layer.n_in),
            1,
        )
    while layers[0] and layers[0][0].kind == "diag":  # the box moves forward through them
        layers[0].pop(0)
    first_conv = layers[0].pop(0) if layers[0] and layers[0][0].kind == "conv" else None
    # the box: the input after the diagonal layers, in polyphase layout next to a convolution
    box = (
        first_conv.polyphase()[1]
        if first_conv is not None
        else (layers[0][0].n_in if layers[0] else segments[0][-1].n_out)
    )
    for index in range(start, -1, -1):
        for layer in reversed(layers[index]):
            if layer.kind == "diag":
                continue
            n = width[is_shared]
            if layer.kind == "linear":
                count.product(
                    "rows: Linear",
                    n * rows * layer.mac,
                    (n * rows * layer.n_out, layer.mac, n * rows * layer.n_in),
                    ("mm", n * min(rows, chunk), layer.n_out, layer.n_in),
                    2 - is_shared,
                )
                count.product(
                    "rows: Linear bias",
                    n * rows * layer.n_out,
                    (n * rows * layer.n_out, layer.n_out, n * rows),
                    ("mv", n * min(rows, chunk), layer.n_out),
                    2 - is_shared,
                )
            else:
                macs, _ = layer.polyphase()
                count.product(
                    "rows: conv (polyphase)",
                    n * rows * macs,
                    (n * rows * layer.n_out, math.prod(layer.weight), n * rows * layer.n_in),
                    ("conv_t", n * min(rows, chunk), layer),
                    2 - is_shared,
                )
                count.passes("rows: conv interleave/crop", n * rows * layer.n_in, 2, 2)
        if index > 0:  # the ReLU before this segment
            n_relu = segments[index - 1][-1].out_shape if segments[index - 1] else None
            n_relu = math.prod(n_relu) if n_relu else 0
            if is_shared:
                count.product(
                    "relu step: offsets (shared rows)",
                    batch * rows * n_relu,
                    (batch * n_relu, rows * n_relu, batch * rows),
                    ("mm", batch, n_relu, min(rows, chunk)),
                    1,
                )
                count.passes("relu step (shared rows)", batch * rows * n_relu, step_shared, step_bwd)
                is_shared = False
            else:
                count.product(
                    "relu step: offsets",
                    batch * rows * n_relu,
                    (batch * rows * n_relu, batch * n_relu, batch * rows),
                    ("mv", batch * min(rows, chunk), n_relu),
                    2,
                )
                count.passes("relu step", batch * rows * n_relu, step_fwd, step_bwd)
    n = width[is_shared]
    if first_conv is not None:
        macs, phases = first_conv.polyphase()
        count.product(
            "rows: first conv (polyphase)",
            n * rows * macs,
            (n * rows * first_conv.n_out, math.prod(first_conv.weight), n * rows * phases),
            ("conv_t", n * min(rows, chunk), first_conv),
            2 - is_shared,
        )
    for what in ("concretise: c·u", "concretise: max(c,0)·(l-u)"):
        count.product(
            what,
            n * rows * box,
            (n * rows * box, batch * box, n * rows),
            ("mv", n * min(rows, chunk), box),
            0,
        )
    count.passes("concretise: clamp", n * rows * box, 2, 10)


def count_patches(count: Count, segments: list[list[Layer]], start: int, batch: int, method: str) -> None:
    """CROWN's rows of a convolution's neurons in patches (``patches.patch_bounds``)."""
    step_fwd, step_shared, step_bwd = RELU_STEP[method]
    convs = [next(layer for layer in segments[0] if layer.kind == "conv")] + [
        segments[i][0] for i in range(1, start + 1)
    ]
    top = convs[-1]
    channels, n_h, n_w = top.out_shape
    positions, groups = n_h * n_w, 2 * channels
    size = (1, 1)
    sizes = []
    for conv in reversed(convs):
        k_h, k_w = conv.weight[-2:]
        size = ((size[0] - 1) * conv.stride[0] + k_h, (size[1] - 1) * conv.stride[1] + k_w)
        sizes.append(conv.in_shape[0] * size[0] * size[1])
    rows = batch * positions * groups
    for depth in range(len(convs) - 1):
        k_out, k_in = sizes[depth], sizes[depth + 1]
        if depth == 0:
            count.product(
                "patches: relu step offsets (shared kernel)",
                rows * k_out,
                (batch * positions * k_out, groups * k_out, rows),
                ("mm", batch * positions, k_out, groups),
                1,
            )
            count.passes("patches: relu step (shared)", rows * k_out, step_shared, step_bwd)
        else:
            count.product(
                "patches: relu step offsets",
                rows * k_out,
                (rows * k_out, batch * positions * k_out, rows),
                ("mv", rows, k_out),
                2,
            )
            count.passes("patches: relu step", rows * k_out, step_fwd, step_bwd)
        count.product(
            "patches: transfer",
            rows * k_out * k_in,
            (rows * k_out, k_out * k_in, rows * k_in),
            ("mm", rows, k_out, k_in),
            2,
        )
        count.product("patches: conv bias", rows * k_out, (rows * k_out, k_out, rows), ("mv", rows, k_out), 2)
    box = sizes[-1]
    for what in ("patches: concretise c·u", "patches: concretise max(c,0)·(l-u)"):
        count.product(what, rows * box, (rows * box, batch * positions * box, rows), ("mv", rows, box), 0)
    count.passes("patches: concretise clamp", rows * box, 2, 10)
    count.passes("patches: windows of lines and box", batch * positions * sum(sizes), 6, 0)


def lines_traversals(name: str) -> float:
    """Traversals of a neuron-sized tensor when the relaxation's lines are evaluated (executed count)."""
    relaxation = relaxlab.get_relaxation(name)
    lower = -torch.rand(64, 256)
    upper = torch.rand(64, 256)
    with Traffic() as traffic:
        relaxation.coefficients(lower, upper)
    return traffic.bytes / (BYTES * lower.numel())


def patches_apply(segments: list[list[Layer]], index: int) -> bool:
    """The rule of ``engine.patches.applies`` on this model: after the leading diagonal layers, every segment down
    to the input is exactly one convolution."""
    first = [layer for layer in segments[0]]
    while first and first[0].kind == "diag":
        first.pop(0)
    chain = [first] + [segments[i] for i in range(1, index + 1)]
    return index > 0 and all(len(seg) == 1 and seg[0].kind == "conv" for seg in chain)


def count_method(segments: list[list[Layer]], method: str, batch: int) -> Count:
    """The count of one bound (forward) of ``method`` on ``segments``; ``Count.totals(step=True)`` adds backward."""
    count = Count()
    n_relu = len(segments) - 1
    interval = method in ("IBP", "CROWN-IBP (R)")
    line_passes = lines_traversals(method)
    neurons = [segments[i][-1].n_out for i in range(n_relu)]
    input_numel = math.prod(segments[0][0].in_shape)
    for index in range(n_relu):
        if index == 0 or interval:
            count_interval(count, segments[index], batch, first=index == 0)
        elif patches_apply(segments, index):
            count_patches(count, segments, index, batch, method)
        else:
            widest = max(
                [input_numel]
                + [layer.n_in for seg in segments[: index + 1] for layer in seg]
                + [layer.n_out for seg in segments[: index + 1] for layer in seg]
            )
            chunk = max(1, MAX_ELEMENTS_CPU // (batch * widest))
            count_rows(count, segments, index, 2 * neurons[index], batch, method, shared=True, chunk=chunk)
        count.passes("lines", batch * neurons[index], line_passes, 2 * line_passes)
    last = n_relu
    if method == "IBP":
        layer = segments[last][-1]
        count.product(
            "final: margins elided",
            batch * SPECS * layer.mac,
            (batch * SPECS * NUM_CLASSES, layer.mac, batch * SPECS * layer.n_in),
            ("bmm", batch, SPECS, NUM_CLASSES, layer.n_in),
            1,
        )
        for what in ("final: concretise c·u", "final: concretise max(c,0)·(l-u)"):
            count.product(
                what,
                batch * SPECS * layer.n_in,
                (batch * SPECS * layer.n_in, batch * layer.n_in, batch * SPECS),
                ("mv", batch * SPECS, layer.n_in),
                2,
            )
        count.passes("final: concretise clamp", batch * SPECS * layer.n_in, 2, 6)
    else:
        count_rows(
            count,
            segments,
            last,
            SPECS,
            batch,
            method if method != "IBP" else "CROWN",
            shared=False,
            chunk=SPECS,
        )
    return count


# ---------------------------------------------------------------------------------------------
# what runs


VIEWS = {
    "view",
    "_unsafe_view",
    "reshape",
    "expand",
    "t",
    "transpose",
    "permute",
    "unsqueeze",
    "squeeze",
    "slice",
    "select",
    "as_strided",
    "detach",
    "alias",
    "unfold",
    "split",
    "split_with_sizes",
    "lift_fresh",
    "_reshape_alias",
}


class Traffic(TorchDispatchMode):
    """Bytes every non-view aten op reads and writes (tensors' stored sizes), and the FLOPs of the
    products (torch's ``flop_registry``, what ``FlopCounterMode`` counts), as executed. Not
    ``FlopCounterMode`` itself: it registers global module hooks, which the engine refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0.0
        self.flops = 0.0
        self.by_op: dict[str, float] = defaultdict(float)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func._overloadpacket in flop_registry:
            self.flops += flop_registry[func._overloadpacket](*args, **(kwargs or {}), out_val=out)
        name = func.__name__.split(".")[0]
        if name not in VIEWS:
            moved = 0.0
            for value in [
                *args,
                *(kwargs or {}).values(),
                *(out if isinstance(out, (tuple, list)) else (out,)),
            ]:
                if isinstance(value, Tensor):
                    moved += min(value.numel() * value.element_size(), value.untyped_storage().nbytes())
            self.bytes += moved
            self.by_op[name] += moved
        return out


def problem(arch: str, batch: int) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = relaxlab.get_registry().architectures[arch].build((1, 28, 28), NUM_CLASSES, MEAN, STD)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    return model, x, margin_spec(labels, NUM_CLASSES)


def runners(model: nn.Module, x: Tensor, C: Tensor, method: str) -> dict[str, Callable[[], None]]:
    def lower() -> Tensor:
        lb, _ = relaxlab.compute_bounds(
            model, x, EPS, method, C=C, domain=DOMAIN, lower_only=True, check_centre=False
        )
        return lb

    def bound() -> None:
        model.eval()
        with torch.no_grad():
            lower()

    def step() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        lb = lower()
        logits = torch.cat([lb.new_zeros(lb.shape[0], 1), -lb], dim=1)
        F.cross_entropy(logits, lb.new_zeros(lb.shape[0], dtype=torch.long)).backward()

    return {"bound": bound, "step": step}


def executed(run: Callable[[], None]) -> tuple[float, float]:
    """``(FLOPs of the products, bytes of every non-view aten op)`` of one run, as executed."""
    with Traffic() as traffic:
        run()
    return traffic.flops, traffic.bytes


PRODUCT_OPS = ("mm", "bmm", "addmm", "addmv", "mv", "dot", "baddbmm", "conv", "matmul", "linear", "einsum")


def profile(run: Callable[[], None]) -> dict[str, float]:
    """Self CPU seconds of one (warm) run: products, other aten ops, and the rest of its wall time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    start = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    wall = time.perf_counter() - start
    products = other = 0.0
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        seconds = event.self_cpu_time_total / 1e6
        if any(word in event.key[len("aten::") :] for word in PRODUCT_OPS):
            products += seconds
        else:
            other += seconds
    return {
        "wall": wall,
        "products": products,
        "elementwise": other,
        "rest": max(0.0, wall - products - other),
    }


# ---------------------------------------------------------------------------------------------
# the machine


_RATE_CACHE: dict[tuple, float] = {}


def machine_seconds(shape: tuple, flops: float) -> float:
    """Seconds the machine takes for ``flops`` of products of this shape (its rate timed once per shape)."""
    if shape not in _RATE_CACHE:
        kind = shape[0]
        if kind == "mm":
            _, m, k, n = shape
            a, b = torch.randn(m, k), torch.randn(k, n)
            seconds, work = best_time(lambda: a @ b), 2.0 * m * k * n
        elif kind == "bmm":
            _, batch, m, k, n = shape
            a, b = torch.randn(batch, m, k), torch.randn(k, n)
            seconds, work = best_time(lambda: a @ b), 2.0 * batch * m * k * n
        elif kind == "mv":
            _, m, k = shape
            a, v = torch.randn(m // 100 if m >= 100 else 1, max(1, min(m, 100)), k), torch.randn(k)
            seconds, work = best_time(lambda: a @ v), 2.0 * a.shape[0] * a.shape[1] * k
        elif kind in ("conv", "conv_t"):
            _, n, layer = shape
            if kind == "conv":
                inp = torch.randn(n, *layer.in_shape)
                weight = torch.randn(*layer.weight)
                seconds = best_time(lambda: F.conv2d(inp, weight, None, layer.stride, layer.padding))
                work = 2.0 * n * layer.mac
            else:  # the polyphase conv2d of transposed_conv
                c_out, c_in, k_h, k_w = layer.weight
                s_h, s_w = layer.stride
                t_h, t_w = -(-k_h // s_h), -(-k_w // s_w)
                inp = torch.randn(n, *layer.out_shape)
                weight = torch.randn(c_in * s_h * s_w, c_out, t_h, t_w)
                seconds = best_time(lambda: F.conv2d(inp, weight, None, 1, (t_h - 1, t_w - 1)))
                work = 2.0 * n * layer.polyphase()[0]
        else:
            raise ValueError(shape)
        _RATE_CACHE[shape] = work / seconds
    return flops / _RATE_CACHE[shape]


def bandwidth() -> float:
    """Bytes per second of a large ``addcmul`` (reads 3, writes 1), one thread."""
    a, b, c = (torch.randn(1 << 24) for _ in range(3))
    seconds = best_time(lambda: torch.addcmul(a, b, c))
    return 4 * BYTES * a.numel() / seconds


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=["FC", "CONV", "CONV+"])
    parser.add_argument("--methods", nargs="+", default=["IBP", "CROWN-IBP (R)", "CROWN", "DeepZ"])
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--breakdown", action="store_true", help="print the largest counted items of every row"
    )
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()
    memory_rate = bandwidth()
    rows = []
    for arch in args.nets:
        for method in args.methods:
            model, x, C = problem(arch, args.batch)
            segments = segments_of(model, (1, 28, 28))
            count = count_method(segments, method, args.batch)
            run = runners(model, x, C, method)
            for phase in ("bound", "step"):
                totals = count.totals(step=phase == "step")
                seconds = best_time(run[phase], args.repeats)
                executed_flops, executed_bytes = executed(run[phase])
                machine = sum(
                    machine_seconds(p["shape"], p["flops"] * (1 + (p["grads"] if phase == "step" else 0)))
                    for p in count.products
                )
                row = {
                    "net": arch,
                    "method": method,
                    "phase": phase,
                    **totals,
                    "seconds": seconds,
                    "largest": count.largest(step=phase == "step"),
                    "torch_flops": executed_flops,
                    "torch_bytes": executed_bytes,
                    "machine_product_s": machine,
                    "elementwise_floor_s": totals["elementwise_bytes"] / memory_rate,
                }
                if not args.no_profile:
                    row["profile"] = profile(run[phase])
                rows.append(row)
                print(f"# {arch} {method} {phase}: {seconds:.3f} s", file=sys.stderr, flush=True)
    report(rows, load, os.getloadavg(), memory_rate)
    if args.breakdown:
        for row in rows:
            print(f"{row['net']} {row['method']} {row['phase']}: " + "; ".join(row["largest"]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"load": [load, os.getloadavg()], "bandwidth": memory_rate, "rows": rows}, handle, indent=1
            )
    return 0


def report(rows: list[dict], load_start: tuple, load_end: tuple, memory_rate: float) -> None:
    print(f"roofline, one thread, batch {BATCH}, float32; elementwise bandwidth {memory_rate / 1e9:.1f} GB/s")
    print(load_note(load_start, load_end))
    header = (
        f"{'net':<6}{'method':<14}{'phase':<6}{'GFLOP':>8}{'torch':>7}{'GB prod':>8}{'GB elem':>8}{'torch':>7}{'time s':>8}"
        f"{'GFLOP/s':>8}{'mach s':>8}{'elem s':>8}{'roof/time':>10}  {'profile: products / elementwise / rest':<40}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        gflop = row["product_flops"] / 1e9
        prof = row.get("profile")
        split = (
            f"{100 * prof['products'] / prof['wall']:3.0f}% / {100 * prof['elementwise'] / prof['wall']:3.0f}% / "
            f"{100 * prof['rest'] / prof['wall']:3.0f}% of {prof['wall']:.3f} s"
            if prof
            else ""
        )
        roof = row["machine_product_s"] + row["elementwise_floor_s"]
        print(
            f"{row['net']:<6}{row['method']:<14}{row['phase']:<6}{gflop:>8.2f}{gflop / max(row['torch_flops'] / 1e9, 1e-12):>7.2f}"
            f"{row['product_bytes'] / 1e9:>8.2f}{row['elementwise_bytes'] / 1e9:>8.2f}"
            f"{(row['product_bytes'] + row['elementwise_bytes']) / max(row['torch_bytes'], 1.0):>7.2f}{row['seconds']:>8.3f}"
            f"{gflop / row['seconds']:>8.1f}{row['machine_product_s']:>8.3f}{row['elementwise_floor_s']:>8.3f}"
            f"{roof / row['seconds']:>10.2f}  {split}"
        )
    print(
        "GFLOP: products counted (model in the docstring); torch: counted / executed (torch's flop_registry);\n"
        "GB prod / GB elem: bytes of the products and of the elementwise passes counted; torch: their sum / the bytes\n"
        "every non-view aten op of one run read and wrote (a dispatch-mode tally); time: best of the runs;\n"
        "GFLOP/s: counted product FLOPs / time; mach s: the counted products at the machine's rate for their shapes;\n"
        "elem s: the counted elementwise bytes at the measured bandwidth; roof/time: (mach s + elem s) / time, the share\n"
        "of the time the counted work needs at the machine's rates; profile: torch.profiler self CPU time of aten\n"
        "products, of the other aten ops, and the rest of the profiled wall time (Python, dispatch, profiler overhead)."
    )


if __name__ == "__main__":
    raise SystemExit(main())
