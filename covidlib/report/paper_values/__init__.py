"""The papers' published numbers, kept as data (one YAML per paper) and never typed into prose.

Schema of ``<paper>.yaml`` (paper in p1..p4)::

    paper: P2
    title: ...
    artifacts:
      P2-T2:                         # artifact id used by the scorecard
        title: COVID-19-A segmentation
        kind: table | figure | headline
        source: "P2 Table 2"         # where in the paper
        dataset: COVID-19-A          # the paper's own name
        ...                          # columns/rows, points or values, as the artifact needs
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

_HERE = Path(__file__).resolve().parent
PAPERS = ("p1", "p2", "p3", "p4")
_KINDS = {"table", "figure", "headline"}


class PaperValuesError(ValueError):
    """A paper-values YAML is malformed; the message names the file and key."""


@cache
def load(paper: str) -> dict[str, dict[str, Any]]:
    """Artifacts of ``paper`` ("P2" or "p2"), keyed by artifact id (e.g. ``"P2-T2"``)."""
    key = paper.lower()
    if key not in PAPERS:
        raise PaperValuesError(f"paper {paper!r} is not one of {PAPERS}")
    path = _HERE / f"{key}.yaml"
    if not path.exists():
        raise PaperValuesError(f"{path}: no paper values recorded for {paper}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PaperValuesError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("artifacts"), dict):
        raise PaperValuesError(f"{path}: expected a mapping with an 'artifacts' mapping")
    for aid, art in doc["artifacts"].items():
        where = f"{path}: artifacts.{aid}"
        if not str(aid).upper().startswith(key.upper() + "-"):
            raise PaperValuesError(f"{where}: id must start with '{key.upper()}-'")
        if not isinstance(art, dict):
            raise PaperValuesError(f"{where}: expected a mapping")
        for field in ("title", "kind", "source"):
            if not isinstance(art.get(field), str):
                raise PaperValuesError(f"{where}.{field}: missing or not a string")
        if art["kind"] not in _KINDS:
            raise PaperValuesError(f"{where}.kind: {art['kind']!r} is not one of {sorted(_KINDS)}")
    return doc["artifacts"]


def artifact(artifact_id: str) -> dict[str, Any]:
    """One artifact by id, e.g. ``artifact("P2-T2")``."""
    paper = artifact_id.split("-", 1)[0]
    arts = load(paper)
    if artifact_id not in arts:
        raise KeyError(f"{artifact_id}: not in {paper.lower()}.yaml (known: {sorted(arts)})")
    return arts[artifact_id]


def available() -> list[str]:
    """Papers that have a values file."""
    return [p for p in PAPERS if (_HERE / f"{p}.yaml").exists()]
