"""What the P1 chapters glue into their prose: P1's numbers (from ``paper_values/p1.yaml``),
the sizes of the ``cpu`` profile and the per-slice costs of our pool, so that no number is
typed into a chapter's text (issue: "numbers reach book prose via glue").

Settings are read by name from a mapping or from attributes (P1's settings may be a dict or
a dataclass), through the arguments only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from covidlib.data.manifest import load_manifest
from covidlib.experiments.p1_mechanism import baseline_convergence, pool_infected_share
from covidlib.experiments.p1_report import random_specificity_range
from covidlib.experiments.p1_settings import PROFILES, fig6_initial_images
from covidlib.report import paper_values

if TYPE_CHECKING:
    from covidlib.experiments.p1 import Runs
    from covidlib.verdict import Verdict

__all__ = ["CURVE_COLUMNS", "P1GlueError", "convergence_reasons", "cpu_profile_glue",
           "curves_table", "dataset_glue", "fig6_table", "paper_glue", "pool_shares", "setting",
           "specificity_line", "verdict_lines", "whole_image_glue"]

#: The columns of the curves each chapter shows, by what the chapter varies (the curves
#: frame of :func:`covidlib.experiments.p1_report.curves_frame` holds them all).
CURVE_COLUMNS: dict[str, list[str]] = {
    "fig5": ["split", "heuristic", "seed", "cycle", "n_labelled_regions", "seconds", "dice",
             "spec", "sens", "n_selected_points"],
    "fig7": ["supervision", "seed", "cycle", "n_labelled_regions", "seconds", "dice", "spec"],
}


class P1GlueError(ValueError):
    """A P1 chapter's glue values cannot be built from what it was given."""


def setting(s: Any, key: str) -> Any:
    """Setting ``key`` of P1 settings ``s``, a mapping (``s[key]``) or an object (``s.key``)."""
    try:
        return s[key] if isinstance(s, Mapping) else getattr(s, key)
    except (KeyError, AttributeError):
        raise P1GlueError(f"P1 settings have no {key!r} (got {type(s).__name__})") from None


def _pct(x: float) -> str:
    """``0.84 -> "84 %"`` (the book's spelling of a percentage)."""
    return f"{round(100 * float(x))} %"


def paper_glue() -> dict[str, Any]:
    """P1's numbers for the chapters' prose (glue name -> value) from ``p1.yaml``: the
    headline of Sec. 5.3 (Dice and effort, Ma et al.'s 96 s per slice), the point cost of
    Fig. 7, the specificity range of Sec. 5.1 and the initial budget of Sec. 5.2."""
    head = paper_values.artifact("P1-headline")["values"]
    f5 = paper_values.artifact("P1-F5")["values"]
    f6 = paper_values.artifact("P1-F6")["values"]
    point_s = paper_values.artifact("P1-F7")["values"]["seconds_per_point"]
    lo, hi = f5["random_specificity_range"]
    out = {f"p1_paper_{k}": _pct(head[k])
           for k in ("full_dice", "al_dice", "dice_fraction", "effort_fraction")}
    out |= {f"p1_paper_{k}": head[k] for k in (
        "train_slices", "seconds_per_slice", "full_effort_seconds", "al_seconds",
        "initial_images", "regions_per_image", "cycles", "regions_per_cycle", "scan_minutes",
        "scan_slices")}
    out |= {"p1_paper_seconds_per_point": point_s, "p1_paper_spec_low": lo,
            "p1_paper_spec_high": hi, "p1_paper_initial_budget": f6["initial_budget_seconds"],
            "p1_paper_initial_images_k64": f6["initial_images_at_k64"],
            "p1_paper_budget_regions": round(f6["initial_budget_seconds"] / point_s)}
    return out


def cpu_profile_glue(profiles: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``cpu`` profile's sizes for the prose that describes it: slice side, U-Net width
    and depth, cycles, regions per cycle and fully labelled initial images (``profiles``:
    default P1's ``PROFILES``)."""
    cpu = (PROFILES if profiles is None else profiles)["cpu"]
    model = setting(cpu, "model_kwargs")
    return {"p1_cpu_size": setting(cpu, "size"), "p1_cpu_width": model["base_width"],
            "p1_cpu_depth": model["depth"], "p1_cpu_cycles": setting(cpu, "cycles"),
            "p1_cpu_per_cycle": setting(cpu, "per_cycle"),
            "p1_cpu_initial_images": setting(cpu, "initial_images")}


def dataset_glue(name: str = "ma20-slices") -> dict[str, Any]:
    """The facts of dataset ``name`` that the P1 chapters describe, from its manifest
    (``data_manifests/<name>.yaml``): its number of volumes, the slice fractions of split
    ``mixed`` (P1 Sec. 4.1, as ``"45 %"``) and the volumes per part of split ``sep``."""
    m = load_manifest(name)
    missing = [k for k in ("mixed", "sep") if k not in m.splits]
    if missing:
        raise P1GlueError(f"dataset_glue: manifest {name!r} has no split(s) {missing}")
    mixed, sep = m.splits["mixed"], m.splits["sep"]
    out: dict[str, Any] = {}
    for part in ("train", "val", "test"):
        frac, cases = getattr(mixed, part), getattr(sep, part)
        if not isinstance(frac, float) or not isinstance(cases, tuple):
            raise P1GlueError(f"dataset_glue: manifest {name!r}: split 'mixed' needs a slice "
                              f"fraction and split 'sep' a list of volumes for {part!r}, got "
                              f"{frac!r} and {cases!r}")
        out[f"p1_data_mixed_{part}"] = _pct(frac)
        out[f"p1_data_sep_{part}"] = len(cases)
    out["p1_data_volumes"] = sum(out[f"p1_data_sep_{p}"] for p in ("train", "val", "test"))
    return out


def whole_image_glue(costs: pd.DataFrame, seconds_per_slice: float | None = None
                     ) -> dict[str, str]:
    """``p1_slice_points`` and ``p1_slice_pixel``: the mean seconds per slice of tagging or
    clicking every region and of drawing the whole slice's polygon (rows of
    :func:`covidlib.experiments.p1_report.whole_image_costs`), each compared with P1's
    seconds per slice (``seconds_per_slice``; default ``p1.yaml``'s 96 s, P1 Sec. 5.3)."""
    if seconds_per_slice is None:
        seconds_per_slice = paper_values.artifact("P1-headline")["values"]["seconds_per_slice"]
    frame = costs.reset_index() if "scheme" not in costs.columns else costs
    per = dict(zip(frame["scheme"], frame["seconds per slice (mean)"], strict=True))
    points = [v for k, v in per.items() if k.startswith("points and tags")]
    polygon = per.get("per-pixel, whole slice")
    if len(points) != 1 or polygon is None:
        raise P1GlueError(f"whole_image_glue: expected one 'points and tags, K = ..' row and a "
                          f"'per-pixel, whole slice' row, got schemes {sorted(per)}")
    p = float(points[0])
    return {"p1_slice_points": f"{p:.0f} s, {'more' if p > seconds_per_slice else 'less'} than",
            "p1_slice_pixel": f"{float(polygon):.1f} s, "
                              f"{'below' if polygon < seconds_per_slice else 'above'}"}


def fig6_table(summary: pd.DataFrame, s: Any) -> pd.DataFrame:
    """P1 Fig. 6's summary as shown: per K the initial images the budget buys
    (:func:`covidlib.experiments.p1_settings.fig6_initial_images`) and the side of a region
    in pixels (slice side / sqrt(K)), without the raw ``dice_mean``/``dice_std`` columns."""
    ks = summary["K (regions per image)"]
    out = summary.copy()
    out["initial images"] = [fig6_initial_images(k, setting(s, "fig6_initial_regions"))
                             for k in ks]
    out["region side (px)"] = [round(setting(s, "size") / k ** 0.5, 1) for k in ks]
    return out.drop(columns=["dice_mean", "dice_std"])


def curves_table(curves: pd.DataFrame, chapter: str) -> pd.DataFrame:
    """The curves as chapter ``chapter`` (a key of :data:`CURVE_COLUMNS`) shows them: its
    columns, rounded to 3 places."""
    if chapter not in CURVE_COLUMNS:
        raise P1GlueError(f"curves_table: chapter {chapter!r} is not one of "
                          f"{sorted(CURVE_COLUMNS)}")
    missing = [c for c in CURVE_COLUMNS[chapter] if c not in curves.columns]
    if missing:
        raise P1GlueError(f"curves_table {chapter!r}: the curves lack columns {missing}")
    return curves[CURVE_COLUMNS[chapter]].round(3)


def pool_shares(runs: Runs, splits: Sequence[str], data_root: Any = None) -> dict[str, float]:
    """Per split, the share of all pool regions holding infection
    (:func:`covidlib.experiments.p1_mechanism.pool_infected_share`)."""
    return {split: pool_infected_share(runs, split, data_root) for split in splits}


def convergence_reasons(runs: Runs, splits: Sequence[str]) -> dict[str, str]:
    """Per split, why the fully supervised baseline has (not) converged
    (:func:`covidlib.experiments.p1_mechanism.baseline_convergence`)."""
    return {split: baseline_convergence(runs, split).reason for split in splits}


def verdict_lines(verdicts: Mapping[str, Verdict]) -> str:
    """One ``"<split>: <verdict text>"`` line per split."""
    return "\n".join(f"{split}: {v.text}" for split, v in verdicts.items())


def specificity_line(curves: pd.DataFrame, paper: Mapping[str, Any]) -> str:
    """Random selection's last-cycle specificity range beside P1's (Sec. 5.1, ``paper``: the
    P1-F5 artifact of ``p1.yaml``)."""
    lo, hi = paper["values"]["random_specificity_range"]
    r_lo, r_hi = random_specificity_range(curves)
    return f"random selection's last-cycle specificity: {r_lo:.3f}-{r_hi:.3f} (P1: {lo}-{hi})"
