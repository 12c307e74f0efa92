"""A labelling session driven headless by P1's simulated annotator (:class:`MaskOracle`).

:class:`MaskOracle` answers a region from the dataset's masks; it is the ground-truth oracle
of the active-learning core (:meth:`MaskOracle.answers`, :data:`covidlib.active_loop.Oracle`).
:func:`simulate` lets it answer the questions of a
:class:`covidlib.widgets.session.LabelSession` (the loop in step mode) so experiments and
tests run without a person.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from covidlib.active_loop import Oracle, Query
from covidlib.data.errors import DataError
from covidlib.data.oracle import RegionLabel, region_label
from covidlib.data.types import Case
from covidlib.widgets.session_types import Box, CycleResult

if TYPE_CHECKING:
    from covidlib.widgets.session import LabelSession

__all__ = ["MaskOracle", "loop_oracle", "simulate"]


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

    def answers(self, queries: Sequence[Query], cycle: int) -> list[RegionLabel]:
        """The oracle of the active-learning core (:data:`covidlib.active_loop.Oracle`):
        the answers to queries on units ``((case_id, z), box)``, in their order (one draw
        of the generator per infected region, whatever the cycle)."""
        return [self(str(q.unit[0][0]), int(q.unit[0][1]), tuple(q.unit[1]))
                for q in queries]


def loop_oracle(oracle: Callable[[str, int, Box], RegionLabel] | MaskOracle) -> Oracle:
    """``oracle`` as the core's :data:`~covidlib.active_loop.Oracle` (a :class:`MaskOracle`'s
    :meth:`~MaskOracle.answers`, or any per-region annotator ``(case_id, z, box) -> answer``
    asked query by query)."""
    if isinstance(oracle, MaskOracle):
        return oracle.answers
    return lambda queries, _cycle: [oracle(str(q.unit[0][0]), int(q.unit[0][1]),
                                           tuple(q.unit[1])) for q in queries]


def simulate(session: LabelSession, oracle: Callable[[str, int, Box], RegionLabel],
             cycles: int = 3, initial_images: int = 0, seed: int = 0,
             progress: bool = True,
             on_cycle: Callable[[CycleResult], None] | None = None) -> list[CycleResult]:
    """Drive ``session``'s loop in step mode with ``oracle`` (P1's simulated annotator, as
    the core's oracle: :func:`loop_oracle`) answering through the session's API.

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
    ask = loop_oracle(oracle)
    out = []
    if initial_images:
        rng = np.random.default_rng(seed)
        answered = {(a.ref, a.box) for a in session.annotations}
        for i in sorted(rng.choice(len(session.refs), initial_images, replace=False)):
            ref = session.refs[int(i)]
            for box in session.boxes(ref):
                if (ref, box) not in answered:
                    answer, = ask([Query((ref, box))], session.cycle)
                    session.label_region(ref, box, answer)
        out.append(session.train_cycle())
        if on_cycle is not None:
            on_cycle(out[-1])
    for _ in tqdm(range(cycles), desc="AL cycles", unit="cycle", disable=not progress):
        for _ in range(session.regions_per_cycle):
            q = session.current()
            if q is None:
                break
            answer, = ask([Query(((q.case_id, q.z), q.box), q.score)], session.cycle)
            session.answer(answer)
        out.append(session.train_cycle())
        if on_cycle is not None:
            on_cycle(out[-1])
    return out
