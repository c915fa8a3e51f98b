"""Shared test set-up: hypothesis profiles and the real-program fixtures."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from tests.support.need import in_ci

pytest_plugins = ("tests.support.fixtures", "tests.support.stores")

# CI: the same examples on every run, no per-example deadline on a busy 2-core machine.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=50,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# Developers: fresh random examples each run, so repeated runs explore more inputs.
settings.register_profile("dev", max_examples=100, deadline=None)

settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if in_ci() else "dev"))
