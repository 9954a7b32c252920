"""Docs that run: every ```console and ```python block of README.md and docs/*.md is executed.

**Console blocks.** The blocks of one document run in order in one directory, as a reader
follows them (a later block may use what an earlier one wrote), with copies of ``configs/`` and
``examples/``; so run a document's blocks together (``-k docs/analysis.md``). Within a block:

- ``$ relaxlab ...`` runs through click's CliRunner and must exit 0; a shell loop around
  ``relaxlab`` runs in bash with this environment's ``relaxlab`` on the PATH;
- ``$ cat FILE`` followed by lines writes those lines to ``FILE`` (the file the text shows);
- other commands (``pip``, ``npm``, ``apt-get``, ``ray start``, ``configs/run_results.sh``, ``cd``)
  install or fetch things outside relaxlab and are not run;
- every printed output line without a digit (headers, words, file names) must appear in what
  the command printed (whitespace aside), so a renamed column or message cannot go unnoticed;
  numbers depend on the small arguments below and are not compared.

Small arguments (:data:`SMALL`) replace large ones: fewer radii, points, images and Hypothesis
examples, and every ``relaxlab train`` gets ``--set`` overrides for one short epoch.

**Long commands.** :data:`SLOW` lists, with the reason, the few commands that need a long run or
files the repository does not hold (the MNIST files of docs/results.md). A block that holds one
runs twice: without them in the fast suite (the rest of the block still runs), and whole as a
test marked ``slow`` (``pytest -m slow``), which skips only where the dataset files are missing.

**Python blocks** run with :data:`PRELUDES`: the few names a block uses without defining them
(``model``, ``x``, ``y``, ...) bound to small objects, and :data:`PY_SMALL` substitutions. Functions
named ``test_*`` that a block defines are called.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

from relaxlab.cli import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: (regular expression, replacement) applied to each relaxlab command line, in order.
SMALL: tuple[tuple[str, str], ...] = (
    (r"--points \d+", "--points 5"),
    (r"--n \d+", "--n 20"),
    (r"--threads \d+", "--threads 1"),
    (
        r"^relaxlab train ",
        "relaxlab train --set epochs=1 --set warmup_epochs=0 --set rampup_epochs=1 "
        "--set max_batches=2 --set train_subset=100 --set test_subset=20 ",
    ),
    (r"relaxlab train (track)", r"relaxlab train --set epochs=1 --set max_batches=4 \1"),
)

#: (document, start of the command) -> why it is only run in the slow suite.
SLOW: dict[tuple[str, str], str] = {
    ("docs/training.md", "relaxlab paradox"): "six trainings, tightness and certification (minutes)",
    (
        "docs/training.md",
        "relaxlab sweep examples/objectives_grid.toml --workers",
    ): "54 trainings on MNIST (about 100 minutes on 2 cores, examples/objectives_grid.toml)",
    ("docs/training.md", "relaxlab report --store runs/objectives-grid"): "reads the grid's store",
    ("docs/experiments.md", "relaxlab sweep examples/table4.toml --workers"): "a grid of trainings",
    ("docs/experiments.md", "relaxlab report --store runs/table4"): "reads the sweep's store",
    (
        "docs/screening.md",
        "relaxlab screen examples/screen.toml --workers",
    ): "514 trainings (about an hour on 2 cores, docs/results.md)",
    ("docs/analysis.md", "for r in IBP hBox DeepZ CROWN"): "four trainings with tracking",
    ("docs/analysis.md", "relaxlab tracking-plot"): "reads the tracked trainings",
    ("docs/analysis.md", "relaxlab gd-experiment"): "searches 60 seeds",
    ("docs/results.md", "relaxlab "): "MNIST / Fashion-MNIST files (docs/results.md, step 1) and long runs",
}

#: Names a Python block uses without defining them, per document.
PRELUDES: dict[str, str] = {
    "docs/analysis.md": (
        "import relaxlab\n"
        "_data = relaxlab.get_registry().datasets['mnist-mini']\n"
        "x, y = _data.load('test')\nx, y = x[:4], y[:4]\n"
        "model = relaxlab.get_registry().architectures['FC-S'].build(_data.input_shape, 10, _data.mean, _data.std)\n"
    ),
    "docs/engine.md": (
        "import torch\n"
        "model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(),"
        " torch.nn.Linear(8, 10))\n"
        "x = torch.rand(3, 1, 2, 2)\nlabels = torch.tensor([0, 1, 2])\n"
    ),
    "docs/export.md": (
        "import torch\nimport relaxlab\nfrom relaxlab.engine.export import export_onnx as _export\n"
        "model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.ReLU(),"
        " torch.nn.Linear(16, 10)).eval()\n"
        "_export(model, (1, 28, 28), 'net.onnx')\n"
        "x, y, eps = torch.rand(2, 1, 28, 28), torch.tensor([3, 1]), 0.1\n"
    ),
    "docs/references.md": (
        "import torch\n"
        "model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).double()\n"
        "spec = torch.tensor([[1.0, -1.0]], dtype=torch.float64)\n"
    ),
}

#: (document, text, replacement) applied to Python blocks: small runs.
PY_SMALL: tuple[tuple[str, str, str], ...] = (
    ("docs/training.md", "eps_train=0.1)", "eps_train=0.1, train_subset=100, test_subset=20, max_batches=2)"),
    ("docs/training.md", "x[:200], y[:200]", "x[:20], y[:20]"),
    (
        "docs/analysis.md",
        'x[:1], 0.15, ["IBP", "DeepZ"], output=int(y[0]))',
        'x[:1], 0.15, ["IBP", "DeepZ"], output=int(y[0]), points=5)',
    ),
    ("docs/analysis.md", 'relaxlab.get_relaxation("CROWN"))', 'relaxlab.get_relaxation("CROWN"), points=10)'),
)

#: One working directory per document, shared by its console blocks in the fast suite.
_DOC_DIRS: dict[str, Path] = {}


@attrs.frozen
class Block:
    """A fenced block of a document."""

    doc: str  # relative to the repository root
    line: int
    lang: str
    text: str

    @property
    def id(self) -> str:
        """``docs/x.md:12``."""
        return f"{self.doc}:{self.line}"


def blocks(lang: str) -> list[Block]:
    """Every ```lang block of the README and docs/."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            if match[1] == lang:
                found.append(
                    Block(str(path.relative_to(ROOT)), text[: match.start()].count("\n") + 1, lang, match[2])
                )
    return found


@attrs.frozen
class Step:
    """One ``$`` line of a console block with the lines printed under it."""

    command: str
    printed: tuple[str, ...]


def steps(block: Block) -> list[Step]:
    """The commands of a console block (continuations joined, comments dropped) and their output."""
    out: list[Step] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith("$ "):
            continue
        command = line[2:]
        while command.endswith("\\") and i < len(lines):
            command = command[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        printed = []
        while i < len(lines) and not lines[i].startswith("$ "):
            printed.append(lines[i])
            i += 1
        out.append(Step(re.sub(r"\s+#\s.*$", "", command).strip(), tuple(printed)))
    return out


def slow_reason(doc: str, command: str) -> str | None:
    """Why ``command`` of ``doc`` is in the slow suite only (``None``: it is fast)."""
    for (slow_doc, start), reason in SLOW.items():
        if doc == slow_doc and command.startswith(start):
            return reason
    return None


def _small(command: str) -> str:
    for pattern, replacement in SMALL:
        command = re.sub(pattern, replacement, command)
    return command


def _words(line: str) -> str:
    return " ".join(line.split())


def run_console(block: Block, where: Path, *, include_slow: bool) -> list[str]:
    """Run a console block in ``where``; the commands it ran."""
    for name in ("configs", "examples"):
        shutil.copytree(ROOT / name, where / name, dirs_exist_ok=True)
    ran = []
    for step in steps(block):
        if not include_slow and slow_reason(block.doc, step.command):
            continue
        if step.command.startswith("cat "):
            (where / shlex.split(step.command)[1]).write_text("\n".join(step.printed) + "\n")
            continue
        if "relaxlab" not in step.command.split()[:1] and not step.command.startswith("for "):
            continue  # pip, npm, apt-get, ray, configs/run_results.sh, cd: outside relaxlab
        needs_mnist = "results" in block.doc or "MNIST" in (slow_reason(block.doc, step.command) or "")
        if step.command.startswith("relaxlab ") and needs_mnist and not _has_mnist():
            pytest.skip("needs the MNIST files of docs/results.md (step 1)")
        if (
            step.command.startswith("relaxlab table10")
            and "--show" not in step.command
            and not _has_released()
        ):
            pytest.skip("needs the paper's released networks ($RELAXLAB_PARADOX_PRETRAINED)")
        command = _small(step.command)
        if step.command.startswith("for "):
            env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
            done = subprocess.run(
                ["bash", "-c", command], cwd=where, env=env, capture_output=True, text=True, timeout=1800
            )
            output, code = done.stdout + done.stderr, done.returncode
        else:
            result = CliRunner().invoke(cli, shlex.split(command)[1:], catch_exceptions=False)
            output, code = result.output, result.exit_code
        assert code == 0, f"{block.id}: `{command}` exited {code}:\n{output}"
        actual = {_words(line) for line in output.splitlines()}
        for line in step.printed:
            if line.strip() and line.strip() != "..." and not re.search(r"\d", line):
                assert _words(line) in actual, f"{block.id}: `{command}` no longer prints {line!r}:\n{output}"
        ran.append(command)
    return ran


@functools.cache
def _has_mnist() -> bool:
    """Whether relaxlab finds the MNIST files where it looks (docs/training.md: $RELAXLAB_DATA, ...)."""
    from relaxlab.api import get_registry
    from relaxlab.data.datasets import DatasetNotFoundError

    try:
        get_registry().datasets["mnist"].load("test", n=1)
    except DatasetNotFoundError:
        return False
    return True


def _has_released() -> bool:
    from relaxlab.experiments.released import ReleasedNetworkError, find_released_dir

    try:
        find_released_dir()
    except ReleasedNetworkError:
        return False
    return True


CONSOLE = blocks("console")
WITH_SLOW = [b for b in CONSOLE if any(slow_reason(b.doc, s.command) for s in steps(b))]


@pytest.mark.parametrize("block", CONSOLE, ids=[b.id for b in CONSOLE])
def test_console_block(
    block: Block, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The block's commands but the slow ones run and print what the block shows."""
    where = _DOC_DIRS.setdefault(block.doc, tmp_path_factory.mktemp("doc"))
    monkeypatch.chdir(where)
    monkeypatch.setenv("RELAXLAB_PROGRESS_EVERY", "3600")
    run_console(block, where, include_slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("block", WITH_SLOW, ids=[b.id for b in WITH_SLOW])
def test_console_block_whole(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocks with a long command, whole."""
    monkeypatch.chdir(tmp_path)
    run_console(block, tmp_path, include_slow=True)


PYTHON = blocks("python")


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block runs (with its document's prelude and small arguments); its ``test_*`` functions pass."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT / "plugins" / "relaxlab-example" / "src"))
    code = block.text
    for doc, text, replacement in PY_SMALL:
        if doc == block.doc and text in code:
            code = code.replace(text, replacement)
    namespace: dict[str, object] = {"__name__": "docs_example"}
    exec(compile(PRELUDES.get(block.doc, "") + code, block.id, "exec"), namespace)  # noqa: S102
    for name, value in list(namespace.items()):
        if name.startswith("test_") and callable(value):
            value()


def test_every_slow_entry_names_a_command_in_the_docs() -> None:
    """The allow-list cannot keep an entry the docs lost."""
    commands = [(b.doc, s.command) for b in CONSOLE for s in steps(b)]
    for doc, start in SLOW:
        assert any(d == doc and c.startswith(start) for d, c in commands), (doc, start)


def test_a_toml_block_that_names_a_file_is_that_file() -> None:
    """A ```toml block opening with ``# path`` prints that file of the repository as it is."""
    for block in blocks("toml"):
        first, _, rest = block.text.partition("\n")
        if first.startswith("# ") and (ROOT / first[2:].strip()).is_file():
            assert rest.strip() == (ROOT / first[2:].strip()).read_text().strip(), block.id


def test_paper_numbers_in_the_docs_are_the_papers() -> None:
    """One source: every "paper CR" / "paper CR-AUC" cell of an MNIST table equals what the main job prints.

    The main job (``relaxlab paradox``) prints the paper's Table 1 from
    :data:`relaxlab.experiments.paradox.PAPER_TABLE1` (MNIST, CONV, ε = 0.3; CR from Table 2, CR-AUC from
    Table 6 / Fig. 2); a table of the docs that quotes them must quote the same numbers. Tables of other
    datasets (a heading naming Fashion-MNIST) quote other tables of the paper and are left alone.
    """
    from relaxlab.experiments.paradox import PAPER_TABLE1

    checked = 0
    for path in DOCS:
        heading = ""
        header: list[str] | None = None
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                heading, header = line, None
                continue
            if not line.startswith("|"):
                header = None
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
                continue
            if set(line) <= set("|-: ") or "Fashion" in heading:
                continue
            name = cells[0].strip("*")
            for column, title in enumerate(header):
                if not title.startswith("paper CR") or name not in PAPER_TABLE1 or column >= len(cells):
                    continue
                auc, cr = PAPER_TABLE1[name]
                expected = f"{auc:.2f}" if title.startswith("paper CR-AUC") else f"{cr:.1f}"
                assert cells[column] == expected, (
                    f"{path.name}, {heading}: {name}'s {title} is {cells[column]}, "
                    f"the main job prints {expected}"
                )
                checked += 1
    assert checked >= 15  # the FC-S table, the Table 2 / 11 copy and the paradox table
