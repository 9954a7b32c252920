"""Cost of loss smoothing and loss fusion per training step, and the tightness of the fused loss.

Run: ``.venv/bin/python benchmarks/bench_training_options.py [--threads 1] [--repeats 30] [--epochs 4]
[--only time|tightness|training]`` (about 10 minutes on one core)

**Step time.** One training step is the loss (natural CE + robust CE, kappa = 0.5, eps = 0.1 on
the first 100 images of mnist-mini) and its backward pass, on FC, CONV and FC-S with their
default initialisation. Each timing is the process's CPU time (``time.process_time``; with one
thread that is the step's own work, which load from other processes inflates far less than wall
time), the *minimum* over ``--repeats`` runs with the variants interleaved; ratios are to the
plain step of the same network and relaxation.

**Tightness of fusion.** FC-S and CONV are trained briefly with the CROWN-IBP defense at each of
the paper's MNIST radii (0.1, 0.3; ``--epochs`` epochs on mnist-mini, half of them ramp-up), then
on the first 1,000 test images the per-example robust losses are compared in float64: the
unfused ``CE(z_worst)`` from the margin lower bounds, and the fused bound. Printed: both means,
the mean of ``fused - unfused`` and the share of images where the fused bound is smaller.

**Training with fusion.** The same short CROWN-IBP-defense runs at eps 0.1 with and without
``loss_fusion`` (one seed): CPU time of the run and accuracy / certified robustness of the result
on the first 1,000 test images, with IBP and CROWN-IBP (R).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import relaxlab
from relaxlab.engine.fusion import fused_ce_bound
from relaxlab.engine.spec import margin_bounds, worst_case_logits
from relaxlab.evaluation.certify import certify
from relaxlab.runtime import tune_allocator
from relaxlab.training.config import TrainConfig
from relaxlab.training.loss import training_loss
from relaxlab.training.smoothing import noise_generator, smoothed_backward
from relaxlab.training.trainer import load_data, train


def _step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    relaxation: object,
    *,
    fusion: bool = False,
    samples: int = 0,
) -> Callable[[], None]:
    def loss_fn() -> tuple[torch.Tensor, dict[str, float]]:
        return training_loss(
            model,
            x,
            y,
            eps=0.1,
            kappa=0.5,
            beta=1.0,
            relaxations=(relaxation,),
            num_classes=10,
            elision=True,
            l1=0.0,
            fusion=fusion,
        )

    def run() -> None:
        model.zero_grad(set_to_none=True)
        if samples:
            smoothed_backward(model, loss_fn, samples=samples, sigma=0.01, generator=noise_generator(0, 0))
        else:
            loss_fn()[0].backward()

    return run


def step_times(repeats: int) -> None:
    registry = relaxlab.get_registry()
    dataset = registry.datasets["mnist-mini"]
    x, y = dataset.load("train")
    x, y = x[:100], y[:100]
    print("| network | relaxation | variant | step (ms) | ratio to the plain step |")
    print("|---|---|---|---:|---:|")
    for arch in ("FC", "CONV", "FC-S"):
        torch.manual_seed(0)
        model = registry.architectures[arch].build(dataset.input_shape, 10, dataset.mean, dataset.std).train()
        for name in ("IBP", "CROWN-IBP (R)"):
            relaxation = relaxlab.get_relaxation(name)
            variants = {
                "plain": _step(model, x, y, relaxation),
                "fusion": _step(model, x, y, relaxation, fusion=True),
                "smoothing k=1": _step(model, x, y, relaxation, samples=1),
                "smoothing k=4": _step(model, x, y, relaxation, samples=4),
            }
            times: dict[str, list[float]] = {key: [] for key in variants}
            for _ in range(repeats):
                for key, run in variants.items():
                    start = time.process_time()
                    run()
                    times[key].append(time.process_time() - start)
            plain = min(times["plain"])
            for key, values in times.items():
                print(f"| {arch} | {name} | {key} | {1e3 * min(values):.1f} | {min(values) / plain:.2f} |")


def tightness(epochs: int) -> None:
    data = load_data(TrainConfig())
    x, y = data.test_x[:1000].double(), data.test_y[:1000]
    print(
        "| network | trained at eps | relaxation | unfused CE(z_worst) | fused bound | mean fused - unfused "
        "| fused tighter on |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for arch in ("FC-S", "CONV"):
        for eps in (0.1, 0.3):
            with tempfile.TemporaryDirectory() as out:
                model = train(_short_run(arch, eps, epochs), out, data=data).model.double().eval()
            for name in ("CROWN-IBP (R)", "IBP"):
                relaxation = relaxlab.get_relaxation(name)
                with torch.no_grad():
                    fused = torch.cat(
                        [
                            fused_ce_bound(
                                model, x[i : i + 200], y[i : i + 200], eps, relaxation, num_classes=10
                            )
                            for i in range(0, len(y), 200)
                        ]
                    )
                    unfused = []
                    for i in range(0, len(y), 200):
                        lb, others = margin_bounds(
                            model, x[i : i + 200], y[i : i + 200], eps, relaxation, num_classes=10
                        )
                        unfused.append(
                            F.cross_entropy(
                                worst_case_logits(lb, others, 10), y[i : i + 200], reduction="none"
                            )
                        )
                    plain = torch.cat(unfused)
                difference = fused - plain
                print(
                    f"| {arch} | {eps} | {name} | {float(plain.mean()):.4g} | {float(fused.mean()):.4g} "
                    f"| {float(difference.mean()):+.3g} (median {statistics.median(difference.tolist()):+.3g}) "
                    f"| {100 * float((difference < 0).double().mean()):.1f}% |"
                )


def _short_run(arch: str, eps: float, epochs: int, **changes: object) -> TrainConfig:
    """The brief CROWN-IBP-defense schedule of the tightness and training measurements."""
    return TrainConfig(
        name="t",
        architecture=arch,
        method="crown-ibp",
        epochs=epochs,
        rampup_epochs=max(1, epochs // 2),
        eps_train=eps,
        eps_test=eps,
        kappa_end=0.5,
        lr=1e-3,
        test_subset=100,
        **changes,
    )  # type: ignore[arg-type]


def training_outcome(epochs: int) -> None:
    data = load_data(TrainConfig())
    x, y = data.test_x[:1000], data.test_y[:1000]
    certifiers = [relaxlab.get_relaxation("IBP"), relaxlab.get_relaxation("CROWN-IBP (R)")]
    print("| network | loss fusion | training CPU time | accuracy | CR (IBP) | CR (CROWN-IBP (R)) |")
    print("|---|---|---:|---:|---:|---:|")
    for arch in ("FC-S", "CONV"):
        for fusion in (False, True):
            with tempfile.TemporaryDirectory() as out:
                start = time.process_time()
                model = train(_short_run(arch, 0.1, epochs, loss_fusion=fusion), out, data=data).model
                seconds = time.process_time() - start
            ibp, crown_ibp = certify(model, x, y, 0.1, certifiers, pgd=False)
            print(
                f"| {arch} | {'on' if fusion else 'off'} | {seconds:.0f} s | {100 * ibp.accuracy:.1f}% "
                f"| {100 * ibp.certified:.1f}% | {100 * crown_ibp.certified:.1f}% |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--only", choices=("time", "tightness", "training"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    if args.only in (None, "time"):
        step_times(args.repeats)
    if args.only in (None, "tightness"):
        tightness(args.epochs)
    if args.only in (None, "training"):
        training_outcome(args.epochs)


if __name__ == "__main__":
    main()
