"""A labelling session driven headless by P1's simulated annotator (:class:`MaskOracle`).

:func:`simulate` answers the queue of a :class:`covidlib.widgets.session.LabelSession` so
experiments and tests run without a person.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from covidlib.data.errors import DataError
from covidlib.data.oracle import RegionLabel, region_label
from covidlib.data.types import Case
from covidlib.widgets.session_types import Box, CycleResult

if TYPE_CHECKING:
    from covidlib.widgets.session import LabelSession

__all__ = ["MaskOracle", "simulate"]


class MaskOracle:
    """P1's simulated annotator on the dataset's masks (:func:`~covidlib.data.oracle.region_label`):
    "background" when the region holds no infection, else one random infection pixel."""

    def __init__(self, cases: Sequence[Case] | Mapping[str, Case],
                 infection_labels: Iterable[int] | None = None, seed: int = 0):
        self.cases = dict(cases) if isinstance(cases, Mapping) else {c.case_id: c for c in cases}
        self.infection_labels = None if infection_labels is None else list(infection_labels)
        self.rng = np.random.default_rng(seed)

    def __call__(self, case_id: str, z: int, box: Box) -> RegionLabel:
        case = self.cases.get(case_id)
        if case is None or case.mask is None:
            raise DataError(case_id, "the oracle needs the case's infection mask")
        labels = self.infection_labels or case.meta.get("infection_labels")
        return region_label(case.mask[z], box, self.rng, labels)


def simulate(session: LabelSession, oracle: Callable[[str, int, Box], RegionLabel],
             cycles: int = 3, initial_images: int = 0, seed: int = 0,
             progress: bool = True,
             on_cycle: Callable[[CycleResult], None] | None = None) -> list[CycleResult]:
    """Drive ``session`` headless with ``oracle`` as the annotator.

    First, every region of ``initial_images`` slices drawn at random (``seed``) from the
    pool is answered (P1 Sec. 3: "5 CT images were randomly sampled ... and all their regions
    were labeled") and the model trains; then each of ``cycles`` cycles answers the
    ``regions_per_cycle`` proposed regions and retrains. Returns every cycle's result;
    ``on_cycle(result)`` is called after each cycle (e.g. to record the model's prediction).
    """
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
        raise ValueError(f"simulate: cycles={cycles!r} must be a positive integer")
    if isinstance(initial_images, bool) or not isinstance(initial_images, int) \
            or not 0 <= initial_images <= len(session.refs):
        raise ValueError(f"simulate: initial_images={initial_images!r} must be an integer in "
                         f"0..{len(session.refs)}")
    out = []
    if initial_images:
        rng = np.random.default_rng(seed)
        answered = {(a.ref, a.box) for a in session.annotations}
        for i in sorted(rng.choice(len(session.refs), initial_images, replace=False)):
            ref = session.refs[int(i)]
            for box in session.boxes(ref):
                if (ref, box) not in answered:
                    session.label_region(ref, box, oracle(ref[0], ref[1], box))
        out.append(session.train_cycle())
        if on_cycle is not None:
            on_cycle(out[-1])
    for _ in tqdm(range(cycles), desc="AL cycles", unit="cycle", disable=not progress):
        for _ in range(session.regions_per_cycle):
            q = session.current()
            if q is None:
                break
            answer = oracle(q.case_id, q.z, q.box)
            if answer.kind == "background":
                session.background()
            elif answer.kind == "point" and answer.point is not None:
                session.click(answer.point.y, answer.point.x)
            else:
                raise ValueError(f"simulate: the oracle answered {answer.kind!r}; the widget "
                                 "takes points and background tags only")
        out.append(session.train_cycle())
        if on_cycle is not None:
            on_cycle(out[-1])
    return out
