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

Durability: every change (a new label, an undo) rewrites the whole file through a temporary
sibling, ``fsync`` and ``os.replace`` (:func:`covidlib.cache.atomic_write_text`). A reader
therefore sees either the file before or the file after a change, never half a line, so a
dead kernel or a closed tab loses at most the click being written. The file stays small
(one line per region: thousands of labels are a few hundred kB).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from covidlib.cache import atomic_write_text
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
    """The labels of one session, kept in memory and mirrored to ``path`` after each change.

    ``header`` holds the settings the labels depend on (e.g. ``dataset``, ``n_regions``).
    Opening an existing file restores its labels; a file written with other settings, or one
    that is not an annotations file, raises :class:`~covidlib.data.errors.DataError` naming
    the file and the reason (it is never overwritten).
    """

    def __init__(self, path: str | Path, header: Mapping[str, Any]):
        self.path = Path(path)
        self.header = {"format": FORMAT, **dict(header)}
        self._items: list[Annotation] = []
        if self.path.exists():
            self._items = self._read()
        else:
            self._write()

    def _read(self) -> list[Annotation]:
        lines = self.path.read_text().splitlines()
        if not lines:
            raise DataError(str(self.path), "empty file, expected a header line")
        try:
            head = json.loads(lines[0])
        except json.JSONDecodeError as exc:
            raise DataError(f"{self.path}: line 1", f"not JSON ({exc})") from exc
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise DataError(f"{self.path}: line 1", f"not a {FORMAT} header")
        for key, value in self.header.items():
            if key in head and head[key] != value:
                raise DataError(str(self.path), f"written with {key}={head[key]!r}, this "
                                f"session uses {key}={value!r}; use another annotations file")
        self.header = {**head, **self.header}
        items = []
        for i, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            where = f"{self.path}: line {i}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(where, f"not JSON ({exc})") from exc
            items.append(Annotation.from_json(obj, where))
        return items

    def _write(self) -> None:
        text = "".join(json.dumps(obj, separators=(", ", ": ")) + "\n"
                       for obj in [self.header, *(a.to_json() for a in self._items)])
        atomic_write_text(self.path, text)

    def append(self, ann: Annotation) -> None:
        """Add one label and write the file."""
        self._items.append(ann)
        try:
            self._write()
        except BaseException:
            self._items.pop()
            raise

    def pop(self) -> Annotation | None:
        """Remove the last label (undo) and write the file; ``None`` when there is none."""
        if not self._items:
            return None
        ann = self._items.pop()
        try:
            self._write()
        except BaseException:
            self._items.append(ann)
            raise
        return ann

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Annotation]:
        return iter(list(self._items))

    def __getitem__(self, i: int) -> Annotation:
        return self._items[i]
