"""How responsive the labelling widget is: click-to-disk latency and training-cycle time.

:func:`measure_responsiveness` is what ``make bench`` calls (goal on 2 CPU cores: a click is
on disk in < 50 ms, a cycle trains in < 10 s). It opens a :class:`LabelWidget` (or, without
``anywidget``, the headless session) with the chapter's cpu settings on two phantom volumes
generated in memory, answers P1's initial images with the oracle, then times

* ``click_saved_ms``: from an answer (a click on infection or a "background" tag) until its
  line is in the annotations file (``fsync``-ed) and the next question is chosen;
* ``click_ms``: from a front-end event to the widget redrawn with the next question (the
  save included; a new slice means two PNGs to encode);
* ``click_during_training_ms``: the same while a cycle trains in the background thread;
* ``cycle_s``: one training cycle (fit + MC-dropout re-scoring of the pool), wall time;
  ``cycle_cpu_s`` the process's CPU seconds meanwhile (the clicks included): on a busy
  machine the wall time overstates what a quiet one takes.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CLICK_GOAL_MS", "CYCLE_GOAL_S", "measure_responsiveness"]

CLICK_GOAL_MS = 50.0
CYCLE_GOAL_S = 10.0


def _answer(target: Any, session: Any, oracle: Any) -> float:
    """Answer the current region through ``target`` (widget or session); seconds to disk."""
    q = session.current()
    ans = oracle(q.case_id, q.z, q.box)
    n = len(session.store)
    t0 = time.perf_counter()
    if ans.kind == "point" and hasattr(target, "handle_event"):
        vy0, vy1, vx0, vx1 = target.view
        w, h = target.canvas_size
        y, x = ans.point.y, ans.point.x
        target.handle_event({"event": "click", "cx": (x + 0.5 - vx0) * w / (vx1 - vx0),
                             "cy": (y + 0.5 - vy0) * h / (vy1 - vy0), "width": w, "height": h})
    elif ans.kind == "point":
        target.click(ans.point.y, ans.point.x)
    elif hasattr(target, "handle_event"):
        target.handle_event({"event": "background"})
    else:
        target.background()
    seconds = time.perf_counter() - t0
    if len(session.store) != n + 1:
        raise RuntimeError("measure_responsiveness: the answer was not recorded")
    return seconds


def measure_responsiveness(clicks: int = 20, threads: int = 2, seed: int = 0,
                           workdir: str | Path | None = None,
                           overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Median and 95th-percentile click-to-disk latency (ms), idle and while a cycle trains,
    and the time of one training cycle (s) with the label chapter's cpu settings; see the
    module docstring. ``threads``: torch CPU threads for training (the bench's 2 cores);
    ``overrides``: changes to those settings (the bench's ``--quick`` run makes them tiny)."""
    from covidlib.data.phantom import PhantomConfig, generate_case
    from covidlib.experiments.label_demo import settings
    from covidlib.widgets.session import LabelSession, MaskOracle, choose_pool

    s = settings("cpu", overrides)
    cases = [generate_case(PhantomConfig(), i) for i in range(2)]
    pool = choose_pool(cases, n=s.pool, seed=seed)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        session = LabelSession(cases, Path(tmp) / "bench.jsonl", n_regions=s.n_regions,
                               n_mc=s.n_mc, slices=pool, size=s.size,
                               regions_per_cycle=s.regions_per_cycle, epochs=s.epochs,
                               lr=s.lr, batch_size=s.batch_size, seed=seed,
                               threads=threads, dataset="bench")
        try:
            from covidlib.widgets.view import LabelWidget

            target: Any = LabelWidget(session)
        except ImportError:
            target = session
        oracle = MaskOracle(cases, seed=seed)
        rng = np.random.default_rng(seed)
        for i in sorted(rng.choice(len(pool), s.initial_images, replace=False)):
            ref = pool[int(i)]
            for box in session.boxes(ref):
                session.label_region(ref, box, oracle(ref[0], ref[1], box))
        saved = [_answer(session, session, oracle) for _ in range(clicks)]
        idle = [_answer(target, session, oracle) for _ in range(clicks)]
        t0, c0 = time.perf_counter(), time.process_time()
        session.start_cycle()
        busy = []
        while session.training and len(busy) < clicks:
            busy.append(_answer(target, session, oracle))
            time.sleep(0.05)  # an annotator's pace is seconds, not milliseconds
        session.wait()
        cycle, cycle_cpu = time.perf_counter() - t0, time.process_time() - c0
        if session.last_error is not None:
            raise session.last_error
        labels = session.history[-1].labels

    def ms(v: list[float], q: float) -> float:
        return round(1000 * float(np.percentile(v, q)), 2) if v else float("nan")

    return {"click_saved_ms": ms(saved, 50), "click_saved_p95_ms": ms(saved, 95),
            "click_ms": ms(idle, 50), "click_p95_ms": ms(idle, 95),
            "click_during_training_ms": ms(busy, 50),
            "click_during_training_p95_ms": ms(busy, 95), "clicks": len(idle),
            "clicks_during_training": len(busy), "cycle_s": round(cycle, 2),
            "cycle_cpu_s": round(cycle_cpu, 2),
            "cycle_labels": labels, "threads": threads, "torch_threads": torch.get_num_threads(),
            "through": type(target).__name__, "click_goal_ms": CLICK_GOAL_MS,
            "cycle_goal_s": CYCLE_GOAL_S}
