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


@pytest.fixture
def semiseg_cases(shared_data):
    """COVID-SemiSeg's manifest and its train+test cases read from ``shared_data``; skips with
    a clear message when the released ``Dataset`` folder is absent."""
    from covidlib.data.manifest import load_manifest
    from covidlib.data.readers import load_cases

    if not (shared_data / "covid-semiseg" / "Dataset").is_dir():
        pytest.skip(f"real COVID-SemiSeg data not found under {shared_data} "
                    "(set COVIDLIB_SHARED_DATA)")
    m = load_manifest("covid-semiseg")
    return m, load_cases(m, shared_data, group=["train", "test"], progress=False)


@pytest.fixture
def ref(tmp_path, monkeypatch) -> Path:
    """An empty reference-run folder under ``tmp_path``, made the default one
    (``covidlib.report.reference.ENV``); a test module may extend it with a same-named fixture."""
    from covidlib.report import reference

    folder = tmp_path / "reference"
    folder.mkdir()
    monkeypatch.setenv(reference.ENV, str(folder))
    return folder
