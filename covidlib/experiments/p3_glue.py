"""What the P3 chapter computes per task and glues into its prose: P3's setup numbers (from
``paper_values/p3.yaml``), the baselines' convergence, the mechanism check, the verdicts, the
last iteration's Dice and the scorecard rows, so that the chapter's cells stay one call each
(:mod:`covidlib.experiments.p3_report` holds the tables and figures themselves).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from covidlib.experiments import p3_report
from covidlib.report import paper_values, scorecard

if TYPE_CHECKING:
    from covidlib.experiments.p3 import P3Results
    from covidlib.verdict import Convergence

__all__ = ["P3GlueError", "baselines", "cpu_profile_glue", "glue_values", "mechanisms",
           "paper_setup_glue",
           "record_scorecard", "verdicts"]


class P3GlueError(ValueError):
    """The P3 chapter's glue values cannot be built from what it was given."""


def paper_setup_glue() -> dict[str, Any]:
    """P3's setup (Sec. II-III) for the chapter's prose, glue name -> value: volumes used,
    training volumes, volumes labelled at the last cycle, volumes added per iteration, MC
    passes T, dropout p, classes C and epochs per run."""
    s = paper_values.artifact("P3-F2")["settings"]
    head = paper_values.artifact("P3-headline")["values"]
    return {"p3_paper_volumes": s["volumes_total"], "p3_paper_train": s["train"],
            "p3_paper_labelled": head["labelled_volumes"],
            "p3_paper_per_iteration": s["per_iteration"], "p3_paper_T": s["mc_passes_T"],
            "p3_paper_p": s["dropout_p"], "p3_paper_classes": s["classes_C"],
            "p3_paper_epochs": s["epochs_per_run"]}


def cpu_profile_glue(profiles: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``p3_cpu_classes``: the classes C the ``cpu`` profile segments, its organs plus the
    background (``profiles``: default P3's ``PROFILES``)."""
    if profiles is None:
        from covidlib.experiments.p3 import PROFILES as profiles
    if "cpu" not in profiles:
        raise P3GlueError(f"cpu_profile_glue: no 'cpu' profile among {sorted(profiles)}")
    return {"p3_cpu_classes": len(profiles["cpu"].organs) + 1}


def baselines(res: P3Results, tasks: Sequence[str], plot: bool = True
              ) -> tuple[dict[str, Convergence | None], dict[str, str]]:
    """Each task's :func:`~covidlib.experiments.p3_report.baseline_convergence` (None when no
    baseline was trained) and its reason ("not trained" then); draws each trained baseline's
    curves (:func:`~covidlib.experiments.p3_report.plot_baseline_curve`) when ``plot``."""
    converged = {task: p3_report.baseline_convergence(res, task) for task in tasks}
    if plot:
        for task, c in converged.items():
            if c is not None:
                p3_report.plot_baseline_curve(res, task)
    return converged, {task: c.reason if c else "not trained" for task, c in converged.items()}


def mechanisms(res: P3Results, tasks: Sequence[str], device: str = "cpu"
               ) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """The mechanism check of every task: the per-iteration frames of
    :func:`~covidlib.experiments.p3_report.mechanism_frame` stacked with a ``task`` column,
    and each task's :func:`~covidlib.experiments.p3_report.mechanism_summary`."""
    frames = {task: p3_report.mechanism_frame(res, task, device) for task in tasks}
    summaries = {task: p3_report.mechanism_summary(f) for task, f in frames.items()}
    stacked = [f.assign(task=task)[["task", *f.columns]] for task, f in frames.items()]
    return (pd.concat(stacked, ignore_index=True) if stacked else pd.DataFrame()), summaries


def verdicts(curves: pd.DataFrame, tasks: Sequence[str],
             converged: Mapping[str, Convergence | None],
             mechanism: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """:func:`~covidlib.experiments.p3_report.verdict` of each task with its baseline's
    convergence and its mechanism summary."""
    return {task: p3_report.verdict(curves, task, baseline=converged[task],
                                    mechanism=mechanism[task]) for task in tasks}


def glue_values(curves: pd.DataFrame, verdicts: Mapping[str, str],
                mechanism: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per task (the keys of ``verdicts``): ``p3_<task>_<strategy>_last``, the mean test Dice
    over seeds of each strategy at the last iteration of the run (rounded to 3 places),
    ``p3_<task>_verdict`` and ``p3_<task>_mechanism_rho`` (mean Spearman rho, 3 places)."""
    out: dict[str, Any] = {}
    for task, text in verdicts.items():
        rows = curves[curves["task"] == task]
        if rows.empty:
            raise P3GlueError(f"glue_values: the curves hold no row of task {task!r} "
                              f"(tasks: {sorted(set(curves['task']))})")
        last = curves[(curves["task"] == task)
                      & (curves["iteration"] == curves["iteration"].max())]
        for strategy, value in last.groupby("strategy")["dice"].mean().items():
            out[f"p3_{task}_{strategy}_last"] = round(float(value), 3)
        out[f"p3_{task}_verdict"] = text
        out[f"p3_{task}_mechanism_rho"] = round(mechanism[task]["mean_spearman"], 3)
    return out


def record_scorecard(results_dir: str | Path, entries: Mapping[str, Mapping[str, Any]],
                     provenance: Mapping[str, Any]) -> dict[str, str]:
    """Write each ``artifact -> entry`` (``paper``, ``ours``, ``verdict``) of
    :func:`~covidlib.experiments.p3_report.scorecard_entries` to the scorecard with the run's
    ``provenance``; returns each artifact's verdict."""
    for artifact, entry in entries.items():
        scorecard.record(results_dir, artifact, **entry, provenance=provenance)
    return {artifact: entry["verdict"] for artifact, entry in entries.items()}
