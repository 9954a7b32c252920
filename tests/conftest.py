"""Shared test configuration: Hypothesis profiles, the device fixture and a built-ins-only registry."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import hypothesis.configuration
import pytest
import torch
from hypothesis import HealthCheck, settings

from relaxlab.properties.soundness import check_soundness
from relaxlab.registry import Registry, build_registry

# The verdict cache (relaxlab.properties.cache) of the whole session, subprocesses included, is a
# fresh directory: the suite never reads or writes ~/.cache, and starts cold. Set before any test
# module builds a registry; removed at exit.
_CACHE_DIR = tempfile.mkdtemp(prefix="relaxlab-test-cache-")
os.environ["RELAXLAB_CACHE_DIR"] = _CACHE_DIR
os.environ.pop("RELAXLAB_NO_CACHE", None)
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
# Hypothesis keeps what it writes (its constants cache, an example database) there too, not in a
# `.hypothesis/` of the working tree; a directory the user chose wins.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(_CACHE_DIR, "hypothesis"))
hypothesis.configuration.set_hypothesis_home_dir(os.environ["HYPOTHESIS_STORAGE_DIRECTORY"])

# Deterministic in CI; `RELAXLAB_HYPOTHESIS_PROFILE=explore` searches much harder locally.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "explore",
    deadline=None,
    max_examples=5_000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("RELAXLAB_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every device test runs on the CPU, and on CUDA where a GPU is present."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)


# Third-party plugins installed in the environment must not change what the suite tests: the
# process-wide registry (relaxlab.get_registry) sees the built-ins only. Tests of entry-point
# loading fake their distributions and lift this switch themselves.
os.environ["RELAXLAB_DISABLE_PLUGIN_AUTOLOAD"] = "1"


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The built-in plugins only, soundness-checked as the facade does."""
    return build_registry(load_entry_points=False, check=check_soundness)


#: Where the paper's released MNIST networks are looked for: $RELAXLAB_PARADOX_PRETRAINED, then the
#: shared directory beside the main checkout (``../shared``) and this machine's.
_RELEASED_CANDIDATES = (
    os.environ.get("RELAXLAB_PARADOX_PRETRAINED", ""),
    str(Path(__file__).resolve().parents[1].parent / "shared" / "paradox-pretrained"),
    "/work/shared/paradox-pretrained",
)


@pytest.fixture(scope="session")
def released_dir() -> Path:
    """The directory of the paper's 12 released ``mnist_*.pt`` files (the test skips without them)."""
    for candidate in filter(None, _RELEASED_CANDIDATES):
        if (Path(candidate) / "mnist_FC_box.pt").is_file():
            return Path(candidate)
    pytest.skip("the paper's released networks are not here (set $RELAXLAB_PARADOX_PRETRAINED)")


@pytest.fixture(scope="session")
def embedded_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,000 test images of ``mnist-mini`` (the first 1,000 of MNIST test) and their labels."""
    from relaxlab.data.datasets import BUILTIN_DATASETS

    return next(d for d in BUILTIN_DATASETS if d.name == "mnist-mini").load("test")
