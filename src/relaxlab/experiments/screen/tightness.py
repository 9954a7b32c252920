"""CR-AUC of a screen's candidates on one naturally trained network, recorded and reused.

Each candidate's CR curve over the radii of ``[tightness]`` is measured once and recorded in the
store (kind ``tightness``, metric ``cr_auc/<name>`` as ``relaxlab tightness`` writes it), keyed by
the network, the radii and ``n``, so a resumed screen measures only what is missing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relaxlab.api import extended_registry, get_registry, get_relaxation
from relaxlab.experiments.screen.model import SOURCE, Screen
from relaxlab.experiments.sweep import run_status
from relaxlab.properties.tightness import cr_curves, eps_grid
from relaxlab.store import Store


def _key(data: Any) -> str:
    return "tightness-" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def tightness_checkpoint(screen: Screen, out_dir: Path, store: Store) -> Path | None:
    """The naturally trained network of the screen (``None`` while its run is not done)."""
    from relaxlab.training.trainer import CHECKPOINT_NAME

    if screen.tightness.checkpoint is not None:
        return Path(screen.tightness.checkpoint)
    assert screen.natural is not None
    if run_status(store, screen.natural.key) != "done":
        return None
    return out_dir / screen.natural.key / CHECKPOINT_NAME


def measure_tightness(
    screen: Screen,
    out_dir: Path,
    store: Store,
    *,
    device: str = "cpu",
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> dict[str, float]:
    """CR-AUC of every candidate on the natural network; each recorded (kind ``tightness``, metric
    ``cr_auc/<name>`` as ``relaxlab tightness`` writes it, keyed by network, radii and n) and reused.

    :return: candidate name -> CR-AUC (empty when the natural network is missing).
    """
    import torch

    from relaxlab.training.checkpoint import checkpoint_config, load_model

    path = tightness_checkpoint(screen, out_dir, store)
    if path is None:
        return {}
    spec = screen.tightness
    grid = eps_grid(spec.eps_max, spec.points)
    network = screen.natural.key if screen.natural is not None else str(path)
    keys = {
        c.name: _key({"network": network, "relaxation": c.name, "eps": list(grid), "n": spec.n})
        for c in screen.candidates
    }
    aucs: dict[str, float] = {}
    for name, key in keys.items():
        done = store.runs(kind="tightness", status="done", key=key)
        if done:
            aucs[name] = store.final_metrics(done[-1].id)[f"cr_auc/{name}"]
    todo = [c for c in screen.candidates if c.name not in aucs]
    if not todo:
        return aucs
    config = checkpoint_config(path)
    dataset = get_registry().datasets[config["dataset"]]
    images, labels = dataset.load("test", config.get("data_dir"), n=spec.n)
    images, labels = images.to(device), labels.to(device)
    model = load_model(path).to(device)
    step = progress("tightness", len(todo) * len(grid)) if progress is not None else None
    # certified with each candidate by name, the generated ones known for this block only
    with extended_registry(screen.sweep.relaxations, source=SOURCE):
        for candidate in todo:
            # an empirical comparison, not a certificate: float32 bounds, as relaxlab tightness and paradox
            result = cr_curves(
                model,
                images,
                labels,
                grid,
                [get_relaxation(candidate.name)],
                num_classes=dataset.num_classes,
                dtype=torch.float32,
                progress=None if step is None else (lambda: step(1)),
            )
            aucs[candidate.name] = result.auc()[candidate.name]
            run_id = store.create_run(
                "tightness",
                {
                    "checkpoint": str(path),
                    "relaxation": candidate.name,
                    "eps_max": spec.eps_max,
                    "points": spec.points,
                    "n": result.n,
                    "dataset": config["dataset"],
                    "architecture": config["architecture"],
                    "screen": screen.name,
                },
                name=f"tightness-{candidate.name}",
                key=keys[candidate.name],
            )
            store.log_metrics(
                run_id, 0, {f"cr_auc/{candidate.name}": aucs[candidate.name]}
            )  # as relaxlab tightness
            store.finish_run(run_id)
    return aucs
