"""Numbers the Performance and GPU pages' prose cites, read from the code that sets them.

:func:`performance_values`: the full benchmark suite's sizes (:data:`covidlib.bench.settings.FULL`)
and the labelling widget's responsiveness goals (:mod:`covidlib.widgets.timing`).
:func:`gpu_memory_values`: the projected training memory per profile (a
:func:`covidlib.report.projection.projection_table`) against :data:`ASSUMED_GPU_MEMORY_GB`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

__all__ = ["ASSUMED_GPU_MEMORY_GB", "gpu_memory_values", "number_list", "performance_values"]

ASSUMED_GPU_MEMORY_GB = 80.0
"""Memory of the one GPU the projections assume (an H100-class card, as
:data:`covidlib.report.projection.ASSUMED_GPU_TFLOPS`), in GB (10^9 bytes). An assumption."""


def number_list(values: Sequence[Any]) -> str:
    """``[100, 400, 1600]`` -> ``"100, 400 and 1600"``; one value alone, two with "and"."""
    words = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    if not words:
        raise ValueError("number_list: no values to list")
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def performance_values() -> dict[str, str]:
    """Glue values (name -> text) of the Performance page: the MC-dropout section's region
    count, the training section's slice and volume sizes, the AL-scaling pool sizes (all of
    the full suite, ``make bench``), the memory sampling interval (the default of
    :class:`covidlib.bench.measure.PeakMemory`) and the widget's click and cycle goals."""
    from covidlib.bench.measure import PeakMemory
    from covidlib.bench.settings import FULL
    from covidlib.widgets.timing import CLICK_GOAL_MS, CYCLE_GOAL_S

    size, vol = FULL.train.image_size, FULL.train.volume_size
    interval_s = inspect.signature(PeakMemory).parameters["interval_s"].default
    return {"perf_mc_regions": str(FULL.mc.n_regions),
            "perf_train_image_size": f"{size} x {size}",
            "perf_train_volume_size": f"{vol}³",
            "perf_al_pools": number_list(FULL.al_scaling.pools),
            "perf_memory_interval": f"{1000 * interval_s:g} ms",
            "perf_click_goal": f"{CLICK_GOAL_MS:g} ms",
            "perf_cycle_goal": f"{CYCLE_GOAL_S:g} s"}


def gpu_memory_values(table: Any, gpu_memory_gb: float = ASSUMED_GPU_MEMORY_GB
                      ) -> dict[str, str]:
    """Glue values of the GPU page from a projection table (index ``"<paper> <profile>"``,
    column ``"memory GiB"``): the largest memory per step of the ``gpu`` and of the ``paper``
    profiles, the assumed GPU's memory and whether every step fits in it."""
    if "memory GiB" not in getattr(table, "columns", ()):
        raise KeyError("gpu_memory_values: the table has no 'memory GiB' column "
                       "(expected a projection.projection_table frame)")
    peak: dict[str, float] = {}
    for step, gib in zip(table.index, table["memory GiB"], strict=True):
        profile = str(step).rsplit(" ", 1)[-1]
        peak[profile] = max(peak.get(profile, 0.0), float(gib))
    missing = [p for p in ("gpu", "paper") if p not in peak]
    if missing:
        raise KeyError(f"gpu_memory_values: no step of profile(s) {missing} in the table "
                       f"(steps: {list(table.index)})")
    fits = all(g * 2**30 <= gpu_memory_gb * 1e9 for g in peak.values())
    return {"gpu_memory_gb": f"{gpu_memory_gb:g} GB",
            "gpu_peak_gpu_gib": f"{peak['gpu']:.1f} GiB",
            "gpu_peak_paper_gib": f"{peak['paper']:.1f} GiB",
            "gpu_memory_fit": "every step fits" if fits else "not every step fits"}
