"""One local Ray instance with 2 CPUs for the whole session (starting one takes seconds), shut
down at the end; the Ray tests skip where Ray is not installed (``pip install '.[ray]'``)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    for attempt in (1, 2):  # on a loaded machine the raylet can miss Ray's fixed 30 s start window
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception for it
            ray.shutdown()
            if attempt == 2:
                raise
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()
