"""Records of a labelling session: the region asked about, what the annotator sees, a cycle.

Used by :class:`covidlib.widgets.session.LabelSession` and its widget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from covidlib.widgets.annotations import Annotation

Box = tuple[int, int, int, int]
Ref = tuple[str, int]
Unit = tuple[Ref, Box]

__all__ = ["REGION_MODES", "STRATEGIES", "Current", "CycleResult", "Query", "Unit"]

REGION_MODES = ("body", "grid")
STRATEGIES = ("entropy", "random")


@dataclass(frozen=True)
class Query:
    """A region the model asks about: slice ``(case_id, z)``, its ``box`` and its score."""

    case_id: str
    z: int
    box: Box
    score: float

    @property
    def ref(self) -> Ref:
        return self.case_id, self.z

    @property
    def unit(self) -> Unit:
        """The labelling unit of the active-learning core: ``((case_id, z), box)``."""
        return self.ref, self.box

    @classmethod
    def from_unit(cls, unit: Unit, score: float | None) -> Query:
        """The query of unit ``((case_id, z), box)`` (a score of None counts as 0)."""
        (case_id, z), box = unit
        return cls(str(case_id), int(z), tuple(int(v) for v in box),  # type: ignore[arg-type]
                   float(score or 0.0))


@dataclass(frozen=True)
class Current:
    """What the annotator sees: the slice (lung window, original pixels), the region asked
    about, the model's uncertainty map (entropy in nats, same pixels) and the slice's labels."""

    case_id: str
    z: int
    box: Box
    score: float
    image: np.ndarray
    uncertainty: np.ndarray
    labels: tuple[Annotation, ...] = ()


@dataclass
class CycleResult:
    """One training cycle: labels used, annotator seconds so far, training time and loss."""

    cycle: int
    labels: int
    points: int
    backgrounds: int
    slices: int
    cost_seconds: float
    train_seconds: float
    train_loss: float
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The cycle as one flat record (scores as ``test_<name>``)."""
        out = asdict(self)
        out.update({f"test_{k}": v for k, v in out.pop("scores").items()})
        return out

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> CycleResult:
        """Inverse of :meth:`to_dict`."""
        names = [f.name for f in fields(cls) if f.name != "scores"]
        scores = {k[5:]: float(v) for k, v in record.items() if k.startswith("test_")}
        return cls(**{k: record[k] for k in names}, scores=scores)
