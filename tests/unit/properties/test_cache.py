"""The verdict cache: equal to fresh verdicts, keyed by content, robust to bad files and to concurrent writers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from attrs import evolve

import relaxlab
import relaxlab.properties as properties
from relaxlab.core.expr import Opaque
from relaxlab.core.lines import CHORD, EXACT_NEGATIVE, EXACT_POSITIVE, IDENTITY, ZERO
from relaxlab.core.relaxation import CaseBounds, Line, ReluRelaxation
from relaxlab.properties import FINDINGS, cache, check_soundness, check_soundness_cached, derive
from relaxlab.properties.soundness import Undecided
from relaxlab.registry import Registry

ROOT = Path(__file__).resolve().parents[3]
#: The slot the tests below store under (the facade's registry, built on first use, fills "soundness").
SLOT = "test"


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory of this test only, read as a fresh process would read it."""
    monkeypatch.setenv("RELAXLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("RELAXLAB_NO_CACHE", raising=False)
    monkeypatch.setattr(cache, "_STORES", {})
    return tmp_path


def _new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget this process's copy of the file, as the next process starts without one."""
    monkeypatch.setattr(cache, "_STORES", {})


def _counting(value: object) -> tuple[Callable[[ReluRelaxation], object], list[str]]:
    calls: list[str] = []

    def compute(relaxation: ReluRelaxation) -> object:
        calls.append(relaxation.label)
        return value

    return compute, calls


def _same(a: object, b: object) -> bool:
    """Equality that counts NaN fields (a counterexample's ``x`` may be NaN) as equal."""
    return a == b or repr(a) == repr(b)


def test_cached_findings_equal_fresh_ones_for_every_builtin(
    registry: Registry, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each built-in's verdict and derived properties, computed without the cache, come back equal
    from the file, and the facade's functions then answer from it without computing."""
    builtins = [
        registry.relaxations[n]
        for n in registry.relaxations.names()
        if registry.relaxations.source(n) == "relaxlab.relaxations.builtin"
    ]
    monkeypatch.setenv("RELAXLAB_NO_CACHE", "1")
    fresh = {r.name: (check_soundness(r), properties._derive(r)) for r in builtins}
    monkeypatch.delenv("RELAXLAB_NO_CACHE")
    for relaxation in builtins:  # store exactly the fresh values
        soundness, derived = fresh[relaxation.name]
        cache.remember(relaxation, "soundness", lambda _r, v=soundness: v, FINDINGS)
        cache.remember(relaxation, "derive", lambda _r, v=derived: v, FINDINGS)
    _new_process(monkeypatch)

    def refuse(_relaxation: ReluRelaxation) -> None:
        raise AssertionError("computed although cached")

    monkeypatch.setattr(properties, "check_soundness", refuse)
    monkeypatch.setattr(properties, "_derive", refuse)
    for relaxation in builtins:
        soundness, derived = fresh[relaxation.name]
        assert _same(check_soundness_cached(relaxation), soundness), relaxation.name
        assert derive.__wrapped__(relaxation) == derived, relaxation.name  # past derive's in-process memo
    assert len(cache.VerdictStore(cache_dir / cache.FILE_NAME).entries) == len(builtins)


def test_counterexamples_and_refusals_come_back_equal(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unsound = ReluRelaxation(
        name="cache-unsound",
        negative=EXACT_NEGATIVE,
        positive=EXACT_POSITIVE,
        unstable=CaseBounds(CHORD, IDENTITY),
    )  # the chord below, x above: both wrong
    found = check_soundness_cached(unsound)
    assert found is not None
    refusal = Undecided(
        "cache-undecided",
        "unstable",
        "undecided",
        math.nan,
        math.nan,
        math.nan,
        math.nan,
        math.nan,
        (("omega", 0.5),),
        line="upper",
        detail="budget spent",
    )
    other = evolve(unsound, name="cache-undecided")
    cache.remember(other, "soundness", lambda _r: refusal, FINDINGS)
    _new_process(monkeypatch)
    assert check_soundness_cached(unsound) == found
    back = cache.remember(other, "soundness", lambda _r: None, FINDINGS)
    assert isinstance(back, Undecided) and str(back) == str(refusal) and back.params == refusal.params


def test_a_changed_spec_misses_and_an_equal_one_hits(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compute, calls = _counting(None)
    crown = relaxlab.get_relaxation("CROWN")
    variants = [
        crown,
        evolve(crown, intermediate="interval"),
        evolve(crown, name="CROWN-copy"),
        evolve(crown, unstable=CaseBounds(ZERO, CHORD)),
    ]
    loose = relaxlab.get_relaxation("LooseIBP-C")
    variants += [loose, loose.with_params(omega=0.5)]
    for relaxation in variants:
        cache.remember(relaxation, SLOT, compute, FINDINGS)
    assert len(calls) == len(variants)  # every variant is judged on its own
    _new_process(monkeypatch)
    for relaxation in [*variants, evolve(crown, summary="new words")]:  # docs are not part of the spec
        cache.remember(relaxation, SLOT, compute, FINDINGS)
    assert len(calls) == len(variants)


def test_the_key_holds_version_format_and_judging_code(monkeypatch: pytest.MonkeyPatch) -> None:
    crown = relaxlab.get_relaxation("CROWN")
    key = cache.content_key(crown)
    assert key is not None and cache.content_key(crown) == key
    monkeypatch.setattr(cache, "__version__", "999.0")
    assert cache.content_key(crown) != key
    monkeypatch.undo()
    monkeypatch.setattr(cache, "CACHE_FORMAT", cache.CACHE_FORMAT + 1)
    assert cache.content_key(crown) != key
    monkeypatch.undo()
    monkeypatch.setattr(cache, "code_fingerprint", lambda: "another prover")
    assert cache.content_key(crown) != key


def test_specs_with_code_are_never_cached(cache_dir: Path) -> None:
    opaque = evolve(
        relaxlab.get_relaxation("CROWN"),
        name="cache-opaque",
        unstable=CaseBounds(
            ZERO,
            Line(
                Opaque("chord", lambda env: env["u"] / (env["u"] - env["l"])),
                Opaque("offset", lambda env: -env["l"] * env["u"] / (env["u"] - env["l"])),
            ),
        ),
    )
    compute, calls = _counting(None)
    cache.remember(opaque, SLOT, compute, FINDINGS)
    cache.remember(opaque, SLOT, compute, FINDINGS)
    assert len(calls) == 2 and not (cache_dir / cache.FILE_NAME).exists()


def test_no_cache_switch_reads_and_writes_nothing(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compute, calls = _counting(None)
    ibp = relaxlab.get_relaxation("IBP")
    cache.remember(ibp, SLOT, compute, FINDINGS)
    monkeypatch.setenv("RELAXLAB_NO_CACHE", "1")
    cache.remember(ibp, SLOT, compute, FINDINGS)
    assert len(calls) == 2
    (cache_dir / cache.FILE_NAME).unlink()
    cache.remember(relaxlab.get_relaxation("CROWN"), SLOT, compute, FINDINGS)
    assert not (cache_dir / cache.FILE_NAME).exists()


def _valid_file(path: Path) -> dict[str, object]:
    data = json.loads(path.read_text())
    assert data["format"] == cache.CACHE_FORMAT and cache.VerdictStore(path).entries == data["entries"]
    return data


@pytest.mark.parametrize("damage", ["garbage", "truncated", "edited", "other format", "not an object"])
def test_a_bad_file_is_ignored_and_rewritten(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    path = cache_dir / cache.FILE_NAME
    ibp = relaxlab.get_relaxation("IBP")
    cache.remember(ibp, SLOT, lambda _r: None, FINDINGS)
    text = path.read_text()
    data = json.loads(text)
    if damage == "garbage":
        path.write_bytes(b"\x00\xffnot json")
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "edited":  # valid JSON whose entries no longer match the checksum: a wrong verdict planted
        (entry,) = data["entries"].values()
        entry[SLOT] = "planted"
        path.write_text(json.dumps(data))
    elif damage == "other format":  # a consistent file from another format version
        data["format"] = cache.CACHE_FORMAT + 1
        path.write_text(json.dumps(data))
    else:
        path.write_text("[1, 2, 3]")
    _new_process(monkeypatch)
    compute, calls = _counting(None)
    assert cache.remember(ibp, SLOT, compute, FINDINGS) is None
    assert calls == ["IBP"]  # ignored: computed again, not read
    _valid_file(path)  # and rewritten whole
    _new_process(monkeypatch)
    cache.remember(ibp, SLOT, compute, FINDINGS)
    assert calls == ["IBP"]


def test_a_value_that_does_not_decode_is_a_miss(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ibp = relaxlab.get_relaxation("IBP")
    store = cache.VerdictStore(cache_dir / cache.FILE_NAME)
    store.put(cache.content_key(ibp), SLOT, {"class": "os.system", "fields": {"command": "true"}})  # type: ignore[arg-type]
    _new_process(monkeypatch)
    compute, calls = _counting(None)
    assert cache.remember(ibp, SLOT, compute, FINDINGS) is None and calls == ["IBP"]


def test_an_unwritable_directory_only_costs_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("RELAXLAB_CACHE_DIR", str(blocker / "cache"))  # a directory under a file cannot exist
    monkeypatch.setattr(cache, "_STORES", {})
    compute, calls = _counting(None)
    assert cache.remember(relaxlab.get_relaxation("IBP"), SLOT, compute, FINDINGS) is None
    assert calls == ["IBP"]


def test_a_failed_write_leaves_the_old_file_whole(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = cache_dir / cache.FILE_NAME
    cache.remember(relaxlab.get_relaxation("IBP"), SLOT, lambda _r: None, FINDINGS)
    before = path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    cache.remember(relaxlab.get_relaxation("CROWN"), SLOT, lambda _r: None, FINDINGS)
    assert path.read_bytes() == before
    assert sorted(p.name for p in cache_dir.iterdir()) == [cache.FILE_NAME]  # no temporary file left behind


def test_the_cache_directory_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RELAXLAB_CACHE_DIR", str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("RELAXLAB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "relaxlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "relaxlab"


_WRITER = """
import sys
from pathlib import Path
from relaxlab.properties import cache

store = cache.VerdictStore(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    store.put(f"{sys.argv[2]}-{i}", "soundness", None)
"""


def test_concurrent_writers_never_corrupt_the_file(cache_dir: Path) -> None:
    """Two processes writing at once: every read, during and after, sees a whole file (or none)."""
    path = cache_dir / cache.FILE_NAME
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name, "60"], env=env)
        for name in ("a", "b")
    ]
    snapshot = cache_dir.parent / "snapshot.json"
    while any(w.poll() is None for w in writers):
        if path.exists():
            snapshot.write_bytes(path.read_bytes())
            data = json.loads(snapshot.read_text())  # never a partial file
            assert cache.VerdictStore(snapshot).entries == data["entries"]  # and its checksum holds
    assert all(w.wait(timeout=120) == 0 for w in writers)
    data = _valid_file(path)
    # The last write holds all of its writer's entries; the other's may be partly lost (computed again later).
    assert len(data["entries"]) >= 60  # type: ignore[arg-type]
    assert sorted(p.name for p in cache_dir.iterdir()) == [cache.FILE_NAME]


def test_the_file_keeps_the_newest_entries(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "MAX_ENTRIES", 5)
    store = cache.VerdictStore(cache_dir / cache.FILE_NAME)
    for i in range(8):
        store.put(f"key-{i}", SLOT, None)
    assert sorted(cache.VerdictStore(cache_dir / cache.FILE_NAME).entries) == [
        f"key-{i}" for i in range(3, 8)
    ]
