"""Results cached on disk by a hash of their configuration.

Every experiment in the book is a pure function of a JSON-able config (dataset, split,
loss, profile, seed, ...). :class:`ResultCache` stores its result as
``<results_dir>/<kind>/<hash>.json`` next to the config that produced it, so re-running a
notebook reuses finished runs, and workers sharing a results folder split a sweep between
them.

Claims (the one mechanism for every cached computation: P1, P2, P3, P4, bench): while a
config is computed, ``<hash>.lock`` beside its result is held with an exclusive
``fcntl.flock`` and names the holder (host, pid, start time, what). The operating system
releases the lock when the holder dies, so a killed run's claim is broken at once; a claim
whose file names a process of this host that no longer runs is broken too.
:meth:`ResultCache.cached` computes a config in exactly one process; the others wait for its
result, saying what they wait for. :func:`process_dir` gives the computing process its own
work (checkpoint) folder and hands a dead process's folder to its successor, so a killed run
resumes. Files are created with the user's umask (0644 by default), never 0600.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = 1

__all__ = ["CacheError", "ClaimInfo", "ResultCache", "atomic_write_bytes", "atomic_write_text",
           "config_hash", "file_sha256", "pid_alive", "process_dir", "read_claim",
           "remove_process_dir", "runtime_key", "tree_digest"]


class CacheError(ValueError):
    """A results-cache file that cannot be used (names the file and the reason)."""

    def __init__(self, where: str | Path, reason: str):
        self.where = str(where)
        self.reason = reason
        super().__init__(f"{self.where}: {reason}")


def _canonical(obj: Any) -> Any:
    """JSON-able canonical form: tuples -> lists, Paths -> str, floats checked finite."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"config keys must be str, got {k!r} ({type(k).__name__})")
            out[k] = _canonical(v)
        return out
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, int | str):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"config value {obj!r} is not finite")
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _canonical(obj.item())
    raise TypeError(f"config value {obj!r} of type {type(obj).__name__} is not JSON-able")


def config_hash(config: Mapping[str, Any], length: int = 16) -> str:
    """sha256 of the canonical JSON of ``config`` (sorted keys), first ``length`` hex digits."""
    text = json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def runtime_key() -> dict[str, Any]:
    """What a computation's numbers depend on besides its config: covidlib's version and
    torch's intra-op thread count (a model trained with 1 or 2 CPU threads differs)."""
    from covidlib import __version__

    try:
        import torch

        threads: int | None = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        threads = None
    return {"covidlib": __version__, "torch_threads": threads}


_FILE_SHA256: dict[tuple[str, int, int, int, int], str] = {}
"""sha256 of files already read by this process, by (path, size, mtime_ns, ctime_ns, inode)."""


def file_sha256(path: str | Path) -> str:
    """sha256 of one file's bytes, read once per process while its size, modification and
    status-change times and inode stay the same (a write changes the status-change time even
    when the modification time is set back)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _FILE_SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_SHA256[key] = h.hexdigest()
    return _FILE_SHA256[key]


def tree_digest(root: str | Path) -> str:
    """sha256 (16 hex digits) of the data files under ``root``: every regular file's relative
    path and the sha256 of its bytes (hidden, ``.tmp`` and ``.lock`` files left out), so an
    added, removed, replaced or edited file changes it, while a copy of the same files (other
    modification times, another machine) keeps it and reuses cached results."""
    root = Path(root)
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:  # linked folders are not walked (no loops): their target counts
            if os.path.islink(os.path.join(dirpath, d)):
                rel = (Path(dirpath) / d).relative_to(root).as_posix()
                rows.append(f"{rel}\tlink\t{os.readlink(os.path.join(dirpath, d))}")
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith((".tmp", ".lock")):
                continue
            path = Path(dirpath) / name
            with contextlib.suppress(FileNotFoundError):
                rows.append(f"{path.relative_to(root).as_posix()}\t{file_sha256(path)}")
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


_WRITING = threading.Lock()


def temp_path(path: Path) -> Path:
    """This process's temporary sibling of ``path``: ``.<name>.<host>.<pid>.tmp``."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling, fsync and ``os.replace``; the
    file gets the user's umask (0644 by default). A crash leaves the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    with _WRITING:  # the temporary name is per process: one writer thread at a time
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # umask applies
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    with contextlib.suppress(OSError):  # make the rename durable (POSIX)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode())


# --------------------------------------------------------------------------------------------
# Claims
# --------------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ClaimInfo:
    """Who holds a claim: ``host``, ``pid``, ``started`` (ISO time), ``what`` (the file)."""

    host: str
    pid: int
    started: str = ""
    what: str = ""

    @property
    def dead(self) -> bool:
        """A process of this host that no longer runs (its claim can be broken at once)."""
        return self.host == socket.gethostname() and not pid_alive(self.pid)

    def describe(self) -> str:
        since = f" since {self.started}" if self.started else ""
        return f"process {self.pid} on {self.host}{since}"


def read_claim(lock: str | Path) -> ClaimInfo | None:
    """The holder named by a claim file (this version's JSON or the older
    ``"<host> pid=<pid>"`` line); ``None`` when absent or unreadable."""
    try:
        text = Path(lock).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError, ValueError):
        obj = json.loads(text)
        return ClaimInfo(str(obj["host"]), int(obj["pid"]), str(obj.get("started", "")),
                         str(obj.get("what", "")))
    parts = text.split()
    if len(parts) == 2 and parts[1].startswith("pid="):
        with contextlib.suppress(ValueError):
            return ClaimInfo(parts[0], int(parts[1][4:]))
    return None


_HELD: dict[str, tuple[int, int]] = {}  # claim files held -> (pid, locked fd)


def _try_claim(lock: Path) -> int | None:
    """Take the claim file ``lock``: the locked fd, or ``None`` when a live process holds it."""
    for _ in range(5):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            info = read_claim(lock)
            if info is not None and info.dead:  # held by an orphan (a forked child): break it
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            return None
        try:
            st = os.stat(lock)
        except FileNotFoundError:
            st = None
        if st is None or st.st_ino != os.fstat(fd).st_ino:  # released and removed meanwhile
            os.close(fd)
            continue
        info = read_claim(lock)
        legacy = info is not None and not info.started and not info.what
        if legacy and info is not None and info.pid != os.getpid() and not info.dead \
                and info.host == socket.gethostname() and time.time() - st.st_mtime < 6 * 3600:
            os.close(fd)  # an older version's claim (no OS lock) of a live process
            return None
        stamp = _dt.datetime.now().replace(microsecond=0).isoformat()
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": stamp,
                  "what": lock.with_suffix(".json").name}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        return fd
    return None


def process_dir(parent: str | Path, name: str) -> Path:
    """This process's own work folder ``<parent>/<name>.<host>.<pid>`` (e.g. checkpoints of
    one config), created if absent. Call it while holding the config's claim: a folder left by
    a dead process of this host (or the shared ``<parent>/<name>`` of older versions) is
    renamed to this process's name, so a killed run resumes where it stopped; folders of live
    processes are never touched, so two workers cannot collide."""
    parent = Path(parent)
    host, me = socket.gethostname(), os.getpid()
    mine = parent / f"{name}.{host}.{me}"
    if mine.is_dir():
        return mine
    parent.mkdir(parents=True, exist_ok=True)
    candidates = [parent / name, *sorted(parent.glob(f"{name}.*"))]
    for cand in candidates:
        if not cand.is_dir() or cand == mine:
            continue
        if cand.name != name:
            owner_host, _, pid = cand.name[len(name) + 1:].rpartition(".")
            if owner_host != host or not pid.isdigit() or pid_alive(int(pid)):
                continue
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rename(cand, mine)
            print(f"resuming from {cand} (left by a stopped process)", file=sys.stderr)
            return mine
    mine.mkdir(parents=True, exist_ok=True)
    return mine


def remove_process_dir(parent: str | Path, name: str) -> None:
    """Remove this process's folder of ``name`` and those of dead processes of this host."""
    parent = Path(parent)
    host = socket.gethostname()
    for cand in parent.glob(f"{name}.*"):
        owner_host, _, pid = cand.name[len(name) + 1:].rpartition(".")
        if owner_host == host and pid.isdigit() and (int(pid) == os.getpid()
                                                     or not pid_alive(int(pid))):
            shutil.rmtree(cand, ignore_errors=True)


_NOW: Any = object()  # "the runtime of this process now"


class ResultCache:
    """A folder of finished results keyed by ``(kind, config, runtime)``.

    With ``runtime=True`` (the default) a result's key also holds :func:`runtime_key` (the
    covidlib version and torch's thread count), stored as the record's ``"runtime"``: a
    result computed with another thread count or another covidlib is not returned.
    """

    def __init__(self, results_dir: str | Path, runtime: bool = True):
        self.root = Path(results_dir)
        self.with_runtime = runtime

    def runtime(self) -> dict[str, Any] | None:
        """This process's runtime key now (``None`` when the cache ignores it)."""
        return runtime_key() if self.with_runtime else None

    def path(self, kind: str, config: Mapping[str, Any], runtime: Any = _NOW) -> Path:
        if not kind or "/" in kind or kind.startswith("."):
            raise ValueError(f"result kind {kind!r} must be a plain folder name")
        rt = self.runtime() if runtime is _NOW else runtime
        key = config if rt is None else {"config": config, "runtime": rt}
        return self.root / kind / f"{config_hash(key)}.json"

    @staticmethod
    def read_record(path: Path) -> dict[str, Any]:
        """One stored record, checked: a dict with ``config`` and ``result`` (else
        :class:`CacheError` naming the file, the reason and the fix)."""
        fix = "delete it to recompute"
        try:
            record = json.loads(path.read_text())
        except UnicodeDecodeError as exc:
            raise CacheError(path, f"corrupt result file (not UTF-8 text: {exc}); {fix}") from exc
        except json.JSONDecodeError as exc:
            raise CacheError(path, f"corrupt result file ({exc}); {fix}") from exc
        if not isinstance(record, dict):
            raise CacheError(path, f"corrupt result file (holds {json.dumps(record)[:40]}, "
                             f"not a result record); {fix}")
        missing = [k for k in ("config", "result") if k not in record]
        if missing:
            raise CacheError(path, f"corrupt result file (no {' or '.join(map(repr, missing))}"
                             f" key); {fix}")
        return record

    def get(self, kind: str, config: Mapping[str, Any], runtime: Any = _NOW) -> Any | None:
        """The stored result, or ``None`` when this config has not finished yet."""
        rt = self.runtime() if runtime is _NOW else runtime
        path = self.path(kind, config, rt)
        if not path.exists():
            return None
        record = self.read_record(path)
        if record.get("config") != _canonical(config) or record.get("runtime") != rt:
            raise CacheError(path, "stored config differs from the requested one (hash clash)")
        return record["result"]

    def put(self, kind: str, config: Mapping[str, Any], result: Any, runtime: Any = _NOW,
            **meta: Any) -> Path:
        rt = self.runtime() if runtime is _NOW else runtime
        path = self.path(kind, config, rt)
        record = {
            "schema": SCHEMA,
            "kind": kind,
            "config": _canonical(config),
            "result": result,
            "meta": {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta},
        }
        if rt is not None:
            record["runtime"] = rt
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True))
        return path

    def lock_path(self, kind: str, config: Mapping[str, Any], runtime: Any = _NOW) -> Path:
        """The claim file of ``config``: ``<hash>.lock`` beside its result."""
        return self.path(kind, config, runtime).with_suffix(".lock")

    @contextlib.contextmanager
    def claim(self, kind: str, config: Mapping[str, Any], stale_after: float | None = None,
              runtime: Any = _NOW) -> Iterator[bool]:
        """Exclusive claim on a config: yields True if this process owns it.

        Another live process holding it makes this yield False (skip it or wait: its result
        will appear); a claim this process already holds is granted again (nested). A dead
        holder's claim is broken at once (see the module docstring); ``stale_after`` is
        accepted for older callers and not needed any more.
        """
        lock = self.lock_path(kind, config, runtime)
        key = str(lock.absolute())
        if _HELD.get(key, (-1, -1))[0] == os.getpid():  # nested (cached() inside claim())
            yield True
            return
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = _try_claim(lock)
        if fd is not None:
            _HELD[key] = (os.getpid(), fd)
        try:
            yield fd is not None
        finally:
            if fd is not None:
                del _HELD[key]
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                os.close(fd)

    def cached(self, kind: str, config: Mapping[str, Any], compute: Callable[[], Any],
               **meta: Any) -> Any:
        """Return the stored result for ``config``, computing and storing it if absent.

        Exactly one process computes a config: while another live process holds its claim
        this one waits for the result (printing what it waits for, see :meth:`wait_for`).
        """
        return self.compute_once(kind, config, compute, meta=meta)

    def compute_once(self, kind: str, config: Mapping[str, Any], compute: Callable[[], Any],
                     *, wait_s: float = 6 * 3600, poll_s: float = 1.0,
                     meta: Mapping[str, Any] | None = None) -> Any:
        """:meth:`cached` with the waiting limits: wait at most ``wait_s`` seconds for another
        process's result (then :class:`TimeoutError` naming the holder), polling every
        ``poll_s`` seconds."""
        rt = self.runtime()  # once: compute() may change the thread count meanwhile
        path = self.path(kind, config, rt)
        deadline = time.monotonic() + wait_s
        said = 0.0
        while True:
            hit = self.get(kind, config, rt)
            if hit is not None:
                return hit
            with self.claim(kind, config, runtime=rt) as owned:
                if owned:
                    hit = self.get(kind, config, rt)
                    if hit is not None:
                        return hit
                    t0 = time.perf_counter()
                    result = compute()
                    self.put(kind, config, result, rt,
                             seconds=round(time.perf_counter() - t0, 3), **dict(meta or {}))
                    return result
            info = read_claim(path.with_suffix(".lock"))
            holder = info.describe() if info else "another process"
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: claimed by {holder}; its result did not appear "
                                   f"within {wait_s:.0f} s")
            if time.monotonic() - said > 300 or not said:
                print(f"waiting for {path} ({kind}), being computed by {holder}",
                      file=sys.stderr, flush=True)
                said = time.monotonic()
            time.sleep(poll_s)

    def entries(self, kind: str) -> list[dict]:
        """Every finished record of ``kind`` (config, result, meta)."""
        folder = self.root / kind
        if not folder.is_dir():
            return []
        return [self.read_record(p) for p in sorted(folder.glob("*.json"))]
