"""The labelling widget's annotations file: JSON lines, rewritten atomically on every label.

Format (``covidlib.annotations/1``), one JSON object per line::

    {"format": "covidlib.annotations/1", "dataset": "synthetic", "n_regions": 16, ...}
    {"kind": "point", "case_id": "synth_003", "z": 21, "box": [40, 80, 80, 120],
     "y": 57, "x": 101, "label": 1, "time": "2026-01-02T10:11:12"}
    {"kind": "background", "case_id": "synth_003", "z": 22, "box": [0, 40, 0, 40],
     "label": 0, "time": "..."}

The first line is the header: the settings the labels depend on (the region grid ``K`` and
the dataset). Each later line answers one region the way P1 Sec. 3 does: a ``point`` (one
click on infection, image pixel coordinates of the original slice, label 1) or a
``background`` tag (the whole region is background, label 0). Coordinates never depend on
the display: the widget converts canvas pixels to image pixels before anything is stored.

An undo appends ``{"kind": "undo", "id": "<label id>", "time": "..."}``; nothing is ever
rewritten.

Durability and concurrency: the file is an append-only log. Every change takes an exclusive
``fcntl.flock`` on the file, first reads what other sessions appended since its last look
(so two notebooks labelling one file merge their labels instead of overwriting each other),
then appends one whole line and ``fsync``s it before returning. A label's id
(:attr:`Annotation.id`) is a digest of its content, so appending the same label twice, or a
duplicated line in the file, counts once. A dead kernel can at worst leave its last line cut
short: opening the file reports it (a warning naming the file and line) and keeps every line
before it; :meth:`AnnotationStore.repair` (or the next append) moves the cut-short bytes to
``<file>.bad-<time>-<pid>``, never deleting them. Temporary files of older versions (which
rewrote the whole file) are removed on open. The file is created with the user's umask
(0644 by default).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from covidlib.data.errors import DataError

FORMAT = "covidlib.annotations/1"
Kind = Literal["point", "background"]

__all__ = ["FORMAT", "Annotation", "AnnotationStore"]


@dataclass(frozen=True)
class Annotation:
    """One answered region: a ``point`` at image pixel ``(y, x)`` or a ``background`` tag."""

    kind: Kind
    case_id: str
    z: int
    box: tuple[int, int, int, int]
    y: int | None = None
    x: int | None = None
    label: int = 1
    time: str = ""

    @property
    def id(self) -> str:
        """The label's id: sha256 of its canonical JSON, 16 hex digits (equal labels, equal
        ids: a duplicate is recognised and ignored)."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def ref(self) -> tuple[str, int]:
        """The slice ``(case_id, z)``."""
        return self.case_id, self.z

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "case_id": self.case_id, "z": self.z,
                               "box": list(self.box)}
        if self.kind == "point":
            out.update(y=self.y, x=self.x)
        out.update(label=self.label, time=self.time)
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Annotation:
        """Parse and check one line; ``where`` names the file and line in errors."""
        if not isinstance(obj, dict):
            raise DataError(where, f"expected a JSON object, got {type(obj).__name__}")
        kind = obj.get("kind")
        if kind not in ("point", "background"):
            raise DataError(where, f"kind {kind!r} is not 'point' or 'background'")
        if not isinstance(obj.get("case_id"), str):
            raise DataError(where, "case_id missing or not a string")
        ints = ["z", "label"] + (["y", "x"] if kind == "point" else [])
        for key in ints:
            v = obj.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise DataError(where, f"{key}={v!r} is not a non-negative integer")
        box = obj.get("box")
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)):
            raise DataError(where, f"box={box!r} is not four integers [y0, y1, x0, x1]")
        y0, y1, x0, x1 = box
        if not (0 <= y0 < y1 and 0 <= x0 < x1):
            raise DataError(where, f"box={box!r} is empty or negative")
        if kind == "point":
            if not (y0 <= obj["y"] < y1 and x0 <= obj["x"] < x1):
                raise DataError(where, f"point ({obj['y']}, {obj['x']}) is outside its box {box}")
            if obj["label"] == 0:
                raise DataError(where, "a point on infection must have a label > 0")
        elif obj["label"] != 0:
            raise DataError(where, f"a background tag must have label 0, not {obj['label']}")
        return cls(kind, obj["case_id"], obj["z"], (y0, y1, x0, x1),
                   obj.get("y"), obj.get("x"), obj["label"], str(obj.get("time", "")))


def now() -> str:
    """Local time to the second, ISO 8601 (the ``time`` of a label)."""
    return _dt.datetime.now().replace(microsecond=0).isoformat()


class AnnotationStore:
    """The labels in the annotations log ``path``, as this session last read them.

    ``header`` holds the settings the labels depend on (e.g. ``dataset``, ``n_regions``).
    Opening an existing file restores its labels; a file written with other settings, or one
    that is not an annotations file, raises :class:`~covidlib.data.errors.DataError` naming
    the file and the reason (it is never overwritten). Several stores (processes, notebooks)
    may append to one file at once: each append first merges what the others wrote.
    ``problem`` describes a cut-short last line (``None`` when the file is whole).
    """

    def __init__(self, path: str | Path, header: Mapping[str, Any]):
        self.path = Path(path)
        self._wanted = {"format": FORMAT, **dict(header)}
        self.header = dict(self._wanted)
        self._live: dict[str, Annotation] = {}
        self._own: list[str] = []  # ids this store appended, newest last (what undo removes)
        self._offset = 0  # bytes of the file consumed
        self._lines = 0  # lines consumed
        self._file_id: tuple[int, int] | None = None
        self._needs_newline = False
        self.problem: str | None = None
        self._remove_stale_temps()
        with self._locked() as fd:
            self._sync(fd)
        if self.problem:
            warnings.warn(self.problem, stacklevel=2)

    # ---------------------------------------------------------------------- file access

    def _remove_stale_temps(self) -> None:
        """Temporary files of the whole-file rewrites of older versions (killed writers)."""
        prefix = f".{self.path.name}."
        with contextlib.suppress(FileNotFoundError):
            for p in self.path.parent.iterdir():
                if p.name.startswith(prefix) and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """The file, opened for appending and locked exclusively (released on close)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)  # umask applies
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    def _sync(self, fd: int) -> None:
        """Read what was appended since the last look (the whole file if it was replaced)."""
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._file_id or st.st_size < self._offset:
            self._file_id = (st.st_dev, st.st_ino)
            self._live, self._offset, self._lines = {}, 0, 0
            self.header = dict(self._wanted)
            self._needs_newline = False
        if st.st_size == 0:
            self._write(fd, self.header)
            st = os.fstat(fd)
        data = os.pread(fd, st.st_size - self._offset, self._offset)
        end = data.rfind(b"\n") + 1
        for raw in data[:end].split(b"\n")[:-1]:
            self._consume(raw)
            self._offset += len(raw) + 1
        tail = data[end:]
        self.problem = None
        if not tail.strip():
            return
        try:
            json.loads(tail.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            self.problem = (f"{self.path}: line {self._lines + 1} is cut short ({len(tail)} "
                            "bytes; a process stopped while writing it); the "
                            f"{len(self._live)} labels before it are kept; "
                            "AnnotationStore.repair() moves it aside")
            return
        self._consume(tail)  # a whole last line without its newline (edited by hand)
        self._offset += len(tail)
        self._needs_newline = True

    def _consume(self, raw: bytes) -> None:
        """Apply one line of the log: the header, a label or an undo."""
        self._lines += 1
        where = f"{self.path}: line {self._lines}"
        try:
            obj = json.loads(raw.decode())
        except UnicodeDecodeError as exc:
            raise DataError(where, f"not UTF-8 text ({exc})") from exc
        except json.JSONDecodeError as exc:
            if self._lines > 1 and not raw.strip():
                return
            raise DataError(where, f"not JSON ({exc})") from exc
        if self._lines == 1:
            self._check_header(obj, where)
        elif isinstance(obj, dict) and obj.get("kind") == "undo":
            if not isinstance(obj.get("id"), str):
                raise DataError(where, "an undo line needs the id of the label it removes")
            self._live.pop(obj["id"], None)
        else:
            ann = Annotation.from_json(obj, where)
            self._live.setdefault(ann.id, ann)  # a duplicate line counts once

    def _check_header(self, head: Any, where: str) -> None:
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise DataError(where, f"not a {FORMAT} header")
        for key, value in self._wanted.items():
            if key in head and head[key] != value:
                raise DataError(str(self.path), f"written with {key}={head[key]!r}, this "
                                f"session uses {key}={value!r}; use another annotations file")
        self.header = {**head, **self._wanted}

    def _write(self, fd: int, obj: Mapping[str, Any]) -> None:
        """Append one whole line and fsync it."""
        data = (json.dumps(obj, separators=(", ", ": ")) + "\n").encode()
        if self._needs_newline:
            data = b"\n" + data
            self._offset += 1
            self._needs_newline = False
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)

    def _repair_locked(self, fd: int) -> Path:
        """Move the bytes after the last whole line to ``<file>.bad-<time>-<pid>``."""
        size = os.fstat(fd).st_size
        tail = os.pread(fd, size - self._offset, self._offset)
        stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        for n in range(1000):
            aside = self.path.with_name(f"{self.path.name}.bad-{stamp}-{os.getpid()}"
                                        + (f"-{n}" if n else ""))
            try:
                out = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover
            raise OSError(f"{self.path}: no free name to move its cut-short line to")
        try:
            os.write(out, tail)
            os.fsync(out)
        finally:
            os.close(out)
        os.ftruncate(fd, self._offset)
        os.fsync(fd)
        self.problem = None
        return aside

    def _synced(self, fd: int) -> None:
        """Merge the others' appends; move a cut-short last line aside first (saying so)."""
        self._sync(fd)
        if self.problem:
            problem = self.problem
            aside = self._repair_locked(fd)
            warnings.warn(f"{problem}; moved the cut-short line to {aside}", stacklevel=3)

    # ---------------------------------------------------------------------------- API

    def repair(self) -> Path | None:
        """Move a cut-short last line to ``<file>.bad-<time>-<pid>`` (kept, never deleted)
        and return that path; ``None`` when the file is whole."""
        with self._locked() as fd:
            self._sync(fd)
            return self._repair_locked(fd) if self.problem else None

    def refresh(self) -> None:
        """Read the labels other sessions appended since the last look."""
        with self._locked() as fd:
            self._sync(fd)

    def append(self, ann: Annotation) -> bool:
        """Add one label (written and fsync'd before returning); ``False`` when the same
        label (same :attr:`Annotation.id`) is already in the file, which is left as it is."""
        with self._locked() as fd:
            self._synced(fd)
            if ann.id in self._live:
                return False
            self._write(fd, ann.to_json())
            self._sync(fd)
        self._own.append(ann.id)
        return True

    def pop(self) -> Annotation | None:
        """Undo: remove this session's newest label (else the file's newest) by appending an
        undo line; ``None`` when there is no label."""
        with self._locked() as fd:
            self._synced(fd)
            target = next((i for i in reversed(self._own) if i in self._live), None)
            if target is None and self._live:
                target = next(reversed(self._live))
            if target is None:
                return None
            ann = self._live[target]
            self._write(fd, {"kind": "undo", "id": target, "time": now()})
            self._sync(fd)
        self._own = [i for i in self._own if i != target]
        return ann

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[Annotation]:
        return iter(list(self._live.values()))

    def __getitem__(self, i: int) -> Annotation:
        return list(self._live.values())[i]
