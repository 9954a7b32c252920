"""The paradox experiment (Table 1 of the paper) at a CPU-sized scale.

Trains the CONV network on the embedded ``mnist-mini`` data with IBP, hBox, DeepZ, CROWN and
CROWN-IBP (R), certifies each with its own relaxation, measures the tightness of each relaxation
(CR-AUC on a naturally trained CONV, App. B.1), and tabulates CR next to the continuity and
sensitivity flags the library derives for each relaxation. Everything lands in one directory:
the checkpoints, ``results.sqlite``, ``paradox.md`` / ``paradox.csv`` and the PNG plots.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch

from relaxlab.api import select_relaxations
from relaxlab.evaluation.certify import certify, record_results
from relaxlab.properties import derive
from relaxlab.properties.tightness import TightnessResult, cr_curves, eps_grid, plot_curves
from relaxlab.registry import PAPER_RELAXATIONS
from relaxlab.store import STORE_NAME, Store
from relaxlab.training.checkpoint import checkpoint_config, load_model
from relaxlab.training.config import ConfigError, TrainConfig
from relaxlab.training.trainer import CHECKPOINT_NAME, Data, load_data, train

if TYPE_CHECKING:
    from relaxlab.core.relaxation import ReluRelaxation

#: Paper's Table 1 (MNIST CONV, eps_test = 0.3): CR-AUC from Fig. 2 and CR after certified training.
PAPER_TABLE1 = {
    "IBP": (0.73, 86.8),
    "hBox": (1.76, 83.7),
    "DeepZ": (3.00, 69.8),
    "CROWN": (3.36, 70.2),
    "CROWN-IBP (R)": (2.15, 75.4),
}


def paradox_configs(
    *, eps: float = 0.1, quick: bool = False, seed: int = 0, overrides: dict[str, Any] | None = None
) -> list[TrainConfig]:
    """The short-schedule configs: one per paper relaxation, plus a natural run for tightness.

    :param eps: training and test radius.
    :param quick: an even shorter schedule (for tests and smoke runs).
    :param seed: seed of every run.
    :param overrides: config keys replaced in every run (e.g. ``{"train_subset": 200}``).
    """
    common: dict[str, Any] = {
        "dataset": "mnist-mini",
        "architecture": "CONV",
        "eps_train": eps,
        "eps_test": eps,
        "batch_size": 50,
        "lr": 1e-3,
        "kappa_start": 1.0,
        "kappa_end": 0.5,
        "seed": seed,
        "test_subset": 100 if quick else 500,
        "train_subset": 500 if quick else 2000,
        "elision": True,
    }
    schedule: dict[str, Any]
    if quick:
        schedule = {"epochs": 2, "warmup_epochs": 0, "rampup_epochs": 1, "max_batches": 4}
    else:
        # 1 warm-up, 3 ramp-up, 2 epochs at eps of 20 batches: the shortest schedule at which IBP
        # does not collapse to a constant classifier on this data (kappa_end = 0.5, as Table 8 has
        # for IBP and hBox on CONV)
        schedule = {"epochs": 6, "warmup_epochs": 1, "rampup_epochs": 3, "max_batches": 20}
    configs = [
        TrainConfig(name=f"paradox-{_slug(name)}", method="certified", relaxation=name, **common, **schedule)
        for name in PAPER_RELAXATIONS
    ]
    natural = {**common, **schedule, "epochs": schedule["epochs"], "warmup_epochs": 0, "rampup_epochs": 0}
    configs.append(TrainConfig(name="paradox-natural", method="natural", **natural))
    if overrides:
        configs = [c.replace(**overrides) for c in configs]
    return configs


def _slug(name: str) -> str:
    return "".join(ch.lower() if ch.isalnum() else "-" for ch in name).strip("-").replace("--", "-")


@attrs.frozen(kw_only=True)
class ParadoxRow:
    """One relaxation's line of the paradox table."""

    relaxation: str
    continuous: bool | None
    sensitive: bool | None
    cr_auc: float
    accuracy: float
    certified: float
    pgd: float | None
    n: int


def run_paradox(
    out_dir: str | Path,
    *,
    eps: float = 0.1,
    quick: bool = False,
    seed: int = 0,
    tightness_eps_max: float = 0.07,
    tightness_points: int = 11,
    tightness_n: int = 200,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    log: Callable[[str], None] = print,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
) -> list[ParadoxRow]:
    """Run the whole experiment into ``out_dir`` (see the module docstring).

    :param device: where every run trains and every network is certified and measured.
    :param overrides: config keys replaced in every training run (see :func:`paradox_configs`).
    :param tightness_points: radii of the tightness grid in ``[0, tightness_eps_max]``.
    :param tightness_n: test images for the tightness curves.
    :param progress: called at the start of each piece of work (every training run, the CR
        curves, every certification) with its name and size; returns the callback called with
        the units done (steps, curve points, images).
    :param log: called with one line at the start of each piece of work.

    :return: one row per relaxation, in the paper's order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configs = paradox_configs(eps=eps, quick=quick, seed=seed, overrides=overrides)
    data = load_data(configs[0])
    relaxations = select_relaxations("paper")
    with Store(out_dir / STORE_NAME) as store:
        models = _train_all(configs, out_dir, store, data, progress=progress, log=log, device=device)
        log(f"tightness: CR curves of {len(relaxations)} relaxations at {tightness_points} radii ...")
        aucs = _tightness(
            models["natural"],
            data,
            relaxations,
            store,
            out_dir,
            eps_max=tightness_eps_max,
            points=tightness_points,
            n=tightness_n,
            progress=progress,
            device=device,
        ).auc()
        rows = []
        for relaxation in relaxations:
            log(f"certifying the {relaxation.name}-trained network with {relaxation.name} ...")
            config = next(c for c in configs if c.label == relaxation.name)
            done = progress(f"certify {relaxation.name}", int(data.test_y.shape[0])) if progress else None
            result = certify(
                models[relaxation.name],
                data.test_x.to(device),
                data.test_y.to(device),
                eps,
                [relaxation],
                pgd=not quick,
                progress=done,
            )[0]
            record_results(
                store,
                [result],
                checkpoint=out_dir / config.name / CHECKPOINT_NAME,
                trained=_trained(config),
                name=f"certify-{config.name}",
            )
            properties = derive(relaxation)
            rows.append(
                ParadoxRow(
                    relaxation=relaxation.name,
                    continuous=properties.continuous,
                    sensitive=properties.sensitive,
                    cr_auc=aucs[relaxation.name],
                    accuracy=100 * result.accuracy,
                    certified=100 * result.certified,
                    pgd=None if result.pgd is None else 100 * result.pgd,
                    n=result.n,
                )
            )
    (out_dir / "paradox.md").write_text(paradox_markdown(rows, eps=eps, n=int(data.test_y.shape[0])))
    (out_dir / "paradox.csv").write_text(paradox_csv(rows))
    (out_dir / "paradox.json").write_text(json.dumps([attrs.asdict(r) for r in rows], indent=1))
    plot_paradox(rows, out_dir / "paradox.png", eps=eps)
    return rows


def _trained(config: TrainConfig) -> dict[str, object]:
    return {
        "dataset": config.dataset,
        "architecture": config.architecture,
        "method_label": config.label,
        "objective": config.objective_label,
    }


def _train_all(
    configs: list[TrainConfig],
    out_dir: Path,
    store: Store,
    data: Data,
    *,
    progress: Callable[[str, int], Callable[[int], None]] | None,
    log: Callable[[str], None],
    device: str = "cpu",
) -> dict[str, Any]:
    """Train (or reuse the finished run of) every config; the models by label (on ``device``)."""
    models = {}
    for config in configs:
        run_dir = out_dir / config.name
        if (run_dir / "history.json").exists():  # finished earlier: reuse it if it is the same run
            if checkpoint_config(run_dir / CHECKPOINT_NAME) != config.to_dict():
                raise ConfigError(
                    f"{run_dir} holds a finished run with another config (other --eps, --seed or "
                    "--quick?); choose another --out"
                )
            log(f"{config.label}: reusing the finished run in {run_dir}")
            models[config.label] = load_model(run_dir / CHECKPOINT_NAME).to(device)
            continue
        resume = (run_dir / CHECKPOINT_NAME).exists()
        log(f"training {config.label} ({'resuming' if resume else config.epochs} epochs) ...")
        models[config.label] = train(
            config, run_dir, store=store, resume=resume, progress=progress, data=data, device=device
        ).model
    return models


def _tightness(
    model: Any,
    data: Data,
    relaxations: list[ReluRelaxation],
    store: Store,
    out_dir: Path,
    *,
    eps_max: float,
    points: int,
    n: int,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    device: str = "cpu",
) -> TightnessResult:
    """CR curves on the naturally trained network (App. B.1), recorded and plotted."""
    grid = eps_grid(eps_max, points)
    run_id = store.create_run(
        "tightness",
        {
            "checkpoint": str(out_dir / "paradox-natural" / CHECKPOINT_NAME),
            "eps_max": eps_max,
            "points": points,
            "n": min(n, int(data.test_y.shape[0])),
            "dataset": "mnist-mini",
            "architecture": "CONV",
        },
        name="paradox-tightness",
    )
    # Tightness is an empirical comparison, not a certificate: float32 bounds on the first
    # ``n`` test images keep it to about a minute on a CPU.
    done = progress("tightness", len(relaxations) * len(grid)) if progress is not None else None
    result = cr_curves(
        model,
        data.test_x[:n].to(device),
        data.test_y[:n].to(device),
        grid,
        relaxations,
        dtype=torch.float32,
        progress=None if done is None else (lambda: done(1)),
    )
    store.log_metrics(run_id, 0, {f"cr_auc/{k}": v for k, v in result.auc().items()})
    store.finish_run(run_id)
    plot_curves(result, out_dir / "tightness.png", title="CR curves, naturally trained CONV (mnist-mini)")
    return result


def _mark(flag: bool | None, good: bool) -> str:
    if flag is None:
        return "?"
    return "✓" if flag == good else "✗"


def paradox_markdown(rows: Sequence[ParadoxRow], *, eps: float, n: int) -> str:
    """The paradox table: relaxation, C/S flags, CR-AUC, accuracy, PGD, CR; paper's values beside."""
    lines = [
        f"Paradox of certified training, CONV on mnist-mini, ε = {eps:g}, n = {n} test images "
        "(paper: MNIST, ε = 0.3, Table 1).",
        "",
        "| Relaxation | C | S | CR-AUC | Acc (%) | PGD (%) | CR (%) | paper CR-AUC | paper CR (%) |",
        "|---|:-:|:-:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        paper_auc, paper_cr = PAPER_TABLE1.get(row.relaxation, (float("nan"), float("nan")))
        pgd = "—" if row.pgd is None else f"{row.pgd:.1f}"
        lines.append(
            f"| {row.relaxation} | {_mark(row.continuous, True)} | {_mark(row.sensitive, False)} | "
            f"{row.cr_auc:.2f} | {row.accuracy:.1f} | {pgd} | {row.certified:.1f} | {paper_auc:.2f} | {paper_cr:.1f} |"
        )
    lines += [
        "",
        "C: continuous loss (✓ favourable); S: not sensitive (✓ favourable); flags from relaxlab.properties.derive.",
    ]
    return "\n".join(lines) + "\n"


def paradox_csv(rows: Sequence[ParadoxRow]) -> str:
    """The paradox table as CSV, its columns named as in ``paradox.json`` and ``list --json``.

    ``continuous`` and ``sensitive`` are the properties themselves (the table's ✓C is
    ``continuous = True``, its ✓S is ``sensitive = False``); empty where undecided.
    """
    out = ["relaxation,continuous,sensitive,cr_auc,accuracy,pgd,certified,n"]
    for r in rows:
        out.append(
            f"{r.relaxation},{'' if r.continuous is None else r.continuous},{'' if r.sensitive is None else r.sensitive},"
            f"{r.cr_auc:.4f},"
            f"{r.accuracy:.2f},{'' if r.pgd is None else f'{r.pgd:.2f}'},{r.certified:.2f},{r.n}"
        )
    return "\n".join(out) + "\n"


def _n_label(rows: Sequence[ParadoxRow]) -> str:
    counts = sorted({r.n for r in rows})
    return f"n = {counts[0]}" if len(counts) == 1 else "n = " + "/".join(map(str, counts))


def plot_paradox(rows: Sequence[ParadoxRow], path: str | Path, *, eps: float) -> Path:
    """Scatter of CR after training (y) against tightness CR-AUC (x), one point per relaxation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from relaxlab.properties.plotting import flag_legend, flag_style

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=120)
    for index, row in enumerate(sorted(rows, key=lambda r: (r.cr_auc, r.certified))):
        ax.scatter(row.cr_auc, row.certified, s=60, **flag_style(row.continuous, row.sensitive))
        # alternate label positions so that neighbouring points stay readable
        offset = (6, 6) if index % 2 == 0 else (6, -14)
        ax.annotate(row.relaxation, (row.cr_auc, row.certified), textcoords="offset points", xytext=offset)
    ax.set_xlabel("tightness: CR-AUC on a naturally trained CONV (higher = tighter)")
    ax.set_ylabel(f"CR after certified training [%] (ε = {eps:g})")
    n = _n_label(rows)
    ax.set_title(
        f"CR after certified training against tightness\n{n} test images per CR, ε = {eps:g}", fontsize=9
    )
    ax.legend(
        handles=flag_legend(),
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0,
        fontsize=8,
        title="marker: C, colour: S",
        title_fontsize=8,
    )
    ax.grid(alpha=0.3)
    ax.margins(0.2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
