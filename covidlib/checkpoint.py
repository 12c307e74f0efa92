"""The one checkpointer: atomic writes, verified loads.

A checkpoint file is ``MAGIC``, one JSON header line and the payload (``torch.save`` bytes)::

    COVIDLIB-CHECKPOINT 1
    {"bytes": 1234, "config_digest": "9f2c...", "sha256": "ab12..."}
    <payload>

:func:`save` writes it through a temporary sibling, ``fsync`` and ``os.replace`` (a crash
leaves the old file or the new one, never half a file), with the user's umask. :func:`load`
checks the length and the sha256 of the payload (a truncated file or one flipped bit is
found, not loaded) and the digest of the run configuration that wrote it; every failure is a
:class:`CheckpointError` naming the file and what differs. Callers that can recompute move a
corrupt file aside (:func:`move_aside`, never deleted) and restart from the last good
checkpoint, saying so (see :func:`covidlib.engine.fit`). Files of older versions (a bare
``torch.save``) are still read, unverified.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from covidlib.cache import atomic_write_bytes, pid_alive

__all__ = [
    "MAGIC",
    "CheckpointError",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "config_diff",
    "load",
    "move_aside",
    "read_header",
    "remove_dead_temps",
    "save",
]

MAGIC = b"COVIDLIB-CHECKPOINT 1\n"
_HEADER_MAX = 4096


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; ``path`` names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CorruptCheckpointError(CheckpointError):
    """Truncated, altered or unreadable: the file is not what was written."""


class CheckpointMismatchError(CheckpointError):
    """A whole checkpoint written by a different run configuration."""


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The keys whose values differ, ``key: old -> new`` (``"parameters"`` summarised)."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key == "parameters":
                diffs.append("model parameter names/shapes differ")
            else:
                diffs.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return "; ".join(diffs) or "configuration hash differs"


def save(obj: Any, path: str | Path, *, config_digest: str | None = None,
         keep_previous: str | Path | None = None) -> Path:
    """Write ``obj`` (tensors and plain values) to ``path`` atomically, with the sha256 of
    its bytes and ``config_digest`` (the digest of the configuration that produced it).
    With ``keep_previous`` the file being replaced is renamed to it first (the last good
    checkpoint to fall back on)."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    header = {"bytes": len(payload), "config_digest": config_digest,
              "sha256": hashlib.sha256(payload).hexdigest()}
    head = json.dumps(header, sort_keys=True).encode() + b"\n"
    if keep_previous is not None and path.exists():
        os.replace(path, keep_previous)
    return atomic_write_bytes(path, MAGIC + head + payload)


def _split(path: Path, data: bytes) -> tuple[dict[str, Any], bytes]:
    """Header and payload of a checkpoint's bytes (checked)."""
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + _HEADER_MAX)
    if end < 0:
        raise CorruptCheckpointError(path, "checkpoint header is cut short or missing")
    try:
        header = json.loads(data[len(MAGIC):end].decode())
        size, digest = int(header["bytes"]), str(header["sha256"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptCheckpointError(path, f"checkpoint header is damaged ({exc})") from exc
    payload = data[end + 1:]
    if len(payload) != size:
        raise CorruptCheckpointError(path, f"cut short or extended: the payload has "
                                     f"{len(payload)} bytes, {size} were written")
    found = hashlib.sha256(payload).hexdigest()
    if found != digest:
        raise CorruptCheckpointError(path, f"sha256 of the payload is {found[:16]}..., "
                                     f"{digest[:16]}... was written: the file was altered")
    return header, payload


def read_header(path: str | Path) -> dict[str, Any] | None:
    """The verified header of a checkpoint (``None`` for an older, unverified file)."""
    path = Path(path)
    data = path.read_bytes()
    return _split(path, data)[0] if data.startswith(MAGIC) else None


def load(path: str | Path, *, config_digest: str | None = None,
         config: Mapping[str, Any] | None = None) -> Any:
    """Read and verify a checkpoint written by :func:`save`.

    Raises :class:`CorruptCheckpointError` (missing, truncated, checksum mismatch,
    unreadable) or, when ``config_digest`` is given and differs from the stored one,
    :class:`CheckpointMismatchError` naming what differs (the keys of ``config`` against the
    stored payload's ``"config"`` when both are there).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CorruptCheckpointError(path, "checkpoint file is missing") from exc
    header: dict[str, Any] = {}
    payload = data
    if data.startswith(MAGIC):
        header, payload = _split(path, data)
    try:
        obj = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CorruptCheckpointError(
            path, f"cannot read checkpoint ({type(exc).__name__}: {first})") from exc
    stored = header.get("config_digest")
    if not header and isinstance(obj, Mapping):  # an older version's file
        stored = obj.get("config_hash")
    if config_digest is not None and stored is not None and stored != config_digest:
        old = obj.get("config") if isinstance(obj, Mapping) else None
        what = (config_diff(old, config) if isinstance(old, Mapping) and config is not None
                else f"configuration digest {stored} -> {config_digest}")
        raise CheckpointMismatchError(path, f"written by a different configuration ({what})")
    return obj


def move_aside(path: str | Path) -> Path:
    """Rename a bad checkpoint to ``<name>.corrupt-<time>`` (kept for inspection)."""
    path = Path(path)
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    for n in range(1000):
        aside = path.with_name(f"{path.name}.corrupt-{stamp}" + (f"-{n}" if n else ""))
        if not aside.exists():
            os.replace(path, aside)
            return aside
    raise OSError(f"{path}: no free name to move it aside")  # pragma: no cover


def remove_dead_temps(folder: str | Path, max_age_other_host: float = 86400.0) -> list[Path]:
    """Remove temporary files (``.<name>.<host>.<pid>.tmp``, or ``.<name>.<pid>.tmp`` of older
    versions) left in ``folder`` by processes of this host that no longer run; another
    host's are removed only after ``max_age_other_host`` seconds. Live writers' files stay."""
    host = socket.gethostname()
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        rest, _, pid = p.name[1:-len(".tmp")].rpartition(".")
        if not pid.isdigit():
            continue
        if rest.endswith(f".{host}"):
            dead = not pid_alive(int(pid))
        elif rest.endswith((".pt", ".json", ".jsonl", ".npz")):  # no host: an older version
            dead = not pid_alive(int(pid))
        else:
            try:
                dead = time.time() - p.stat().st_mtime > max_age_other_host
            except FileNotFoundError:
                continue
        if dead:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            removed.append(p)
    return removed
