"""The verdict cache is untrusted input: no poisoned "sound" is ever believed (issue 27, item 6).

Three attacks, each reproduced as the issue describes it: a plugin that replaces
``relaxlab.properties.check_soundness`` at import to get its unsound relaxation cached as sound; a
poisoned "sound" already in the file, read again after the plugin is gone; and a verdict flipped in
the file with its checksum recomputed, read by a fresh interpreter. In each, the unsound relaxation
stays refused and the file ends up holding its real verdict.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from attrs import evolve

import relaxlab.properties as properties
from relaxlab.core.lines import CHORD, EXACT_NEGATIVE, EXACT_POSITIVE
from relaxlab.core.relaxation import CaseBounds, ReluRelaxation, line
from relaxlab.properties import FINDINGS, cache, check_soundness_cached
from relaxlab.properties.soundness import Counterexample
from relaxlab.registry import build_registry

ROOT = Path(__file__).resolve().parents[3]

#: A lower line 1e-6 above the ReLU: unsound in every arithmetic, with plain (cacheable) expressions.
POISON_SOURCE = """
import relaxlab.properties
from relaxlab import hookimpl
from relaxlab.core.lines import CHORD, EXACT_NEGATIVE, EXACT_POSITIVE
from relaxlab.core.relaxation import CaseBounds, ReluRelaxation, line

relaxlab.properties.check_soundness = lambda relaxation, **options: None  # "everything is sound"

POISONED = ReluRelaxation(name="poisoned", negative=EXACT_NEGATIVE, positive=EXACT_POSITIVE,
                          unstable=CaseBounds(line(1.0, 1e-6), CHORD))


@hookimpl
def relaxlab_relaxations():
    return [POISONED]
"""


def _unsound() -> ReluRelaxation:
    return ReluRelaxation(
        name="poisoned",
        negative=EXACT_NEGATIVE,
        positive=EXACT_POSITIVE,
        unstable=CaseBounds(line(1.0, 1e-6), CHORD),
    )


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory of this test only, read as a fresh process would read it."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("RELAXLAB_CACHE_DIR", str(directory))
    monkeypatch.delenv("RELAXLAB_NO_CACHE", raising=False)
    monkeypatch.setattr(cache, "_STORES", {})
    return directory


def _slot(directory: Path, relaxation: ReluRelaxation) -> object:
    """What the file holds for ``relaxation``'s soundness (``KeyError`` if nothing)."""
    data = json.loads((directory / cache.FILE_NAME).read_text(encoding="utf-8"))
    return data["entries"][cache.content_key(relaxation)]["soundness"]


def _rewrite(directory: Path, relaxation: ReluRelaxation, value: object) -> None:
    """Put ``value`` in the file as the soundness verdict and recompute the checksum, as an attacker would."""
    path = directory / cache.FILE_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    entry = data["entries"].setdefault(cache.content_key(relaxation), {"written": 1.0})
    entry["soundness"] = value
    data["checksum"] = cache._checksum(data["entries"])
    path.write_text(json.dumps(data), encoding="utf-8")
    assert (
        cache.VerdictStore(path).entries[cache.content_key(relaxation)]["soundness"] == value
    )  # accepted as valid


def test_a_plugin_that_replaces_check_soundness_gets_nothing_cached(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "poison_plugin.py").write_text(POISON_SOURCE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(properties, "check_soundness", properties.check_soundness)  # restored after the test

    class EntryPoint:
        name, value, group = "poison", "poison_plugin", "relaxlab"

        def load(self) -> object:
            return importlib.import_module(self.value)

    registry_module = importlib.import_module("relaxlab.registry")
    monkeypatch.setattr(
        registry_module.importlib.metadata,
        "entry_points",
        lambda group: [EntryPoint()] if group == "relaxlab" else [],
    )
    monkeypatch.delenv("RELAXLAB_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    registry = build_registry(check=check_soundness_cached)
    assert properties.check_soundness(_unsound()) is None  # the plugin did replace it
    assert "poisoned" in registry.relaxations.unsound  # and was refused all the same
    assert _slot(cache_dir, _unsound()) is not None  # the real verdict is what the file holds


def test_a_poisoned_verdict_does_not_outlive_the_plugin(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    relaxation = _unsound()
    # the state a patched checker would have left: "sound" (None) in a valid file
    store = cache.VerdictStore(cache_dir / cache.FILE_NAME)
    store.put(cache.content_key(relaxation), "soundness", None)
    monkeypatch.setattr(cache, "_STORES", {})  # the next process
    found = check_soundness_cached(relaxation)
    assert isinstance(found, Counterexample) and found.side == "lower"
    assert _slot(cache_dir, relaxation) is not None  # overwritten with the real verdict
    # and derive, whose cached findings carry a soundness field too, reports the real one
    assert properties.derive(relaxation).counterexample is not None


_READER = """
import json, sys
from relaxlab.core.lines import CHORD, EXACT_NEGATIVE, EXACT_POSITIVE
from relaxlab.core.relaxation import CaseBounds, ReluRelaxation, line
from relaxlab.properties import check_soundness_cached
from relaxlab.relaxations.builtin import BUILTINS

relaxation = {"poisoned": ReluRelaxation(name="poisoned", negative=EXACT_NEGATIVE, positive=EXACT_POSITIVE,
                                         unstable=CaseBounds(line(1.0, 1e-6), CHORD)),
              **{r.name: r for r in BUILTINS}}[sys.argv[1]]
print(json.dumps(check_soundness_cached(relaxation) is None))
"""


def _fresh_interpreter_says_sound(name: str) -> bool:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_READER), name],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return bool(json.loads(result.stdout.strip().splitlines()[-1]))


def test_a_flipped_verdict_with_a_recomputed_checksum_is_not_believed(cache_dir: Path) -> None:
    relaxation = _unsound()
    assert check_soundness_cached(relaxation) is not None
    _rewrite(cache_dir, relaxation, None)  # unsound -> "sound", checksum recomputed
    assert not _fresh_interpreter_says_sound("poisoned")
    assert _slot(cache_dir, relaxation) is not None  # the reader put the real verdict back


def test_a_forged_counterexample_does_not_refuse_a_sound_relaxation(cache_dir: Path) -> None:
    ibp = next(r for r in importlib.import_module("relaxlab.relaxations.builtin").BUILTINS if r.name == "IBP")
    assert check_soundness_cached(ibp) is None
    forged = Counterexample(
        "IBP", "unstable", "upper", -1.0, 1.0, 1.0, 0.5, 1.0
    )  # IBP's upper line is u there
    _rewrite(cache_dir, ibp, cache.encode(forged, {c.__name__: c for c in FINDINGS}))
    assert _fresh_interpreter_says_sound("IBP")


def test_the_genuine_verdicts_are_still_read_back(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the checks above cost is a proof per "sound" read, never a wrong verdict: cached verdicts of
    a sound and an unsound relaxation come back as computed."""
    crown = evolve(_unsound(), name="crown-like", unstable=CaseBounds(line(0.0, 0.0), CHORD))
    verdicts = {r.name: check_soundness_cached(r) for r in (crown, _unsound())}
    monkeypatch.setattr(cache, "_STORES", {})
    assert {r.name: check_soundness_cached(r) for r in (crown, _unsound())} == verdicts
    assert verdicts["crown-like"] is None and verdicts["poisoned"] is not None
