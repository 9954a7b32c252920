"""``relaxlab verify``: answer VNN-COMP instances (:mod:`relaxlab.evaluation.verify` does the work).

``relaxlab verify NET.onnx PROP.vnnlib`` answers one instance; ``relaxlab verify A.csv [B.csv ...]``
every instance of competition ``instances.csv`` files. One line per instance as it is answered,
then a summary per benchmark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from relaxlab.cli.format import TABLE_WIDTH, clear_errors, fail, render_table
from relaxlab.cli.options import QUIET, THREADS, WIDE, out_dir_option


@click.command("verify")
@click.argument(
    "inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds per instance (default: the csv's column; 300 for one instance).",
)
@click.option(
    "--stages",
    default=None,
    help="Comma list, run in order: registered relaxation names (bounds), PGD (the attack), split "
    "(input splitting, few inputs only) [default: IBP,CROWN,PGD,split].",
)
@click.option(
    "--results",
    "results_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="One instance: write the competition's result file here.",
)
@out_dir_option("Write results.csv and one competition result file per instance here.")
@click.option(
    "--expected",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The competition's answers (benchmark,onnx,vnnlib,consensus,tools_sat,tools_unsat): compare, "
    "and exit 1 on any contradiction.",
)
@THREADS
@WIDE
@QUIET
def verify_command(
    inputs: tuple[Path, ...],
    timeout: float | None,
    stages: str | None,
    results_file: Path | None,
    out_dir: Path | None,
    expected: Path | None,
    threads: int | None,
    wide: bool,
    quiet: bool,
) -> None:
    """Answer VNN-COMP instances: NET.onnx PROP.vnnlib, or instances.csv files (unsat, sat, unknown, timeout)."""
    from relaxlab.cli.progress import Progress
    from relaxlab.engine.vnnlib import write_text_atomic
    from relaxlab.evaluation import verify
    from relaxlab.runtime import set_threads

    with clear_errors():
        instances = _instances(inputs, timeout)
        if results_file is not None and len(instances) != 1:
            fail(
                f"--results writes one instance's result; {len(instances)} instances were given (use --out DIR)"
            )
        names = stages.split(",") if stages else list(verify.DEFAULT_PLAN)
        plan = [verify.resolve_stage(name.strip()) for name in names if name.strip()]
        if not plan:
            fail("--stages: give at least one stage")
        answers = verify.read_expected(expected) if expected is not None else None
        set_threads(threads)
    done: list[Any] = []
    with Progress("verify", len(instances), quiet=quiet, unit="instance") as progress:

        def report(outcome: Any) -> None:
            done.append(outcome)
            instance = outcome.instance
            line = (
                f"[{len(done)}/{len(instances)}] {instance.benchmark or '-'} {instance.network.name} "
                f"{instance.prop.name}: {outcome.status}"
                + (f" ({outcome.method})" if outcome.method else "")
                + f", {outcome.seconds:.2f} s"
                + (f": {outcome.reason}" if outcome.reason else "")
            )
            if not quiet:
                progress.write(line)
            progress.update()
            if out_dir is not None:
                verify.write_results(done, out_dir)

        results = verify.verify_instances(instances, plan=plan, on_result=report)
    if results_file is not None:
        results_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(results_file, verify.result_text(results[0]))
    if len(results) == 1:
        click.echo(verify.result_text(results[0]).rstrip("\n"))
    click.echo(_summary_table(verify.summarise(results), results, answers, wide=wide))
    if answers is not None:
        wrong = list(verify.contradictions(results, answers))
        for outcome, why in wrong:
            instance = outcome.instance
            assert instance is not None  # contradictions() refuses a result without its instance
            click.echo(
                f"CONTRADICTION {instance.benchmark} {instance.network.name} "
                f"{instance.prop.name}: {outcome.status}, {why}"
            )
        if wrong:
            raise click.ClickException(f"{len(wrong)} answers contradict {expected}")


def _instances(inputs: tuple[Path, ...], timeout: float | None) -> list[Any]:
    """The instances the arguments name: one ``NET.onnx PROP.vnnlib`` pair, or csv files."""
    from relaxlab.evaluation.verify import Instance, read_instances

    suffixes = [path.suffix.lower() for path in inputs]
    if all(suffix == ".csv" for suffix in suffixes):
        return [instance for path in inputs for instance in read_instances(path, timeout=timeout)]
    if suffixes == [".onnx", ".vnnlib"]:
        return [Instance(inputs[0], inputs[1], 300.0 if timeout is None else timeout)]
    fail(
        "give NET.onnx PROP.vnnlib (one instance) or one or more instances.csv files, got "
        + " ".join(str(path) for path in inputs)
    )


def _summary_table(
    summaries: list[Any], results: list[Any], answers: dict[Any, Any] | None, *, wide: bool = False
) -> str:
    """One row per benchmark: counts of each answer, time, the competition's counts, what decided."""
    headers = ["benchmark", "n", "unsat", "sat", "unknown", "timeout", "error", "time (s)"]
    if answers is not None:
        headers.append("VNN-COMP unsat/sat")
    headers.append("decided by")
    rows = []
    for summary in summaries:
        row: list[object] = [
            summary.benchmark or "-",
            summary.instances,
            *(summary.counts[status] for status in ("unsat", "sat", "unknown", "timeout", "error")),
            f"{summary.seconds:.1f}",
        ]
        if answers is not None:
            keys = [
                (r.instance.benchmark, r.instance.network.name, r.instance.prop.name)
                for r in results
                if r.instance.benchmark == summary.benchmark
            ]
            consensus = [answers.get(key, ("unknown", 0, 0))[0] for key in keys]
            row.append(f"{consensus.count('UNSAT')}/{consensus.count('SAT')}")
        row.append(", ".join(f"{name} {count}" for name, count in sorted(summary.methods.items())) or "-")
        rows.append(row)
    return render_table(headers, rows, width=None if wide else TABLE_WIDTH)
