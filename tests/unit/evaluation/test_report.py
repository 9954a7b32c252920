"""``relaxlab report`` from a real store: nothing replaced silently, one rule to pick, distinct names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relaxlab.evaluation.report import PICK_RULE, certify_rows, main_table, render_csv, render_markdown
from relaxlab.store import Store, open_store


def _certify(
    store: Store,
    checkpoint: str,
    certifier: str,
    cr: float,
    n: int,
    *,
    method: str = "IBP",
    pgd: float | None = 0.5,
) -> int:
    run = store.create_run(
        "certify",
        {
            "checkpoint": checkpoint,
            "certifier": certifier,
            "eps": 0.1,
            "dataset": "mnist-mini",
            "architecture": "CONV",
            "method_label": method,
            "n": n,
        },
    )
    metrics = {"accuracy": 0.9, "certified": cr, **({} if pgd is None else {"pgd": pgd})}
    store.log_metrics(run, 0, metrics)
    store.finish_run(run)
    return run


def _trained(store: Store, run_dir: str | None, cr: float, n: int | None, **config: Any) -> int:
    """A finished training run as the trainer records it: config (+ run_dir), final certification."""
    record = {
        "name": "example-ibp",
        "dataset": "mnist-mini",
        "architecture": "CONV",
        "method": "certified",
        "relaxation": "IBP",
        "eps_test": 0.1,
        "epochs": 2,
        **config,
    }
    if run_dir is not None:
        record["run_dir"] = run_dir
    run = store.create_run("train", record, name=record["name"])
    final = {"test_accuracy": 0.8, "test_certified": cr, **({} if n is None else {"test_n": float(n)})}
    store.log_metrics(run, 10, final)
    store.finish_run(run)
    return run


def test_a_smaller_later_certification_replaces_nothing(tmp_path: Path) -> None:
    """The main job's n = 500 stays in the table after a `certify --n 100`; both are listed, the shown one marked."""
    with open_store(tmp_path / "r.sqlite") as store:
        big = _certify(store, "runs/paradox/paradox-ibp/checkpoint.pt", "IBP", 0.326, 500)
        small = _certify(store, "runs/paradox/paradox-ibp/checkpoint.pt", "IBP", 0.40, 100)
        text = render_markdown(store)
    assert "| IBP | kappa-mix | 500 | 90.0 | 50.0 | 32.6 |" in text
    listing = text[text.index("## All certifications") :]
    assert (
        f"| {big} | runs/paradox/paradox-ibp | IBP | IBP | 0.1 | 500 | 90.0 | 50.0 | 32.6 | certify | ✓ |"
        in listing
    )
    assert (
        f"| {small} | runs/paradox/paradox-ibp | IBP | IBP | 0.1 | 100 | 90.0 | 50.0 | 40.0 | certify |  |"
        in listing
    )
    assert PICK_RULE in text  # the report says how it picks


def test_the_pick_does_not_depend_on_the_order_of_recording(tmp_path: Path) -> None:
    picked = []
    for order in ((100, 500), (500, 100)):
        with open_store(tmp_path / f"{order}.sqlite") as store:
            for n in order:
                _certify(store, "a/checkpoint.pt", "IBP", n / 1000, n)
            picked.append(main_table(certify_rows(store))[0]["n"])
    assert picked == [500, 500]
    with open_store(tmp_path / "tie.sqlite") as store:  # equal n: the one with PGD, then the latest
        _certify(store, "a/checkpoint.pt", "IBP", 0.3, 200, pgd=None)
        with_pgd = _certify(store, "a/checkpoint.pt", "IBP", 0.3, 200)
        _certify(store, "a/checkpoint.pt", "IBP", 0.3, 200, pgd=None)
        assert main_table(certify_rows(store))[0]["run"] == with_pgd


def test_training_runs_appear_with_their_final_certification(tmp_path: Path) -> None:
    """A run never given to `certify` is in the Table 2 layout with the numbers training printed (no PGD)."""
    with open_store(tmp_path / "r.sqlite") as store:
        run = _trained(store, "runs/example-ibp", 0.25, 1000)
        _trained(store, None, 0.1, None, name="old", relaxation="DeepZ")  # an older record: no run_dir, no n
        text = render_markdown(store)
        csv = render_csv(store)
    assert "| IBP | kappa-mix | 1000 | 80.0 | — | 25.0 |" in text
    assert "| DeepZ | kappa-mix | ? | 80.0 | — | 10.0 |" in text
    assert (
        f"| {run} | runs/example-ibp | IBP | IBP | 0.1 | 1000 | 80.0 | — | 25.0 | training's final certification | ✓ |"
        in text
    )
    assert f"mnist-mini,CONV,0.10,IBP,kappa-mix,1000,80.00,,25.00,IBP,IBP,train,{run}" in csv


def test_a_certify_run_of_the_same_checkpoint_is_the_same_row(tmp_path: Path) -> None:
    with open_store(tmp_path / "r.sqlite") as store:
        _trained(store, "runs/example-ibp", 0.25, 200)
        shown = _certify(store, "runs/example-ibp/checkpoint.pt", "IBP", 0.26, 200)
        records = main_table(certify_rows(store))
    assert (
        len(records) == 1 and records[0]["run"] == shown and records[0]["network"] == "IBP"
    )  # PGD breaks the tie


def test_distinct_runs_never_share_a_display_name(tmp_path: Path) -> None:
    """Three runs of configs/example.toml under different --out: three rows, named by their directories."""
    with open_store(tmp_path / "r.sqlite") as store:
        for where in ("runs/a", "runs/b", "runs/c"):
            _trained(store, f"{where}/example-ibp", 0.2, 100)
        _certify(store, "runs/b/example-ibp/checkpoint.pt", "CROWN", 0.3, 100)
        text = render_markdown(store)
    for where in ("runs/a", "runs/b", "runs/c"):
        assert f"| IBP ({where}/example-ibp) | kappa-mix | 100 |" in text
    training = text[text.index("## Training runs") :]
    assert [line.split(" | ")[2] for line in training.splitlines()[4:7]] == [
        "runs/a/example-ibp",
        "runs/b/example-ibp",
        "runs/c/example-ibp",
    ]
    matrix = text[text.index("Table 10 layout") :]
    assert "| IBP (runs/b/example-ibp) | 20.0 | 30.0 |" in matrix


def test_relaxation_names_as_typed_and_as_registered_are_one_method(tmp_path: Path) -> None:
    with open_store(tmp_path / "r.sqlite") as store:
        _trained(store, "runs/x", 0.2, 100, relaxation="crown ibp r")
        _certify(store, "runs/x/checkpoint.pt", "CROWN-IBP (R)", 0.2, 100, method="crown ibp r")
        records = main_table(certify_rows(store))
    assert [r["method"] for r in records] == ["CROWN-IBP (R)"]
