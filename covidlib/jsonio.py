"""Reading the JSON files covidlib writes (results, timings, provenance) when they are there.

One loader for the "optional file" pattern of the bench reports, the book timings and the
reference run: no file means ``None``; a file that is not valid JSON is an error naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_json_if_present"]


def read_json_if_present(path: str | Path, error: type[Exception] = ValueError,
                         hint: str = "") -> Any | None:
    """The JSON document in the file ``path``, or ``None`` when there is no such file.

    Invalid JSON raises ``error`` (default :class:`ValueError`) with the message
    ``"<path>: not valid JSON (<reason>)<hint>"``, and so does a file holding only ``null``
    (it would read as "no file"); checking the document's shape is the caller's part.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc}){hint}") from exc
    if doc is None:
        raise error(f"{path}: holds JSON null, not a document{hint}")
    return doc
