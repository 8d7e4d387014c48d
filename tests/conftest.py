"""Fixtures shared by several test files, and the Hypothesis profiles of the suite."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from udit.models.dit import DiT

# Hypothesis: "ci" (the default) keeps the generated cases within the suite's time budget;
# HYPOTHESIS_PROFILE=thorough runs 20x as many for a local search. No example database is
# written into the checkout; fixtures are reused across examples on purpose (tmp_path-based
# tests make a fresh subfolder per example).
_COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}
settings.register_profile("ci", max_examples=10, **_COMMON)
settings.register_profile("thorough", max_examples=200, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Under `pytest -n auto` (pytest-xdist) each worker gets one intra-op thread: two workers with two
# threads each on two cores spend their time waiting on each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# A 2-block DiT on 4x8x8 latents, 10 classes: small enough for float64 checks in milliseconds.
TINY_DIT = {
    "input_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "hidden_size": 32,
    "depth": 2,
    "num_heads": 4,
    "num_classes": 10,
}


def build_tiny_dit(*, seed: int | None = None, std: float = 1.0, **overrides) -> DiT:
    """TINY_DIT with `overrides`. With a seed every parameter is redrawn from N(0, std^2):
    adaLN-Zero initialisation would otherwise make the output identically zero."""
    model = DiT(**{**TINY_DIT, **overrides})
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture
def one_thread():
    """2 shared cores: intra-op threads only add contention for models this small (and one
    thread fixes the float summation order where a test compares with stored outputs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_dit():
    """build_tiny_dit, as a fixture so test files share one definition."""
    return build_tiny_dit


@pytest.fixture(scope="session")
def smoke_pair(tmp_path_factory):
    """(results folder, --config args) after a few smoke experiments ran end to end, once per
    session for tests/test_workflow.py and tests/test_export_dag.py (defined here: a session
    fixture imported into two test modules ran twice, 40 s each)."""
    from test_workflow import run_smoke_pair

    results = tmp_path_factory.mktemp("pair") / "results"
    return results, run_smoke_pair(results)


def pytest_collection_modifyitems(config, items):
    """Under mutmut, run a mutant's tests fastest first.

    mutmut stops at the first failing test (`-x`), but its forkserver hands pytest the tests as an
    unordered set: a mutant a 0.1 s test kills often waited a minute behind slower ones first. The
    durations are the ones mutmut measured in its stats run (mutants/mutmut-stats.json, plain
    JSON). Only the time to a verdict changes: a survivor still runs every test.
    """
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    stats_path = config.rootpath / "mutmut-stats.json"
    if not stats_path.is_file():
        return
    import json

    seconds = json.loads(stats_path.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: seconds.get(item.nodeid, float("inf")))
