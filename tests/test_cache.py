"""The config-hash result cache."""

import json
import math

import numpy as np
import pytest

from covidlib.cache import ResultCache, atomic_write_text, config_hash


def test_hash_is_order_independent_and_type_canonical():
    a = config_hash({"loss": "pl", "seeds": (0, 1), "lr": 1e-4})
    b = config_hash({"lr": 1e-4, "seeds": [0, 1], "loss": "pl"})
    assert a == b and len(a) == 16
    assert config_hash({"x": np.int64(3)}) == config_hash({"x": 3})
    assert config_hash({"lr": 1e-4}) != config_hash({"lr": 1e-3})


def test_hash_matches_a_hand_computed_sha256():
    import hashlib

    expected = hashlib.sha256(b'{"a":1,"b":[2,3]}').hexdigest()[:16]
    assert config_hash({"b": (2, 3), "a": 1}) == expected


@pytest.mark.parametrize("bad", [{"x": math.nan}, {"x": object()}, {1: "int key"}])
def test_bad_configs_are_refused(bad):
    with pytest.raises((TypeError, ValueError)):
        config_hash(bad)


def test_cached_computes_once_and_reuses(tmp_path):
    cache = ResultCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"dice": 0.5}

    cfg = {"dataset": "synthetic", "seed": 0}
    assert cache.cached("p2", cfg, compute) == {"dice": 0.5}
    assert cache.cached("p2", cfg, compute) == {"dice": 0.5}
    assert len(calls) == 1
    record = json.loads(cache.path("p2", cfg).read_text())
    assert record["config"] == cfg and record["meta"]["seconds"] >= 0
    assert [e["result"] for e in cache.entries("p2")] == [{"dice": 0.5}]
    assert cache.get("p2", {"dataset": "synthetic", "seed": 1}) is None


def test_corrupt_result_names_the_file(tmp_path):
    cache = ResultCache(tmp_path)
    cache.put("k", {"a": 1}, 3)
    cache.path("k", {"a": 1}).write_text("{not json")
    with pytest.raises(ValueError, match=r"k/.*\.json: corrupt"):
        cache.get("k", {"a": 1})


def test_claim_is_exclusive_and_released(tmp_path):
    cache = ResultCache(tmp_path)
    with cache.claim("k", {"a": 1}) as first:
        with cache.claim("k", {"a": 1}) as second:
            assert first and not second
    with cache.claim("k", {"a": 1}) as again:
        assert again
    assert not list((tmp_path / "k").glob("*.lock"))


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    atomic_write_text(target, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
