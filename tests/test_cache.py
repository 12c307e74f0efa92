"""The config-hash result cache."""

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from covidlib.cache import (
    CacheError,
    ResultCache,
    atomic_write_text,
    config_hash,
    process_dir,
    read_claim,
    tree_digest,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")


# ------------------------------------------------------------------------------- helpers


def _fork(fn) -> int:
    """Run ``fn`` in a child process (exit code 0 on return, 1 on an exception)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            fn()
        except SystemExit as exc:
            code = int(exc.code or 0)
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def _exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _exit_with(claim, *args) -> None:
    with claim(*args) as owned:
        raise SystemExit(0 if owned else 3)


def _dead_pid() -> int:
    pid = _fork(lambda: None)
    _exit_code(pid)
    return pid


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging when a dead claim is not broken."""
    def boom(*_):
        raise TimeoutError(f"still waiting after {seconds} s: the dead claim was not broken")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _killed_while_computing(run, ready: Path) -> int:
    """Fork ``run`` (which must create ``ready`` and then hang), wait for ``ready`` and kill
    the child with SIGKILL, as a user stopping a chapter would. Returns the dead pid."""
    pid = _fork(run)
    t0 = time.monotonic()
    while not ready.exists():
        assert time.monotonic() - t0 < 60, "the child never started computing"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    assert os.waitpid(pid, 0)[0] == pid
    return pid


def _hang(ready: Path):
    def compute(*_a, **_k):
        ready.write_text(str(os.getpid()))
        time.sleep(120)
    return compute


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
        with cache.claim("k", {"a": 1}) as nested:  # this process already holds it
            assert first and nested
        holder = json.loads(cache.lock_path("k", {"a": 1}).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        child = _fork(lambda: _exit_with(cache.claim, "k", {"a": 1}))
        assert _exit_code(child) == 3  # another process is refused
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


# ---------------------------------------------------------------------- issue 16, case 6


@pytest.mark.parametrize("text, reason", [
    ("[]", r"holds \[\], not a result record"),
    ("null", "holds null, not a result record"),
    ('{"config": {"a": 1}}', "no 'result' key"),
    ("\xff\xfe", "not UTF-8"),
])
def test_bad_result_files_raise_the_librarys_error_with_the_path(tmp_path, text, reason):
    cache = ResultCache(tmp_path)
    path = cache.path("k", {"a": 1})
    path.parent.mkdir(parents=True)
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(CacheError, match=rf"k/{path.stem}\.json: corrupt result file .*{reason}"):
        cache.get("k", {"a": 1})
    with pytest.raises(CacheError, match="delete it to recompute"):
        cache.entries("k")


# ---------------------------------------------------------------------- issue 16, case 8


def test_result_files_follow_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = ResultCache(tmp_path).put("k", {"a": 1}, 3)
        atomic_write_text(tmp_path / "sums.sha256", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "sums.sha256").stat().st_mode) == 0o644


# ---------------------------------------------------------------------- issue 16, case 2


def test_claim_of_a_killed_process_is_broken_at_once(tmp_path):
    cache = ResultCache(tmp_path)
    ready = tmp_path / "ready"
    dead = _killed_while_computing(
        lambda: cache.cached("k", {"a": 1}, _hang(ready)), ready)
    assert read_claim(cache.lock_path("k", {"a": 1})).pid == dead  # the claim file is left
    with cache.claim("k", {"a": 1}) as owned:
        assert owned


def test_an_older_versions_claim_is_broken_if_dead_and_respected_if_alive(tmp_path):
    cache = ResultCache(tmp_path)
    lock = cache.lock_path("k", {"a": 1})
    lock.parent.mkdir(parents=True)
    lock.write_text(f"{socket.gethostname()} pid={_dead_pid()}\n")
    assert cache.compute_once("k", {"a": 1}, lambda: 5, wait_s=0) == 5
    lock.write_text(f"{socket.gethostname()} pid={os.getppid()}\n")  # a live process
    lock.rename(cache.lock_path("k", {"b": 1}))
    with pytest.raises(TimeoutError, match=rf"claimed by process {os.getppid()} on "):
        cache.compute_once("k", {"b": 1}, lambda: 6, wait_s=0)


def test_waiting_names_the_holder_and_returns_its_result(tmp_path, capsys):
    cache = ResultCache(tmp_path)
    ready = tmp_path / "ready"

    def slow():
        ready.write_text("")
        time.sleep(1.0)
        return {"dice": 0.7}

    child = _fork(lambda: cache.cached("k", {"a": 1}, slow))
    while not ready.exists():
        time.sleep(0.01)
    calls = []
    with _deadline(30):
        got = cache.compute_once("k", {"a": 1}, lambda: calls.append(1), poll_s=0.05)
    assert got == {"dice": 0.7} and calls == []  # waited for the other process, no rerun
    assert _exit_code(child) == 0
    err = capsys.readouterr().err
    assert f"waiting for {cache.path('k', {'a': 1})} (k), being computed by process {child}" \
        in err


def test_process_dir_is_per_process_and_takes_over_a_dead_ones(tmp_path):
    host = socket.gethostname()
    live = tmp_path / f"abc.{host}.{os.getppid()}"
    (live / "x").mkdir(parents=True)
    dead = tmp_path / f"abc.{host}.{_dead_pid()}"
    dead.mkdir()
    (dead / "checkpoint.pt").write_text("epoch 3")
    mine = process_dir(tmp_path, "abc")
    assert mine == tmp_path / f"abc.{host}.{os.getpid()}"
    assert (mine / "checkpoint.pt").read_text() == "epoch 3" and not dead.exists()
    assert (live / "x").is_dir()  # a live process's folder is never touched
    assert process_dir(tmp_path, "abc") == mine


def test_p4_once_proceeds_after_the_computing_process_is_killed(tmp_path):
    from covidlib.experiments import p4

    cache = ResultCache(tmp_path)
    ready = tmp_path / "ready"
    _killed_while_computing(lambda: p4._once(cache, "p4_run", {"a": 1}, _hang(ready)), ready)
    with _deadline(10):
        assert p4._once(cache, "p4_run", {"a": 1}, lambda: {"ok": 1}, poll=0.05) == {"ok": 1}


def test_p1_run_proceeds_after_the_computing_process_is_killed(tmp_path):
    from covidlib.experiments import p1

    ready = tmp_path / "ready"
    _killed_while_computing(
        lambda: p1._cached("p1_al", {"a": 1}, _hang(ready), tmp_path, 3600), ready)
    with _deadline(10):
        assert p1._cached("p1_al", {"a": 1}, lambda ck: {"ok": 1}, tmp_path, 3600) == {"ok": 1}


def test_p2_run_resumes_in_the_killed_workers_folder_and_cleans_up(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from covidlib.experiments import p2

    monkeypatch.setattr(p2, "open_cached", lambda name, root: None)
    monkeypatch.setattr(p2, "cache_config", lambda run, ds: {"run": "tiny"})
    ready = tmp_path / "ready"
    seen: list[Path] = []

    def hang(run, ds, device, ck, progress):
        (ck / "checkpoint.pt").write_text("epoch 1")  # the killed worker's progress
        _hang(ready)()

    def finish(run, ds, device, ck, progress):
        seen.append(ck)
        return {"dice": 0.5, "resumed": (ck / "checkpoint.pt").read_text()}

    run = SimpleNamespace(dataset="synthetic")
    monkeypatch.setattr(p2, "_train_and_score", hang)
    _killed_while_computing(lambda: p2.run_p2(run, None, tmp_path, "cpu", checkpoints=True),
                            ready)
    monkeypatch.setattr(p2, "_train_and_score", finish)
    with _deadline(10):
        out = p2.run_p2(run, None, tmp_path, "cpu", checkpoints=True)
    assert out == {"dice": 0.5, "resumed": "epoch 1"}
    assert seen[0].name.endswith(f".{socket.gethostname()}.{os.getpid()}")  # its own folder
    assert list((tmp_path / "p2_checkpoints").iterdir()) == []  # removed once stored


# ---------------------------------------------------------------------- issue 16, case 7


def test_a_result_of_another_thread_count_is_not_returned(tmp_path):
    import torch

    cache = ResultCache(tmp_path)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cache.put("k", {"a": 1}, "two threads")
        assert cache.get("k", {"a": 1}) == "two threads"
        torch.set_num_threads(1)
        assert cache.get("k", {"a": 1}) is None  # 1 vs 2 threads train different models
        assert cache.cached("k", {"a": 1}, lambda: "one thread") == "one thread"
    finally:
        torch.set_num_threads(before)
    records = cache.entries("k")
    assert sorted(r["runtime"]["torch_threads"] for r in records) == [1, 2]
    assert all(r["runtime"]["covidlib"] for r in records)
    assert all(r["config"] == {"a": 1} for r in records)  # the config itself is unchanged
    plain = ResultCache(tmp_path / "plain", runtime=False)
    assert plain.path("k", {"a": 1}).name == f"{config_hash({'a': 1})}.json"


def test_an_edited_split_or_data_file_changes_the_data_key(synthetic_root, tmp_path):
    import dataclasses

    from covidlib.data.api import open_dataset

    ds = open_dataset("synthetic", synthetic_root)
    fp = ds.fingerprint()
    split = ds.manifest.splits["sep"]
    edited = dataclasses.replace(split, test=split.test[:2])  # the test list: 4 -> 2 cases
    m2 = dataclasses.replace(ds.manifest, splits={**ds.manifest.splits, "sep": edited})
    assert type(ds)(m2, ds.root).fingerprint()["splits"] != fp["splits"]
    assert type(ds)(ds.manifest, ds.root).fingerprint() == fp  # same data, same key
    # the files: a tree digest of paths and contents
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.nii.gz").write_bytes(b"12345")
    first = tree_digest(root)
    rows = "a/x.nii.gz\t" + hashlib.sha256(b"12345").hexdigest()
    assert first == hashlib.sha256(rows.encode()).hexdigest()[:16]  # hand-computed
    (root / ".hidden").write_text("x")
    (root / "a" / ".x.nii.gz.host.1.tmp").write_text("x")
    assert tree_digest(root) == first  # hidden and temporary files do not count
    os.utime(root / "a" / "x.nii.gz", ns=(1, 1))
    assert tree_digest(root) == first  # a copy with other times: same data, same key
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert tree_digest(copy) == first  # another folder holding the same files
    (root / "a" / "x.nii.gz").write_bytes(b"54321")
    os.utime(root / "a" / "x.nii.gz", ns=(1, 1))
    assert tree_digest(root) != first  # same size, same time, other bytes: replaced
    (root / "b.png").write_bytes(b"")
    assert len({first, tree_digest(root)}) == 2


def test_p2_open_cached_rereads_an_edited_manifest(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from covidlib.experiments import p2_data

    yaml = tmp_path / "toy.yaml"
    yaml.write_text("splits: {}\n")
    opened = []
    monkeypatch.setattr(p2_data, "load_manifest", lambda name: SimpleNamespace(path=yaml))
    monkeypatch.setattr(p2_data, "open_dataset",
                        lambda name, root: opened.append(name) or object())
    p2_data._open.cache_clear()
    try:
        first = p2_data.open_cached("toy")
        assert p2_data.open_cached("toy") is first and len(opened) == 1
        yaml.write_text("splits: {sep: {}}\n")  # edited in a running kernel
        assert p2_data.open_cached("toy") is not first and len(opened) == 2
    finally:
        p2_data._open.cache_clear()
