"""Shared fixtures: the default synthetic phantom (generated once per session) and real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("COVIDLIB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data root holding the default 20-volume phantom (about 10-20 s, once per session).

    Reuses ``./data/synthetic`` when ``make data`` already made it with the default config
    (ensure_synthetic verifies the config and completes what is missing).
    """
    from covidlib.data.phantom import ensure_synthetic

    local = REPO / "data"
    if (local / "synthetic" / "phantom.json").exists():
        ensure_synthetic(local, progress=False)
        return local
    root = tmp_path_factory.mktemp("data")
    ensure_synthetic(root, progress=False)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real COVID-SemiSeg); skips with a clear message when absent."""
    if not (SHARED_DATA / "covid-semiseg").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA / 'covid-semiseg'} "
                    "(set COVIDLIB_SHARED_DATA to the folder holding covid-semiseg/)")
    return SHARED_DATA
