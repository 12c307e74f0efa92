"""Two writer processes x 500 labels on one annotations file, killed at random with SIGKILL
and restarted from their last acknowledged label (issue 16, case 1): every acknowledged label
ends on disk exactly once."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from covidlib.widgets.annotations import Annotation, AnnotationStore

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

N = 500
HEAD = {"dataset": "toy", "n_regions": 4}


def _label(writer: int, i: int) -> Annotation:
    return Annotation("background", f"w{writer}", i, (0, 16, 0, 16), label=0, time="t")


def _writer(path: Path, writer: int, start: int, ack: Path) -> None:
    """Child process: append labels ``start..N-1``, acknowledge each once it is stored."""
    store = AnnotationStore(path, HEAD)
    fd = os.open(ack, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for i in range(start, N):
        store.append(_label(writer, i))
        os.write(fd, f"{i}\n".encode())


def _acked(ack: Path) -> list[int]:
    if not ack.exists():
        return []
    return [int(s) for s in ack.read_text().split("\n") if s]


def _spawn(path: Path, writer: int, ack: Path) -> int:
    done = _acked(ack)
    start = done[-1] + 1 if done else 0
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            import warnings

            warnings.simplefilter("ignore")  # a repaired tail is reported; fine here
            _writer(path, writer, start, ack)
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def test_two_killed_and_restarted_writers_lose_nothing(tmp_path):
    path = tmp_path / "labels.jsonl"
    acks = [tmp_path / f"ack{w}" for w in (0, 1)]
    rng = random.Random(16)
    pids = {w: _spawn(path, w, acks[w]) for w in (0, 1)}
    kills, t_end = 0, time.monotonic() + 20
    while pids and kills < 20 and time.monotonic() < t_end:
        time.sleep(rng.uniform(0.002, 0.03))
        w = rng.choice(sorted(pids))
        done, status = os.waitpid(pids[w], os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, f"writer {w} failed"
            if len(_acked(acks[w])) >= N:
                del pids[w]
                continue
        else:
            os.kill(pids[w], signal.SIGKILL)
            os.waitpid(pids[w], 0)
            kills += 1
        pids[w] = _spawn(path, w, acks[w])
    for w, pid in pids.items():  # enough kills: let the writers finish
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, f"writer {w} failed"
    assert kills >= 5, kills
    store = AnnotationStore(path, HEAD)
    ids = [a.id for a in store]
    assert len(ids) == len(set(ids))
    for w in (0, 1):
        acked = _acked(acks[w])
        assert acked[-1] == N - 1
        on_disk = sorted(a.z for a in store if a.case_id == f"w{w}")
        assert on_disk == list(range(N))  # every acknowledged label, each exactly once
    label_lines = [json.loads(s) for s in path.read_text().splitlines()[1:]
                   if s.strip() and '"undo"' not in s]
    assert len(label_lines) == 2 * N  # and the raw file holds no duplicate line
