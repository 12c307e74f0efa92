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

Two kinds of training checkpoints are written with it:

* :func:`covidlib.engine.fit` (epochs): ``<dir>/checkpoint.pt`` (the one before it kept as
  ``checkpoint.prev.pt``) holds ``format``, ``config`` and ``config_hash`` (see
  :func:`covidlib.engine_steps.run_config`), ``epoch`` (epochs completed), ``model``,
  ``optimizer``, ``history``, ``best_epoch``, ``best_score``, ``best_file`` (name of
  ``best-epochNNNN.pt`` in the same folder, holding ``{"epoch", "score", "model"}``),
  ``rng`` (torch, CUDA, NumPy and Python states), ``loss_fn`` (its ``state_dict()`` when it
  has one) and ``torch_version``; :func:`load_checkpoint` and :func:`resume_fit` read them.
* :func:`covidlib.engine_steps.train_steps` (steps): one file holding ``format``, ``step``
  (steps completed), ``model``, ``optimizer``, ``history`` and ``rng``
  (:func:`step_checkpoints`).
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
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from covidlib.cache import atomic_write_bytes, pid_alive
from covidlib.runtime import _restore_rng, _rng_state

__all__ = [
    "CHECKPOINT_NAME",
    "MAGIC",
    "PREVIOUS_NAME",
    "CheckpointError",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "config_diff",
    "load",
    "load_checkpoint",
    "move_aside",
    "read_header",
    "remove_dead_temps",
    "resume_fit",
    "save",
    "step_checkpoints",
]

MAGIC = b"COVIDLIB-CHECKPOINT 1\n"
_HEADER_MAX = 4096
CHECKPOINT_NAME = "checkpoint.pt"  # fit's newest checkpoint in its folder
PREVIOUS_NAME = "checkpoint.prev.pt"  # the checkpoint before the newest (the fallback)
CHECKPOINT_FORMAT = "covidlib.engine.checkpoint/1"
STEP_FORMAT = "covidlib.engine.steps/1"
_BEST_PREFIX = "best-epoch"


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


# --------------------------------------------------------------------------------------------
# Checkpoints of covidlib.engine.fit (epochs)
# --------------------------------------------------------------------------------------------


def load_checkpoint(path: str | Path, config_hash: str | None = None,
                    config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`covidlib.engine.fit` (:func:`load`:
    length, sha256 and, when ``config_hash`` is given, the configuration that wrote it)."""
    path = Path(path)
    try:
        ck = load(path, config_digest=config_hash, config=config)
    except CheckpointMismatchError as exc:
        raise CheckpointMismatchError(path, f"{exc.reason}; use another checkpoint_dir or "
                                      "pass overwrite=True to discard it") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CorruptCheckpointError(path, f"not a covidlib.engine checkpoint "
                                     f"({CHECKPOINT_FORMAT})")
    if config_hash is not None and ck.get("config_hash") != config_hash:
        what = config_diff(ck.get("config", {}), config or {})
        raise CheckpointMismatchError(path, f"written by a different configuration ({what}); "
                                      "use another checkpoint_dir or pass overwrite=True to "
                                      "discard it")
    return ck


def _load_best(ck_dir: Path, ck: Mapping[str, Any], path: Path, cfg_hash: str
               ) -> dict[str, torch.Tensor] | None:
    """The verified best weights named by checkpoint ``ck`` (read from ``path``)."""
    if ck["best_file"] is None:
        return None
    bpath = ck_dir / ck["best_file"]
    if not bpath.exists():
        raise CorruptCheckpointError(path, f"the best weights it names ({bpath.name}) are "
                                     "missing")
    best = load(bpath, config_digest=cfg_hash)
    if not isinstance(best, dict) or best.get("epoch") != ck["best_epoch"]:
        got = best.get("epoch") if isinstance(best, dict) else None
        raise CorruptCheckpointError(bpath, f"holds epoch {got}, {path.name} expects "
                                     f"{ck['best_epoch']}")
    return best["model"]


def resume_fit(ck_dir: Path, cfg: Mapping[str, Any], cfg_hash: str, stacklevel: int = 3
               ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None] | None:
    """The newest good checkpoint of :func:`covidlib.engine.fit` in ``ck_dir``
    (``checkpoint.pt``, else the one before it) with its best weights. A corrupt file is
    moved aside (kept) and the run restarts from the last good checkpoint, saying so."""
    notes: list[str] = []
    for path in (ck_dir / CHECKPOINT_NAME, ck_dir / PREVIOUS_NAME):
        if not path.exists():
            continue
        try:
            ck = load_checkpoint(path, cfg_hash, cfg)
            best = _load_best(ck_dir, ck, path, cfg_hash)
        except CorruptCheckpointError as exc:
            moved = [move_aside(p).name for p in dict.fromkeys((exc.path, path))
                     if p.exists()]  # a checkpoint naming bad best weights is unusable too
            notes.append(f"{exc}" + (f" (moved to {', '.join(moved)})" if moved else ""))
            continue
        if notes:
            warnings.warn("; ".join(notes) + f"; resuming from {path} after epoch "
                          f"{ck['epoch']}", stacklevel=stacklevel)
        return ck, best
    if notes:
        warnings.warn("; ".join(notes) + "; no good checkpoint is left: training starts "
                      "again from epoch 0", stacklevel=stacklevel)
    return None


def _best_name(epoch: int) -> str:
    return f"{_BEST_PREFIX}{epoch:04d}.pt"


def _remove_stale_best(directory: Path, keep: str | None, *also: str | None) -> None:
    for f in directory.glob(f"{_BEST_PREFIX}*.pt"):
        if f.name not in (keep, *also):
            f.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Checkpoints of covidlib.engine_steps.train_steps (steps)
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def step_checkpoints(path: str | Path | None, every: int, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, history: dict[str, Any], *,
                     config_digest: str | None = None
                     ) -> Iterator[tuple[int, Callable[[int], None]]]:
    """Resume a step-driven run from ``path`` when it exists (model, optimizer, ``history``
    updated in place, random generators); yields ``(start, save)`` where ``save(step)``
    writes the checkpoint after every ``every``-th step (``every=0``: never). The file is
    deleted when the run ends without an error. A damaged file is moved aside with a
    warning and training restarts from step 0; one of another configuration
    (``config_digest``) raises :class:`CheckpointMismatchError`."""
    path = Path(path) if path is not None else None
    start = 0
    if path is not None and every and path.exists():
        try:
            ck = load(path, config_digest=config_digest)
        except CorruptCheckpointError as exc:
            moved = move_aside(path)
            warnings.warn(f"{exc}; moved aside to {moved.name}, training restarts from step 0",
                          stacklevel=3)
        else:
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            history.update(ck["history"])
            start = int(ck["step"])
            if ck.get("rng") is not None:
                _restore_rng(ck["rng"])

    def write(step: int) -> None:
        if path is not None and every and step % every == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            save({"format": STEP_FORMAT, "model": model.state_dict(),
                  "optimizer": optimizer.state_dict(), "history": history, "step": step,
                  "rng": _rng_state()}, path, config_digest=config_digest)

    yield start, write
    if path is not None and path.exists():
        path.unlink()
