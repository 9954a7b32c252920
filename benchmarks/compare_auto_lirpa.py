"""relaxlab's IBP, CROWN and CROWN-IBP (R) against auto_LiRPA's, in float64, on chains and graphs.

Run (auto_LiRPA must import; otherwise the script prints how to install it and exits 0)::

    /work/lirpa/.venv/bin/python benchmarks/compare_auto_lirpa.py [--seeds 4] [--eps 0.003 0.01 0.03]
        [--families fc conv resnet resnet-s bn pool pool-overlap] [--conv-mode patches] [--json out.json]

What is compared: for every family, seed and eps, the final bounds of the margin specification
(``margin_spec``, 9 rows, elided into the last layer on both sides) and the pre-activation bounds
of every ReLU, for relaxlab's IBP / CROWN-IBP (R) / CROWN and auto_LiRPA's ``IBP`` /
``CROWN-IBP`` / ``backward`` (CROWN). Inputs are a batch of 2 in ``[0, 1]``, the box is
``[x - eps, x + eps] ∩ [0, 1]``, weights are PyTorch's default initialisation (BatchNorm: random
running statistics and affine parameters, negative scales included, eval mode).

Families (random widths per seed; 3-channel inputs, a leading ``relaxlab.nn.Normalize``):

- ``fc``: Flatten, 2-3 Linear+ReLU, Linear;
- ``conv``: 2 Conv2d+ReLU (stride 1 or 2), Flatten, Linear+ReLU, Linear;
- ``resnet``: Conv+ReLU, 2-3 residual blocks ``relu(conv(relu(conv(x))) + s(x))`` with ``s`` the
  identity or a 1x1 convolution (stride 2 blocks), with or without BatchNorm, FC head;
- ``resnet-s``: the registered ``ResNet-S`` architecture on 3x8x8;
- ``bn``: CNN7-like, Conv+BatchNorm2d+ReLU x3, Linear+BatchNorm1d+ReLU, Linear;
- ``pool``: Conv+ReLU, AvgPool(2, stride 2), Conv+ReLU, AvgPool(2), FC head (non-overlapping windows);
- ``pool-overlap``: the same with AvgPool(3, stride 1, padding 1) and AvgPool(2, stride 1).

Options set on auto_LiRPA (``benchmarks/_auto_lirpa.py: DEFINITION``, each with its reason):
``activation_bound_option="adaptive"`` (CROWN's lower slope 1 iff ``u > -l``, as relaxlab's
"0 if -l >= u else x"; its default, set explicitly), ``sparse_intermediate_bounds=False``
(+ the conv and ``_with_ibp`` variants: by default auto_LiRPA proves neurons stable with an
interval pass from the bounds it already holds and relaxes them as stable, which is tighter than
CROWN's definition; the column ``default gap`` measures what that changes), no
``compare_crown_with_ibp``, no loss fusion. ``conv_mode`` is auto_LiRPA's default ``patches``
(``--conv-mode matrix`` to check the other). auto_LiRPA's patches mode cannot bound the leading
``Normalize`` (a constant subtraction before a convolution), so auto_LiRPA bounds the network
after it over the normalised box, which is exactly the same set (``_auto_lirpa.without_normalize``).

relaxlab's intermediate bounds come from the public API alone: ``relaxlab.compute_bounds`` on
the network truncated at each ReLU's input (a slice of a chain, else a ``torch.fx`` graph ending
there). By the definitions that is exactly the bound the full computation uses: CROWN's
pre-activation bound of a ReLU is the CROWN bound of the sub-network before it; CROWN-IBP's and
IBP's are IBP's (so both are compared with relaxlab's IBP of the truncation).

Differences: ``abs`` is ``max |a - b|``; ``rel`` is ``max |a - b| / max(|a|, |b|)`` over the
entries with ``max(|a|, |b|) > 1e-6``. A row passes at ``abs <= 1e-6 * (1 + max |b|)``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.fx
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _auto_lirpa  # noqa: E402
from _definition import DenseNetwork, Tracer, is_relu  # noqa: E402

import relaxlab  # noqa: E402
from relaxlab.engine.spec import margin_spec  # noqa: E402
from relaxlab.nn import Normalize  # noqa: E402

DOMAIN = (0.0, 1.0)
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
SHAPE = (3, 8, 8)
NUM_CLASSES = 10
BATCH = 2

#: relaxlab's name -> (auto_LiRPA's method, the relaxlab relaxation whose truncated bounds are the
#: intermediate bounds of that method)
METHODS = {
    "IBP": ("IBP", "IBP"),
    "CROWN-IBP (R)": ("CROWN-IBP", "IBP"),
    "CROWN": ("backward", "CROWN"),
}


# ---------------------------------------------------------------------------------------------
# networks


class Block(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; shortcut identity or 1x1 conv (+BN)."""

    def __init__(self, cin: int, cout: int, stride: int, batch_norm: bool) -> None:
        super().__init__()
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d if batch_norm else (lambda _: nn.Identity())
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.bn2 = norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride), norm(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _widths(g: torch.Generator, low: int, high: int, n: int) -> list[int]:
    return [int(v) for v in torch.randint(low, high + 1, (n,), generator=g)]


def _head(features: int, g: torch.Generator) -> list[nn.Module]:
    (hidden,) = _widths(g, 8, 24, 1)
    return [nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES)]


def fc(g: torch.Generator) -> nn.Module:
    depth = 2 + int(torch.randint(0, 2, (1,), generator=g))
    layers: list[nn.Module] = [Normalize(MEAN, STD), nn.Flatten()]
    width = math.prod(SHAPE)
    for hidden in _widths(g, 8, 40, depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, NUM_CLASSES))


def conv(g: torch.Generator) -> nn.Module:
    c1, c2 = _widths(g, 3, 8, 2)
    s1, s2 = _widths(g, 1, 2, 2)
    size = (SHAPE[1] - 1) // s1 + 1
    size = (size - 1) // s2 + 1
    return nn.Sequential(
        Normalize(MEAN, STD),
        nn.Conv2d(3, c1, 3, s1, 1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, s2, 1),
        nn.ReLU(),
        *_head(c2 * size * size, g),
    )


def resnet(g: torch.Generator) -> nn.Module:
    batch_norm = bool(torch.randint(0, 2, (1,), generator=g))
    (c,) = _widths(g, 3, 6, 1)
    blocks = 2 + int(torch.randint(0, 2, (1,), generator=g))
    layers: list[nn.Module] = [Normalize(MEAN, STD), nn.Conv2d(3, c, 3, 1, 1), nn.ReLU()]
    size = SHAPE[1]
    for index in range(blocks):
        stride = 2 if index == 1 else 1  # the second block downsamples: a 1x1-conv shortcut
        layers.append(Block(c, 2 * c if stride == 2 else c, stride, batch_norm))
        c, size = (2 * c if stride == 2 else c), (size - 1) // stride + 1
    return nn.Sequential(*layers, *_head(c * size * size, g))


def resnet_s(g: torch.Generator) -> nn.Module:
    return relaxlab.get_registry().architectures["ResNet-S"].build(SHAPE, NUM_CLASSES, MEAN, STD)


def batch_norm(g: torch.Generator) -> nn.Module:
    c1, c2, c3 = _widths(g, 3, 6, 3)
    (hidden,) = _widths(g, 8, 24, 1)
    return nn.Sequential(
        Normalize(MEAN, STD),
        nn.Conv2d(3, c1, 3, 1, 1),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, 2, 1),
        nn.BatchNorm2d(c2),
        nn.ReLU(),
        nn.Conv2d(c2, c3, 3, 1, 1),
        nn.BatchNorm2d(c3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c3 * 16, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, NUM_CLASSES),
    )


def _pool(overlap: bool) -> Callable[[torch.Generator], nn.Module]:
    def build(g: torch.Generator) -> nn.Module:
        c1, c2 = _widths(g, 3, 6, 2)
        first = nn.AvgPool2d(3, 1, 1) if overlap else nn.AvgPool2d(2)
        second = nn.AvgPool2d(2, 1) if overlap else nn.AvgPool2d(2)
        size = 7 if overlap else 2  # 8x8 inputs
        return nn.Sequential(
            Normalize(MEAN, STD),
            nn.Conv2d(3, c1, 3, 1, 1),
            nn.ReLU(),
            first,
            nn.Conv2d(c1, c2, 3, 1, 1),
            nn.ReLU(),
            second,
            *_head(c2 * size * size, g),
        )

    return build


FAMILIES: dict[str, Callable[[torch.Generator], nn.Module]] = {
    "fc": fc,
    "conv": conv,
    "resnet": resnet,
    "resnet-s": resnet_s,
    "bn": batch_norm,
    "pool": _pool(overlap=False),
    "pool-overlap": _pool(overlap=True),
}


def build(family: str, seed: int) -> nn.Module:
    """The ``family`` network of ``seed``, float64, eval mode, BatchNorm statistics randomised."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = FAMILIES[family](g).double()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                module.running_var.copy_(0.2 + torch.rand(n, generator=g))
                module.weight.copy_(torch.randn(n, generator=g))
                module.bias.copy_(0.3 * torch.randn(n, generator=g))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# the network before each ReLU (relaxlab's intermediate bounds through the public API)


_LAYERS = (
    nn.Linear,
    nn.Conv2d,
    nn.Flatten,
    nn.ReLU,
    Normalize,
    nn.modules.batchnorm._BatchNorm,
    nn.AvgPool2d,
)


def truncations(model: nn.Module) -> list[nn.Module]:
    """One module per ReLU (in order): the network up to that ReLU's input.

    A ``Sequential`` of plain layers is sliced (read module by module, without tracing); anything else
    is cut with ``torch.fx``.
    """
    if isinstance(model, nn.Sequential) and all(isinstance(child, _LAYERS) for child in model):
        return [model[:index] for index, child in enumerate(model) if isinstance(child, nn.ReLU)]
    graph = Tracer().trace(model)
    cuts = []
    for relu in [node for node in graph.nodes if is_relu(node, model)]:
        part = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        for node in graph.nodes:
            if node is relu:
                break
            env[node] = part.node_copy(node, env.__getitem__)
        part.output(env[relu.args[0]])
        cut = torch.fx.GraphModule(model, part)
        cut.graph.eliminate_dead_code()
        cut.recompile()
        cuts.append(cut)
    return cuts


# ---------------------------------------------------------------------------------------------
# comparison


def _diff(ours: Tensor, theirs: Tensor) -> tuple[float, float, float]:
    """(max abs difference, max relative difference, max |theirs|) of two finite tensors."""
    a, b = ours.detach().reshape(-1), theirs.detach().reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(ours.shape)} vs {tuple(theirs.shape)}")
    delta = (a - b).abs()
    scale = torch.maximum(a.abs(), b.abs())
    big = scale > 1e-6
    rel = float((delta[big] / scale[big]).max()) if bool(big.any()) else 0.0
    return float(delta.max()), rel, float(b.abs().max())


Bounds = tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]  # final lb, final ub, pre-activation boxes


def _compare(one: Bounds, other: Bounds) -> dict[str, float]:
    final = [_diff(one[0], other[0]), _diff(one[1], other[1])]
    interm = [
        _diff(a.reshape(BATCH, -1), b.reshape(BATCH, -1))
        for box_a, box_b in zip(one[2], other[2], strict=True)
        for a, b in zip(box_a, box_b, strict=True)
    ]
    out = {}
    for key, diffs in (("final", final), ("interm", interm or [(0.0, 0.0, 0.0)])):
        out[f"{key}_abs"] = max(d[0] for d in diffs)
        out[f"{key}_rel"] = max(d[1] for d in diffs)
        out[f"{key}_ok"] = all(d[0] <= 1e-6 * (1 + d[2]) for d in diffs)
    return out


def compare_case(family: str, seed: int, eps: float, conv_mode: str, check_defaults: bool) -> list[dict]:
    """Every method on one network, seed and eps: a record per method."""
    model = build(family, seed)
    g = torch.Generator().manual_seed(10_000 + seed)
    x = torch.rand(BATCH, *SHAPE, generator=g, dtype=torch.float64)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)
    C = margin_spec(labels, NUM_CLASSES, dtype=torch.float64)
    cuts = truncations(model)
    dense = DenseNetwork(model, SHAPE)
    lower, upper = (x - eps).clamp(*DOMAIN), (x + eps).clamp(*DOMAIN)
    body, x_n, lower_n, upper_n = _auto_lirpa.without_normalize(model, x, eps, DOMAIN)
    options = {**_auto_lirpa.DEFINITION, "conv_mode": conv_mode}
    records = []
    for name, (method, interm_name) in METHODS.items():
        start = time.perf_counter()
        lb, ub = (b.detach() for b in relaxlab.compute_bounds(model, x, eps, name, C=C, domain=DOMAIN))
        ours: Bounds = (
            lb,
            ub,
            [relaxlab.compute_bounds(cut, x, eps, interm_name, domain=DOMAIN) for cut in cuts],
        )
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        module = _auto_lirpa.bounded_module(body, x_n, options)
        a_lb, a_ub = (
            b.detach() for b in _auto_lirpa.compute_bounds(module, x_n, lower_n, upper_n, C, method)
        )
        theirs: Bounds = (a_lb, a_ub, _auto_lirpa.relu_input_bounds(module))
        theirs_s = time.perf_counter() - start
        if name == "IBP":
            pre, d_lb, d_ub = dense.ibp(lower, upper, C)
        else:
            pre, d_lb, d_ub = dense.crown(lower, upper, C, interval_intermediate=name != "CROWN")
        definition: Bounds = (d_lb, d_ub, pre)
        if not len(ours[2]) == len(theirs[2]) == len(pre):
            raise RuntimeError(f"{family}: ReLU counts differ: {len(ours[2])}, {len(theirs[2])}, {len(pre)}")
        record: dict = {
            "family": family,
            "seed": seed,
            "eps": eps,
            "method": name,
            "relaxlab_s": ours_s,
            "auto_lirpa_s": theirs_s,
        }
        pairs = {"ra": (ours, theirs), "rd": (ours, definition), "ad": (theirs, definition)}
        if name != "CROWN":  # interval intermediate bounds: also the exact image of each affine segment
            if name == "IBP":
                s_pre, s_lb, s_ub = dense.ibp(lower, upper, C, exact_segments=True)
            else:
                s_pre, s_lb, s_ub = dense.crown(
                    lower, upper, C, interval_intermediate=True, exact_segments=True
                )
            pairs["rs"] = (ours, (s_lb, s_ub, s_pre))
        for pair, (one, other) in pairs.items():
            record.update({f"{pair}_{key}": value for key, value in _compare(one, other).items()})
        # which side is tighter where they differ (final bounds): > 0 means relaxlab is looser
        record["ra_looser"] = max(float((a_lb - lb).max()), float((ub - a_ub).max()))
        if check_defaults and name == "CROWN":
            # auto_LiRPA's default options (sparse intermediate bounds with its interval reference)
            default = _auto_lirpa.bounded_module(body, x_n, {"conv_mode": conv_mode})
            d_lb, d_ub = _auto_lirpa.compute_bounds(default, x_n, lower_n, upper_n, C, method)
            record["default_gap"] = max(float((d_lb.detach() - lb).max()), float((ub - d_ub.detach()).max()))
        records.append(record)
    return records


def _summarise(records: list[dict]) -> list[dict]:
    rows = []
    keys = sorted(
        {(r["family"], r["method"]) for r in records}, key=lambda k: (list(FAMILIES).index(k[0]), k[1])
    )
    for family, method in keys:
        group = [r for r in records if r["family"] == family and r["method"] == method]
        row: dict = {"family": family, "method": method, "cases": len(group)}
        for pair in ("ra", "rd", "ad", "rs"):
            if f"{pair}_final_abs" not in group[0]:
                continue
            for key in ("final_abs", "final_rel", "interm_abs", "interm_rel"):
                row[f"{pair}_{key}"] = max(r[f"{pair}_{key}"] for r in group)
            row[f"{pair}_ok"] = all(r[f"{pair}_final_ok"] and r[f"{pair}_interm_ok"] for r in group)
        row["ra_looser"] = max(r["ra_looser"] for r in group)
        gaps = [r["default_gap"] for r in group if "default_gap" in r]
        if gaps:
            row["default_gap"] = max(gaps)
            row["default_gap_cases"] = sum(gap > 1e-9 for gap in gaps)
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'family':<13}{'method':<14}{'cases':>5} | {'R-A final':>9}{'rel':>8}{'interm':>9}{'rel':>8} "
        f"{'ok':>3}{'R looser':>10} | {'R-def':>8} {'ok':>3} | {'A-def':>8} {'ok':>3} | {'R-seg':>8} {'ok':>3} | "
        f"{'default gap':>17}"
    )
    print(header)
    print("-" * len(header))

    def pair(row: dict, key: str) -> str:
        if f"{key}_ok" not in row:
            return f"{'':>8} {'':>3}"
        worst = max(row[f"{key}_final_abs"], row[f"{key}_interm_abs"])
        return f"{worst:>8.2g} {'yes' if row[f'{key}_ok'] else 'NO':>3}"

    for row in rows:
        gap = (
            f"{row['default_gap']:.2g} ({row['default_gap_cases']}/{row['cases']})"
            if "default_gap" in row
            else ""
        )
        print(
            f"{row['family']:<13}{row['method']:<14}{row['cases']:>5} | {row['ra_final_abs']:>9.2g}"
            f"{row['ra_final_rel']:>8.2g}{row['ra_interm_abs']:>9.2g}{row['ra_interm_rel']:>8.2g} "
            f"{'yes' if row['ra_ok'] else 'NO':>3}{row['ra_looser']:>10.2g} | {pair(row, 'rd')} | {pair(row, 'ad')} | "
            f"{pair(row, 'rs')} | {gap:>17}"
        )
    print(
        "R-A: relaxlab vs auto_LiRPA (options DEFINITION): max abs and max rel difference of the final margin bounds\n"
        "and of the ReLU input bounds; R looser: max over final bounds of how much looser relaxlab is (< 0: tighter).\n"
        "R-def, A-def: each against the dense definition (benchmarks/_definition.py; IBP node by node), max abs over\n"
        "final and intermediate bounds. R-seg: relaxlab against the dense exact interval image of each affine segment\n"
        "between ReLUs (relaxlab's documented interval mode). ok: every difference <= 1e-6 (1 + |bound|).\n"
        "default gap: how much looser relaxlab's CROWN is than auto_LiRPA's CROWN under auto_LiRPA's default\n"
        "options (sparse intermediate bounds with an interval reference), max over cases, and in how many > 1e-9."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1 per family (default 4)")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--conv-mode", default="patches", choices=["patches", "matrix"])
    parser.add_argument(
        "--no-defaults",
        action="store_true",
        help="skip the extra CROWN run with auto_LiRPA's default options",
    )
    parser.add_argument("--json", type=Path, help="write every case's record here")
    args = parser.parse_args(argv)
    _auto_lirpa.require()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # auto_LiRPA builds identity specifications in the default dtype
    records: list[dict] = []
    start = time.perf_counter()
    for family in args.families:
        for seed in range(args.seeds):
            for eps in args.eps:
                records += compare_case(family, seed, eps, args.conv_mode, not args.no_defaults)
        print(f"# {family}: done ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    rows = _summarise(records)
    print(
        f"relaxlab vs auto_LiRPA vs the definition (float64, conv_mode={args.conv_mode}; seeds 0..{args.seeds - 1}, "
        f"eps {args.eps}, batch {BATCH}, {SHAPE} inputs, 9 margin rows; {time.perf_counter() - start:.0f} s)"
    )
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"records": records, "summary": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
