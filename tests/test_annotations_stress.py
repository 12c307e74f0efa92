"""Two writer processes x 500 labels on one annotations file, killed with SIGKILL and restarted
from their last acknowledged label (issue 16, case 1): every acknowledged label ends on disk
exactly once.

The kills are deterministic: each writer stops at planned labels (drawn once from a seeded
generator) in one of four places, tells the test through a pipe, and is killed there while the
other writer keeps appending: after acknowledging the label; after storing it but before the
acknowledgement (the restart appends it again: a duplicate); holding the file lock just after
writing its line; holding the lock with only the first bytes of its line written (a cut-short
line the next append moves aside)."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import time
from pathlib import Path

import pytest

from covidlib.widgets.annotations import Annotation, AnnotationStore

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

N = 500
HEAD = {"dataset": "toy", "n_regions": 4}
PLACES = ("after_ack", "before_ack", "in_lock", "torn")
KILLS_PER_WRITER = 8  # every place twice
STUCK_S = 120  # a writer that neither stops nor finishes by then has hung: fail, not wait


def _label(writer: int, i: int) -> Annotation:
    return Annotation("background", f"w{writer}", i, (0, 16, 0, 16), label=0, time="t")


def _stop(signal_fd: int) -> None:
    """Child: tell the test where it stopped, then wait for the SIGKILL."""
    os.write(signal_fd, b"s")
    while True:
        signal.pause()


def _writer(path: Path, writer: int, start: int, ack: Path,
            stop: tuple[int, str] | None, signal_fd: int) -> None:
    """Child process: append labels ``start..N-1``, acknowledge each once it is stored; stop
    at label ``stop[0]`` in place ``stop[1]`` (see the module docstring)."""
    store = AnnotationStore(path, HEAD)
    at, place = stop if stop else (-1, "")
    write = store._write

    def hooked(fd: int, obj: dict) -> None:
        if obj.get("z") != at or place not in ("in_lock", "torn"):
            return write(fd, obj)
        if place == "torn":
            os.write(fd, b'{"kind": "backgr')  # the first bytes of a line, then killed
        else:
            write(fd, obj)
        _stop(signal_fd)

    store._write = hooked  # type: ignore[method-assign]
    fd = os.open(ack, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for i in range(start, N):
        store.append(_label(writer, i))
        if i == at and place == "before_ack":
            _stop(signal_fd)
        os.write(fd, f"{i}\n".encode())
        if i == at and place == "after_ack":
            _stop(signal_fd)


def _acked(ack: Path) -> list[int]:
    if not ack.exists():
        return []
    return [int(s) for s in ack.read_text().split("\n") if s]


def _spawn(path: Path, writer: int, ack: Path, stop: tuple[int, str] | None
           ) -> tuple[int, int]:
    """Fork a writer from its last acknowledged label; ``(pid, read end of its stop pipe)``."""
    done = _acked(ack)
    start = done[-1] + 1 if done else 0
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            import warnings

            os.close(read_fd)
            warnings.simplefilter("ignore")  # a repaired tail is reported; fine here
            _writer(path, writer, start, ack, stop, write_fd)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _plan(seed: int) -> dict[int, list[tuple[int, str]]]:
    """Each writer's stops: distinct labels in increasing order, every place twice."""
    rng = random.Random(seed)
    plan = {}
    for w in (0, 1):
        labels = sorted(rng.sample(range(1, N - 1), KILLS_PER_WRITER))
        places = [PLACES[k % len(PLACES)] for k in range(KILLS_PER_WRITER)]
        rng.shuffle(places)
        plan[w] = list(zip(labels, places, strict=True))
    return plan


def _run(path: Path, acks: list[Path], plan: dict[int, list[tuple[int, str]]]) -> int:
    """Run both writers to the end, killing each at its planned stops; the number of kills."""
    todo = {w: list(stops) for w, stops in plan.items()}
    procs = {w: _spawn(path, w, acks[w], todo[w].pop(0) if todo[w] else None) for w in (0, 1)}
    kills, deadline = 0, time.monotonic() + STUCK_S
    try:
        while procs:
            assert time.monotonic() < deadline, f"writers {sorted(procs)} hung ({kills} kills)"
            ready, _, _ = select.select([fd for _, fd in procs.values()], [], [], 0.05)
            for w, (pid, fd) in list(procs.items()):
                if fd in ready and os.read(fd, 1) == b"s":  # stopped where planned
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    os.close(fd)
                    kills += 1
                    procs[w] = _spawn(path, w, acks[w], todo[w].pop(0) if todo[w] else None)
                    continue
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    assert os.waitstatus_to_exitcode(status) == 0, f"writer {w} failed"
                    assert not todo[w], f"writer {w} finished before its stops {todo[w]}"
                    os.close(fd)
                    del procs[w]
    finally:
        for pid, fd in procs.values():  # a failed assertion: leave no writer behind
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)
    return kills


def test_two_killed_and_restarted_writers_lose_nothing(tmp_path):
    path = tmp_path / "labels.jsonl"
    acks = [tmp_path / f"ack{w}" for w in (0, 1)]
    plan = _plan(16)
    assert _run(path, acks, plan) == 2 * KILLS_PER_WRITER  # every planned kill happened
    store = AnnotationStore(path, HEAD)
    assert store.problem is None  # the cut-short lines were moved aside
    ids = [a.id for a in store]
    assert len(ids) == len(set(ids))
    for w in (0, 1):
        assert _acked(acks[w]) == list(range(N))  # a label unacknowledged when killed: once
        on_disk = sorted(a.z for a in store if a.case_id == f"w{w}")
        assert on_disk == list(range(N))  # every acknowledged label, each exactly once
    label_lines = [json.loads(s) for s in path.read_text().splitlines()[1:]
                   if s.strip() and '"undo"' not in s]
    assert len(label_lines) == 2 * N  # and the raw file holds no duplicate line
    torn = sum(p == "torn" for stops in plan.values() for _, p in stops)
    assert len(list(tmp_path.glob("labels.jsonl.bad-*"))) == torn  # each cut-short line kept
