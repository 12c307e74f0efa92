"""Responsiveness of the labelling widget: click-to-disk latency and training-cycle time.

One measured run of :func:`covidlib.widgets.timing.measure_responsiveness` (the label
chapter's cpu settings, phantom volumes generated in memory) and each figure set beside its
goal (a click is on disk in < 50 ms, a training cycle takes < 10 s on 2 cores). The verdicts
are computed from the figures of this run; nothing here is a correctness check, so a missed
goal does not fail ``make bench``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from covidlib.bench.settings import ResponsiveBench

# (key in the measurement, what it is, unit, which goal: "click" or "cycle")
FIGURES: tuple[tuple[str, str, str, str], ...] = (
    ("click_saved_ms", "click saved to disk, median", "ms", "click"),
    ("click_saved_p95_ms", "click saved to disk, 95th percentile", "ms", "click"),
    ("click_ms", "click to widget redrawn (save included), median", "ms", "click"),
    ("click_p95_ms", "click to widget redrawn (save included), 95th percentile", "ms", "click"),
    ("click_during_training_ms", "click while a cycle trains, median", "ms", "click"),
    ("click_during_training_p95_ms", "click while a cycle trains, 95th percentile", "ms",
     "click"),
    ("cycle_s", "one training cycle (fit + re-scoring the pool), wall time", "s", "cycle"),
)


def verdicts(measured: Mapping[str, Any]) -> dict[str, bool | None]:
    """``{figure: met?}`` for every figure of :data:`FIGURES` (``None``: not measured, e.g. no
    click fell inside the training cycle)."""
    goals = {"click": float(measured["click_goal_ms"]), "cycle": float(measured["cycle_goal_s"])}
    out: dict[str, bool | None] = {}
    for key, _what, _unit, goal in FIGURES:
        value = measured.get(key)
        ok = isinstance(value, int | float) and value == value  # NaN: nothing measured
        out[key] = bool(value < goals[goal]) if ok else None
    return out


def bench_responsiveness(settings: ResponsiveBench, device: torch.device,
                         note: Callable[[str], None]) -> dict[str, Any]:
    """The ``responsiveness`` section: the measurement, the goals and the verdicts. The widget
    trains on CPU whatever ``device`` the suite uses (it is what an annotator's laptop runs)."""
    from covidlib.widgets.timing import measure_responsiveness

    note("responsiveness: clicking and training")
    measured = measure_responsiveness(clicks=settings.clicks, threads=settings.threads,
                                      seed=settings.seed, overrides=settings.overrides or None)
    out = dict(measured)
    out["met"] = verdicts(measured)
    out["settings"] = settings.record()
    out["device"] = "cpu"
    return out
