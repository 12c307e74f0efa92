"""covidlib.data.api.Dataset: the fingerprint that keys cached results to their data."""

from __future__ import annotations

import json
import shutil

from covidlib.cache import config_hash
from covidlib.data.api import open_dataset


def test_phantom_fingerprint_hashes_generator_version_and_config(synthetic_root, tmp_path):
    ds = open_dataset("synthetic", synthetic_root)
    info = json.loads((ds.root / "phantom.json").read_text())
    fp = ds.fingerprint()
    fp.pop("splits"), fp.pop("files")  # issue 16: see tests/test_cache.py
    assert fp == {"name": "synthetic", "real": False,
                  "generator": config_hash({"version": info["generator_version"],
                                            "config": info["config"]})}
    # Another generator config (a copy with one setting changed) gives another key.
    other = tmp_path / "synthetic"
    other.mkdir()
    shutil.copy(ds.root / "phantom.json", other / "phantom.json")
    changed = dict(info, config={**info["config"], "seed": info["config"].get("seed", 0) + 1})
    (other / "phantom.json").write_text(json.dumps(changed))
    moved = type(ds)(ds.manifest, other)
    assert moved.fingerprint()["generator"] != fp["generator"]


def test_real_data_has_no_generator(shared_data):
    fp = open_dataset("covid-semiseg", shared_data).fingerprint()
    fp.pop("splits"), fp.pop("files")  # issue 16: see tests/test_cache.py
    assert fp == {"name": "covid-semiseg", "real": True, "generator": None}
