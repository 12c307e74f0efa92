"""Records of a labelling session: the region asked about, what the annotator sees, a cycle.

Used by :class:`covidlib.widgets.session.LabelSession` and its widget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from covidlib.widgets.annotations import Annotation

Box = tuple[int, int, int, int]
Ref = tuple[str, int]

__all__ = ["REGION_MODES", "STRATEGIES", "Current", "CycleResult", "Query"]

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
        out = asdict(self)
        out.update({f"test_{k}": v for k, v in out.pop("scores").items()})
        return out
