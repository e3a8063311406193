"""Shared fixtures: a fresh random generator per test, its seed shown on failure."""

import os
import secrets

import numpy as np
import pytest


def pytest_report_header(config):
    import sdcore

    return f"sdcore from {os.path.dirname(sdcore.__file__)}; build {sdcore._C.build_info()}"


@pytest.fixture
def rng(request):
    """A numpy Generator with a fresh seed each run (SDCORE_TEST_SEED pins it)."""
    seed = int(os.environ.get("SDCORE_TEST_SEED", secrets.randbits(32)))
    request.node.user_properties.append(("seed", seed))
    gen = np.random.default_rng(seed)
    return gen


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name, value in item.user_properties:
            if name == "seed":
                report.sections.append(("random seed", f"SDCORE_TEST_SEED={value}"))
