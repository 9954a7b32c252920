"""Shared test configuration: Hypothesis profiles and the device fixture."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Deterministic in CI; `RELAXLAB_HYPOTHESIS_PROFILE=explore` searches much harder locally.
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "explore", deadline=None, max_examples=5_000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("RELAXLAB_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every device test runs on the CPU, and on CUDA where a GPU is present."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)
