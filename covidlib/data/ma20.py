"""Ma et al.'s 20 volumes across the datasets that hold them (ma-20, ma20-slices, covid-semiseg).

COVID-SemiSeg's 1600 unlabelled "Pseudo-label" slices (the noisy teacher's pool of P4,
manifest ``covid-semiseg``, group ``pseudo-label``) come from the same 20 volumes as
``ma20-slices``; their file names carry the volume: ``Data-1_coronacases_org_00K_<z>`` for
the 10 Coronacases volumes. Volume K of ``ma20-slices`` very likely is
``coronacases_org_00K`` (the sources list them in that order; DERIVED, not verified slice by
slice). A volume in a test fold must keep its pool slices out of training, or the test set
leaks into the unlabelled pool (:func:`pool_cases_outside`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["pool_cases_outside", "semiseg_pool_volume"]

_CORONACASES = re.compile(r"Data-1_coronacases_org_(\d{3})_(\d+)")


def semiseg_pool_volume(case_id: str) -> str | None:
    """The ``ma20-slices`` / ``ma-20`` volume id of a COVID-SemiSeg pseudo-label case id.

    ``"Data-1_coronacases_org_003_17"`` -> ``"coronacases_003"``; ``None`` for the 10
    Radiopaedia volumes (``Data-1_radiopaedia_org_...``), which ma20-slices does not hold.
    """
    m = _CORONACASES.fullmatch(str(case_id))
    return f"coronacases_{m.group(1)}" if m else None


def pool_cases_outside(pool_ids: Iterable[str], volumes: Iterable[str]) -> list[str]:
    """The pool case ids whose volume is NOT in ``volumes`` (e.g. a fold's test volumes).

    Radiopaedia pool slices (no ma20-slices volume) are kept.
    """
    held_out = {str(v) for v in volumes}
    return [c for c in pool_ids if semiseg_pool_volume(c) not in held_out]
