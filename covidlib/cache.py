"""Results cached on disk by a hash of their configuration.

Every experiment in the book is a pure function of a JSON-able config (dataset, split,
loss, profile, seed, ...). :class:`ResultCache` stores its result as
``<results_dir>/<kind>/<hash>.json`` next to the config that produced it, so re-running a
notebook reuses finished runs, and workers sharing a results folder split a sweep between
them (a config being computed is claimed with an exclusive lock file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

SCHEMA = 1


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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class ResultCache:
    """A folder of finished results keyed by ``(kind, config_hash(config))``."""

    def __init__(self, results_dir: str | Path):
        self.root = Path(results_dir)

    def path(self, kind: str, config: Mapping[str, Any]) -> Path:
        if not kind or "/" in kind or kind.startswith("."):
            raise ValueError(f"result kind {kind!r} must be a plain folder name")
        return self.root / kind / f"{config_hash(config)}.json"

    def get(self, kind: str, config: Mapping[str, Any]) -> Any | None:
        """The stored result, or ``None`` when this config has not finished yet."""
        path = self.path(kind, config)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}: corrupt result file ({exc}); delete it to recompute") from exc
        if record.get("config") != _canonical(config):
            raise ValueError(f"{path}: stored config differs from the requested one (hash clash)")
        return record["result"]

    def put(self, kind: str, config: Mapping[str, Any], result: Any, **meta: Any) -> Path:
        path = self.path(kind, config)
        record = {
            "schema": SCHEMA,
            "kind": kind,
            "config": _canonical(config),
            "result": result,
            "meta": {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta},
        }
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True))
        return path

    @contextlib.contextmanager
    def claim(self, kind: str, config: Mapping[str, Any], stale_after: float = 6 * 3600
              ) -> Iterator[bool]:
        """Exclusive claim on a config: yields True if this process owns it.

        Another worker holding a fresh claim makes this yield False (skip it; its result
        will appear). Claims older than ``stale_after`` seconds (a dead worker) are taken over.
        """
        lock = self.path(kind, config).with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        owned = False
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    age = time.time() - lock.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age > stale_after:
                    with contextlib.suppress(FileNotFoundError):
                        lock.unlink()
                    continue
                break
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{socket.gethostname()} pid={os.getpid()}\n")
            owned = True
            break
        try:
            yield owned
        finally:
            if owned:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()

    def cached(self, kind: str, config: Mapping[str, Any], compute: Callable[[], Any],
               **meta: Any) -> Any:
        """Return the stored result for ``config``, computing and storing it if absent."""
        hit = self.get(kind, config)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        result = compute()
        self.put(kind, config, result, seconds=round(time.perf_counter() - t0, 3), **meta)
        return result

    def entries(self, kind: str) -> list[dict]:
        """Every finished record of ``kind`` (config, result, meta)."""
        folder = self.root / kind
        if not folder.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
