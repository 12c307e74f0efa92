"""The labelling widget's responsiveness on the Performance page (``make bench``'s
``responsiveness`` section); see :mod:`covidlib.bench.report`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from covidlib.bench.report_base import NOT_MEASURED, _note

RESPONSIVE_MISSING = ("Widget responsiveness: **not measured yet: run `make bench`** (its "
                      "`responsiveness` section times clicks and a training cycle of the "
                      "labelling widget on this machine).")


def _verdict(ok: bool | None) -> str:
    return {True: "met", False: "NOT met", None: NOT_MEASURED}[ok]


def responsiveness_table(res: Mapping[str, Any] | None) -> pd.DataFrame | Any:
    """The widget's click latencies and cycle time, each beside its goal and a verdict
    (recomputed from the figure); a "not measured yet" note when the section is absent."""
    if res is None or "responsiveness" not in res:
        return _note(RESPONSIVE_MISSING)
    from covidlib.bench.responsive import FIGURES, verdicts

    r = res["responsiveness"]
    met = verdicts(r)
    goal = {"click": f"< {r['click_goal_ms']:g} ms", "cycle": f"< {r['cycle_goal_s']:g} s"}
    rows = []
    for key, what, unit, which in FIGURES:
        value = r.get(key)
        shown = (f"{value:.3g} {unit}" if isinstance(value, int | float) and value == value
                 else NOT_MEASURED)
        rows.append({"what": what, "measured": shown, "goal": goal[which],
                     "verdict": _verdict(met[key])})
    rows.append({"what": "CPU time of the process during that cycle (clicks included)",
                 "measured": f"{r['cycle_cpu_s']:.3g} s", "goal": "",
                 "verdict": "for reading the wall time on a busy machine"})
    return pd.DataFrame(rows).set_index("what")


def responsiveness_markdown(res: Mapping[str, Any] | None) -> str:
    """The widget's responsiveness in plain words about the machine that measured it."""
    if res is None or "responsiveness" not in res:
        return RESPONSIVE_MISSING
    from covidlib.bench.responsive import verdicts

    r, m = res["responsiveness"], res["machine"]
    met = verdicts(r)
    load = m.get("load_average_start")
    busy = (f" The machine was shared while it ran (load average {load[0]:.2f} on "
            f"{m['cores']} cores), so the wall times overstate what a quiet machine takes."
            if load and load[0] > 1.5 else "")
    during = (f"while a training cycle ran in the background, {r['clicks_during_training']} "
              f"clicks took {r['click_during_training_ms']:.3g} ms (median; 95th percentile "
              f"{r['click_during_training_p95_ms']:.3g} ms)" if r["clicks_during_training"]
              else "no click fell inside the training cycle, so the latency during training "
                   "was not measured")
    return (f"On **{m['hostname']}** ({m['cpu']}, {m['cores']} cores; the widget trains on CPU "
            f"with {r['threads']} torch thread(s), through the {r['through']}), a click was "
            f"on disk {r['click_saved_ms']:.3g} ms after it was given (median of "
            f"{r['clicks']}; 95th percentile {r['click_saved_p95_ms']:.3g} ms); goal "
            f"< {r['click_goal_ms']:g} ms: **{_verdict(met['click_saved_ms'])}** (95th "
            f"percentile: {_verdict(met['click_saved_p95_ms'])}). With the widget redrawn for "
            f"the next question it took {r['click_ms']:.3g} ms; {during}. One training cycle "
            f"(fit on {r['cycle_labels']} labels, then MC-dropout re-scoring of the pool) took "
            f"{r['cycle_s']:.3g} s of wall time and {r['cycle_cpu_s']:.3g} s of CPU time; goal "
            f"< {r['cycle_goal_s']:g} s on 2 cores: **{_verdict(met['cycle_s'])}**.{busy}")


def _responsiveness_goals(res: Mapping[str, Any] | None) -> list[tuple[str, str, str]]:
    """The widget's two goals as rows of :func:`goals_table` ("not measured" when absent)."""
    from covidlib.widgets.timing import CLICK_GOAL_MS, CYCLE_GOAL_S

    click = f"widget: click saved to disk < {CLICK_GOAL_MS:g} ms"
    cycle = f"widget: training cycle < {CYCLE_GOAL_S:g} s (2 cores)"
    if res is None or "responsiveness" not in res:
        why = "not measured yet: run make bench"
        return [(click, NOT_MEASURED, why), (cycle, NOT_MEASURED, why)]
    from covidlib.bench.responsive import verdicts

    r = res["responsiveness"]
    met = verdicts(r)
    return [(click, f"{r['click_saved_ms']:.3g} ms median, {r['click_saved_p95_ms']:.3g} ms "
                    "95th percentile", _verdict(met["click_saved_ms"])),
            (cycle, f"{r['cycle_s']:.3g} s wall, {r['cycle_cpu_s']:.3g} s CPU",
             _verdict(met["cycle_s"]))]
