"""Hypothesis settings shared by the property and fuzz tests.

``CI=true`` loads a derandomized profile (the same inputs every run, no example
database), so CI is reproducible; locally the inputs change from run to run.
``GPTCLF_FUZZ_SCALE=N`` multiplies every test's number of inputs for a longer hunt.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", **_common)
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, **_common)
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")


def examples(n: int) -> int:
    """``n`` inputs, times ``$GPTCLF_FUZZ_SCALE``."""
    return n * max(1, int(os.environ.get("GPTCLF_FUZZ_SCALE", "1") or 1))
