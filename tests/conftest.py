"""Shared test settings: fast hypothesis profile, and the real datasets folder beside the repo."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "byzance",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.load_profile("byzance")

#: ../shared/datasets relative to the repository root (what CI and developers have), unless
#: BYZANCE_DATA_DIR points elsewhere (e.g. a copy carried to a GPU machine)
SHARED_DATASETS = Path(
    os.environ.get("BYZANCE_DATA_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
)
os.environ.setdefault("BYZANCE_DATA_DIR", str(SHARED_DATASETS))
# verification stamps of the tests go to a throw-away folder, not the user's cache
os.environ.setdefault("BYZANCE_CACHE_DIR", str(Path(tempfile.gettempdir()) / "byzance-test-cache"))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The folder holding the real datasets; tests needing it skip when it is absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"no shared datasets at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance of 8 logical CPUs for the tests of one module (skipped without
    Ray); the engines reuse an initialised Ray."""
    import logging

    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        logging_level=logging.WARNING,
        object_store_memory=300 * 1024**2,
    )
    yield
    ray.shutdown()
