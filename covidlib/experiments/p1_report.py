"""P1's tables, verdicts, scorecard rows and paper-value tables from its runs.

Figures 5, 6, 7 and the Sec. 5.3 headline, computed from the runs of
:mod:`covidlib.experiments.p1` (which re-exports them).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from covidlib.active import (
    ALData,
)
from covidlib.cache import atomic_write_text
from covidlib.data.oracle import (
    FULL_SLICE_SECONDS,
    POINT_SECONDS,
    full_effort_seconds,
    region_grid,
)
from covidlib.experiments.p1_settings import PROFILES, P1Settings
from covidlib.report import paper_values
from covidlib.verdict import (
    Comparison,
    Verdict,
    combine_verdicts,
    paired_spread,
)

if TYPE_CHECKING:
    from covidlib.experiments.p1 import Runs


# Tables
# --------------------------------------------------------------------------------------------

__all__ = [
    "CURVE_COLUMNS",
    "curves_frame",
    "describe",
    "effort_arithmetic",
    "effort_table",
    "fig5_paper_table",
    "fig5_scorecard",
    "fig5_summary",
    "fig5_verdict",
    "fig6_scorecard",
    "fig6_summary",
    "fig6_verdict",
    "fig7_scorecard",
    "fig7_summary",
    "fig7_verdict",
    "headline_numbers",
    "headline_scorecard",
    "headline_table",
    "headline_verdict",
    "paper_headline",
    "random_specificity_range",
    "whole_image_costs",
    "write_csv",
]

CURVE_COLUMNS = ["dataset", "split", "heuristic", "n_regions", "supervision", "seed", "cycle",
                 "n_labelled_regions", "seconds", "dice", "iou", "ppv", "sens", "spec",
                 "val_dice", "best_epoch", "n_selected_points"]


def curves_frame(items: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> pd.DataFrame:
    """One row per (run, cycle): labels, labelled regions, seconds and test scores."""
    rows = []
    for labels, res in items:
        for rec in res["records"]:
            rows.append({
                "dataset": res["config"]["dataset"], "split": labels["split"],
                "heuristic": labels["heuristic"], "n_regions": labels["n_regions"],
                "supervision": labels["supervision"], "seed": labels["seed"],
                "cycle": rec["cycle"], "n_labelled_regions": rec["n_labelled_regions"],
                "seconds": rec["seconds"],
                **{k: (np.nan if rec["test"][k] is None else rec["test"][k])
                   for k in ("dice", "iou", "ppv", "sens", "spec")},
                "val_dice": np.nan if rec["val_dice"] is None else rec["val_dice"],
                "best_epoch": rec["best_epoch"],
                "n_selected_points": sum(k == "point" for k in rec["selected_kinds"]),
            })
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` as CSV atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, frame.to_csv(index=False))
    return path


def _final(frame: pd.DataFrame) -> pd.DataFrame:
    """The last cycle of every run."""
    keys = ["split", "heuristic", "n_regions", "supervision", "seed"]
    last = frame.groupby(keys)["cycle"].transform("max")
    return frame[frame["cycle"] == last]


def _mean_std(values: pd.Series) -> str:
    v = values.dropna()
    if v.empty:
        return "n/a"
    return f"{v.mean():.3f} ± {v.std(ddof=0):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def fig5_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per split and heuristic: final Dice and specificity (mean ± std over seeds), the mean
    Dice over the cycles after the first (the curve's height) and the points labelled."""
    rows = []
    for (split, h), g in frame.groupby(["split", "heuristic"], sort=False):
        fin = _final(g)
        later = g[g["cycle"] > 0]
        rows.append({
            "split": split, "heuristic": h,
            "seeds": int(g["seed"].nunique()),
            "labelled regions (last)": int(fin["n_labelled_regions"].max()),
            "Dice (last cycle)": _mean_std(fin["dice"]),
            "Dice (mean over cycles >= 1)": _mean_std(later.groupby("seed")["dice"].mean())
            if not later.empty else "n/a",
            "specificity (last cycle)": _mean_std(fin["spec"]),
            "points picked": int(g["n_selected_points"].sum()),
        })
    return pd.DataFrame(rows)


def _curve_means(g: pd.DataFrame) -> pd.Series:
    """Per seed: mean Dice over the cycles after the first (cycle 0 is shared by both)."""
    later = g[g["cycle"] > 0]
    return (later if not later.empty else g).groupby("seed")["dice"].mean()


def fig5_verdict(frame: pd.DataFrame, split: str, better: str = "entropy",
                 baseline: str = "random") -> Comparison:
    """Does ``better`` beat ``baseline`` on ``split`` (mean Dice over the cycles after the
    first, per seed)? "holds" when it is higher on average and for every seed, "not
    reproduced" when it is higher for no seed, "mixed" otherwise. The sentence carries the
    seeds, the mean paired difference and its spread (sample std of the per-seed
    differences, :func:`covidlib.verdict.paired_spread`) for the verdict rule."""
    g = frame[frame["split"] == split]
    a, b = _curve_means(g[g["heuristic"] == better]), _curve_means(g[g["heuristic"] == baseline])
    common = sorted(set(a.index) & set(b.index))
    if not common:
        return Comparison(f"no comparison: split {split} has no paired runs of {better} and "
                          f"{baseline}", n_seeds=0)
    diff = a[common] - b[common]
    wins = int((diff > 0).sum())
    n, d, spread = paired_spread(diff.tolist())
    sd = f"; std of the differences {spread:.3f}" if n > 1 else ""
    text = (f"split {split}: {better} - {baseline} = {d:+.3f} mean Dice over cycles >= 1 "
            f"({wins}/{len(common)} seeds higher{sd})")
    if d > 0 and wins == len(common):
        text = f"holds, {text}"
    elif wins == 0:
        text = f"not reproduced, {text}"
    else:
        text = f"mixed result, {text}"
    return Comparison(text, n_seeds=len(common), gap=d, spread=spread)


def random_specificity_range(frame: pd.DataFrame) -> tuple[float, float]:
    """Lowest and highest last-cycle specificity of the random runs (P1 Sec. 5.1 states
    0.85-0.99 for random sampling)."""
    spec = _final(frame[frame["heuristic"] == "random"])["spec"]
    if spec.empty:
        raise ValueError("random_specificity_range: no random-selection run in the frame")
    return float(spec.min()), float(spec.max())


def fig5_scorecard(frame: pd.DataFrame, verdicts: Mapping[str, Verdict],
                   paper: Mapping[str, Any], shares: pd.DataFrame | None = None
                   ) -> dict[str, Any]:
    """The P1-F5 scorecard entry (``paper``, ``ours``, ``verdict``): entropy's last-cycle
    Dice per split, random's specificity range, the infected share of the selected regions
    per heuristic (with ``shares``), and the per-split three-way verdicts combined
    (:func:`covidlib.verdict.combine_verdicts`)."""
    lo, hi = paper["values"]["random_specificity_range"]
    dice = fig5_summary(frame).set_index(["split", "heuristic"])["Dice (last cycle)"]
    r_lo, r_hi = random_specificity_range(frame)
    ours: dict[str, Any] = {f"{split} entropy Dice": dice.loc[(split, "entropy")]
                            for split in verdicts}
    ours["random spec"] = f"{r_lo:.2f}-{r_hi:.2f}"
    if shares is not None and not shares.empty:
        for (split, h), g in shares.groupby(["split", "heuristic"], sort=False):
            ours[f"{split} {h} infected share"] = round(float(g["infected share"].mean()), 2)
    return {
        "paper": f"entropy beats random on Dice (A/B, mixed and sep); random spec {lo}-{hi}",
        "ours": ours,
        "verdict": combine_verdicts(verdicts).text,
    }


def _sample_std(values: pd.Series) -> float:
    """Sample standard deviation (ddof 1) of the finite values; 0 for one, nan for none."""
    v = values.dropna()
    return float(v.std(ddof=1)) if len(v) > 1 else 0.0 if len(v) else float("nan")


def fig6_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per K: initial images, labelling seconds and Dice at the last cycle; ``seeds``,
    ``dice_mean`` and ``dice_std`` (sample std over seeds) for :func:`fig6_verdict`."""
    rows = []
    for k, g in frame.groupby("n_regions"):
        fin = _final(g)
        first = g[g["cycle"] == 0]
        rows.append({
            "K (regions per image)": int(k),
            "seeds": int(fin["seed"].nunique()),
            "initial labelled regions": int(first["n_labelled_regions"].iloc[0]),
            "labelling seconds (last)": float(fin["seconds"].mean()),
            "Dice (last cycle)": _mean_std(fin["dice"]),
            "dice_mean": float(fin["dice"].mean()),
            "dice_std": _sample_std(fin["dice"]),
        })
    return pd.DataFrame(rows)


def fig6_verdict(summary: pd.DataFrame) -> Comparison:
    """P1: "bigger region sizes led to significantly worse performance": holds when the
    smallest K (biggest regions) has the lowest mean final Dice. With the ``seeds`` and
    ``dice_std`` columns of :func:`fig6_summary` the sentence carries the fewest seeds,
    the gap to the next-lowest K and the sum of the two stds (the verdict rule)."""
    if len(summary) < 2:
        return Comparison("no comparison: only one region count", n_seeds=0)
    s = summary.sort_values("K (regions per image)")
    ks, d = s["K (regions per image)"].tolist(), s["dice_mean"].tolist()
    order = ", ".join(f"K={k}: {v:.3f}" for k, v in zip(ks, d, strict=True))
    n_seeds = int(s["seeds"].min()) if "seeds" in s.columns else None
    runner = 1 + int(np.argmin(d[1:]))
    gap = d[runner] - d[0]
    spread = (float(s["dice_std"].iloc[0] + s["dice_std"].iloc[runner])
              if "dice_std" in s.columns else None)
    stats = {"n_seeds": n_seeds, "gap": gap, "spread": spread}
    if d[0] < min(d[1:]):
        mono = all(x <= y for x, y in itertools.pairwise(d))
        return Comparison(f"holds{' (Dice rises with K throughout)' if mono else ''}: the "
                          f"biggest regions give the lowest Dice ({order})", **stats)
    return Comparison(f"not reproduced: the biggest regions are not the worst ({order})",
                      **stats)


def _seed_dice_at_cost(g: pd.DataFrame, cost: float) -> list[float]:
    """Per seed: the Dice of the last cycle whose cost is <= ``cost`` (seeds without one
    are left out)."""
    vals = []
    for _seed, r in g.groupby("seed"):
        r = r.sort_values("seconds")
        ok = r[r["seconds"] <= cost + 1e-9]
        if not ok.empty:
            vals.append(float(ok["dice"].iloc[-1]))
    return vals


def _dice_at_cost(g: pd.DataFrame, cost: float) -> float:
    """Mean over seeds of the Dice of the last cycle whose cost is <= ``cost``."""
    vals = _seed_dice_at_cost(g, cost)
    return float(np.mean(vals)) if vals else float("nan")


def _cost_stats(a: pd.DataFrame, a_cost: float, b: pd.DataFrame, b_cost: float
                ) -> dict[str, Any]:
    """The verdict rule's inputs for Dice at cost of ``a`` minus that of ``b``: the fewest
    seeds, the difference of the means and the sum of the two sample stds."""
    va, vb = _seed_dice_at_cost(a, a_cost), _seed_dice_at_cost(b, b_cost)
    if not va or not vb:
        return {"n_seeds": min(len(va), len(vb))}
    sa, sb = (_sample_std(pd.Series(v, dtype=float)) for v in (va, vb))
    return {"n_seeds": min(len(va), len(vb)), "gap": float(np.mean(va) - np.mean(vb)),
            "spread": sa + sb}


def fig7_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per supervision: labelling seconds of the initial set and at the last cycle, Dice at
    the last cycle, and Dice at the largest cost both schemes reach."""
    both = frame.groupby("supervision")["seconds"].max()
    common = float(both.min()) if len(both) else float("nan")
    rows = []
    for sup, g in frame.groupby("supervision", sort=False):
        fin = _final(g)
        rows.append({
            "supervision": sup,
            "seconds (initial set)": float(g[g["cycle"] == 0]["seconds"].mean()),
            "seconds (last)": float(fin["seconds"].mean()),
            "labelled regions (last)": int(fin["n_labelled_regions"].max()),
            "Dice (last cycle)": _mean_std(fin["dice"]),
            f"Dice at <= {common:.0f} s": _dice_at_cost(g, common),
        })
    return pd.DataFrame(rows)


def fig7_verdict(frame: pd.DataFrame) -> Comparison:
    """P1: point-level labels give a higher Dice than per-pixel labels for the same cost.
    Compared at the largest cost both schemes reach (Dice of each run's last cycle within
    it, mean over seeds); the sentence carries the fewest seeds, the difference and the sum
    of the two stds over seeds (the verdict rule)."""
    sups = set(frame["supervision"])
    if not {"point", "pixel"} <= sups:
        return Comparison("no comparison: needs both point and pixel runs", n_seeds=0)
    common = float(frame.groupby("supervision")["seconds"].max().min())
    pt, px = frame[frame["supervision"] == "point"], frame[frame["supervision"] == "pixel"]
    p, q = _dice_at_cost(pt, common), _dice_at_cost(px, common)
    text = f"at <= {common:.0f} s: point {p:.3f} vs per-pixel {q:.3f} Dice"
    if not math.isnan(p) and not math.isnan(q):
        return Comparison(("holds: " if p > q else "not reproduced: ") + text,
                          **_cost_stats(pt, common, px, common))
    # the costs do not overlap: point labels hold when, cheaper, they still score higher
    p_cost, q_cost = float(pt["seconds"].max()), float(px["seconds"].min())
    if p_cost < q_cost:
        p, q = _dice_at_cost(pt, p_cost), _dice_at_cost(px, q_cost)
        text = (f"point {p:.3f} Dice at <= {p_cost:.0f} s vs per-pixel {q:.3f} at its "
                f"cheapest, {q_cost:.0f} s")
        if p >= q:
            return Comparison(f"holds (cheaper and higher): {text}",
                              **_cost_stats(pt, p_cost, px, q_cost))
    return Comparison(f"no comparison at equal cost: {text}")


def headline_table(runs: Runs, paper: Mapping[str, Any]) -> pd.DataFrame:
    """P1 Sec. 5.3 beside ours: full-supervision Dice, AL (entropy) Dice and cost at the last
    cycle, the two fractions; ours as mean ± std over seeds."""
    full = [r for _l, r in runs.full]
    frame = runs.curves
    fin = _final(frame)
    ent = fin[fin["heuristic"] == "entropy"]
    rnd = fin[fin["heuristic"] == "random"]
    full_dice = pd.Series([r["test"]["dice"] for r in full], dtype=float)
    effort = full[0]["full_effort_seconds"] if full else float("nan")
    v = paper.get("values", {})
    rows = [
        ("pool slices (fully labelled at 96 s each)", v.get("train_slices"),
         f"{full[0]['n_train']}" if full else "n/a"),
        ("full labelling effort (s)", v.get("full_effort_seconds"), f"{effort:.0f}"),
        ("fully supervised Dice", v.get("full_dice"), _mean_std(full_dice)),
        ("AL labelling cost (s)", v.get("al_seconds"), f"{ent['seconds'].mean():.0f}"),
        ("AL (entropy) Dice", v.get("al_dice"), _mean_std(ent["dice"])),
        ("AL (random) Dice", None, _mean_std(rnd["dice"])),
        ("fraction of the effort", v.get("effort_fraction"),
         f"{ent['seconds'].mean() / effort:.3f}" if full else "n/a"),
        ("fraction of the fully supervised Dice", v.get("dice_fraction"),
         f"{ent['dice'].mean() / full_dice.mean():.3f}" if full and full_dice.mean() > 0
         else "n/a"),
    ]
    out = pd.DataFrame(rows, columns=["quantity", "paper (P1 Sec. 5.3)", "ours"])
    out["paper (P1 Sec. 5.3)"] = [
        "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:g}"
        for x in out["paper (P1 Sec. 5.3)"]]
    return out


def fig6_scorecard(summary: pd.DataFrame, verdict: str, paper: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """The P1-F6 scorecard entry: mean last-cycle Dice per K (from :func:`fig6_summary`)."""
    return {"paper": paper["claims"][0],
            "ours": {f"K={int(k)}": round(float(d), 3) for k, d in
                     zip(summary["K (regions per image)"], summary["dice_mean"], strict=True)},
            "verdict": verdict}


def fig7_scorecard(summary: pd.DataFrame, verdict: str, paper: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """The P1-F7 scorecard entry: last-cycle Dice and labelling seconds per supervision
    (from :func:`fig7_summary`)."""
    ours = {f"{r['supervision']} Dice (last)": r["Dice (last cycle)"]
            for _, r in summary.iterrows()}
    ours |= {f"{r['supervision']} seconds (last)": round(r["seconds (last)"])
             for _, r in summary.iterrows()}
    return {"paper": paper["claims"][0], "ours": ours, "verdict": verdict}


def headline_scorecard(numbers: Mapping[str, float], values: Mapping[str, Any], verdict: str,
                       check: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The P1-headline scorecard entry: effort fraction, Dice fraction, AL and full Dice
    (ours from :func:`headline_numbers`, the paper's from its Sec. 5.3 values); with the
    upper-bound ``check`` (:func:`upper_bound_check`) also the every-region Dice."""
    keys = {"effort fraction": "effort_fraction", "Dice fraction": "dice_fraction",
            "AL Dice": "al_dice", "full Dice": "full_dice"}
    ours = {name: round(float(numbers[key]), 3) for name, key in keys.items()}
    if check is not None:
        ours["every-region point Dice"] = round(float(check["ceiling_dice"]), 3)
    return {"paper": {name: values[key] for name, key in keys.items()}, "ours": ours,
            "verdict": str(verdict)}


def headline_numbers(runs: Runs) -> dict[str, float]:
    """``effort_fraction``, ``dice_fraction`` (mean entropy-AL Dice / mean full Dice),
    ``al_dice``, ``full_dice``, ``al_seconds``, ``full_effort_seconds``."""
    fin = _final(runs.curves)
    ent = fin[fin["heuristic"] == "entropy"].set_index("seed")
    full = {lab["seed"]: r for lab, r in runs.full}
    seeds = sorted(set(ent.index) & set(full))
    if not seeds:
        raise ValueError("p1: headline needs entropy runs and full-supervision runs of a seed")
    effort = float(full[seeds[0]]["full_effort_seconds"])
    fd = np.array([full[s]["test"]["dice"] for s in seeds], dtype=float)
    ad = np.array([ent.loc[s, "dice"] for s in seeds], dtype=float)
    cost = float(np.mean([ent.loc[s, "seconds"] for s in seeds]))
    frac = float(ad.mean() / fd.mean()) if fd.mean() > 0 else float("nan")
    return {"effort_fraction": cost / effort, "dice_fraction": frac,
            "al_dice": float(ad.mean()), "full_dice": float(fd.mean()), "al_seconds": cost,
            "full_effort_seconds": effort}


def _seed_dice_fractions(runs: Runs) -> list[float]:
    """Per seed with both runs: entropy AL's last-cycle Dice / the fully supervised Dice."""
    fin = _final(runs.curves)
    ent = fin[fin["heuristic"] == "entropy"].set_index("seed")["dice"]
    full = {lab["seed"]: r["test"]["dice"] for lab, r in runs.full}
    return [float(ent.loc[s]) / float(full[s]) for s in sorted(set(ent.index) & set(full))
            if full[s] is not None and float(full[s]) > 0]


def paper_headline() -> dict[str, Any]:
    """P1 Sec. 5.3's headline values (``values`` of ``p1.yaml``'s P1-headline: Dice and
    effort shares, seconds per slice, ...)."""
    return dict(paper_values.artifact("P1-headline")["values"])


def headline_verdict(runs: Runs, paper: Mapping[str, Any]) -> Comparison:
    """Whether our AL run reaches P1's share of the fully supervised Dice (~90 %, within
    0.05) and at what share of the full effort (P1: ~7 %, within twice that; targets missing
    from ``paper["values"]`` come from :func:`paper_headline`). The sentence
    carries the seeds, the Dice share's distance to the target and the sample std of the
    per-seed shares (the verdict rule; the effort share does not vary with the seed)."""
    n = headline_numbers(runs)
    v = paper_headline() | dict(paper.get("values", {}))
    target_d, target_e = float(v["dice_fraction"]), float(v["effort_fraction"])
    if math.isnan(n["dice_fraction"]):
        return Comparison("no comparison: the fully supervised network has Dice 0")
    text = (f"{n['dice_fraction']:.0%} of the fully supervised Dice with "
            f"{n['effort_fraction']:.0%} of the full labelling effort (P1: "
            f"{target_d:.0%} with {target_e:.0%})")
    n_seeds, _mean, spread = paired_spread(_seed_dice_fractions(runs))
    stats = {"n_seeds": n_seeds, "gap": n["dice_fraction"] - (target_d - 0.05),
             "spread": spread}
    if n["dice_fraction"] >= target_d - 0.05 and n["effort_fraction"] <= 2 * target_e:
        return Comparison(f"holds: {text}", **stats)
    if n["dice_fraction"] >= target_d - 0.05:
        return Comparison(f"Dice share reached at a larger effort share: {text}",
                          n_seeds=n_seeds)
    return Comparison(f"not reproduced: {text}", **stats)


def describe(s: P1Settings, data: ALData, paper_profile: P1Settings | None = None
             ) -> pd.DataFrame:
    """The settings of this profile beside P1's (the ``paper`` profile)."""
    p = paper_profile or PROFILES["paper"]
    point_s = paper_values.artifact("P1-F7")["values"]["seconds_per_point"]
    slice_s = paper_headline()["seconds_per_slice"]
    rows = [
        ("network", f"{s.model} {s.model_kwargs}", f"{p.model} {p.model_kwargs}"),
        ("slice size (px)", s.size, p.size),
        ("pool / val / test slices", f"{len(data.train)} / {len(data.val)} / {len(data.test)}",
         "all slices of the split"),
        ("regions per image K", s.n_regions, p.n_regions),
        ("initial images (all regions labelled)", s.initial_images, p.initial_images),
        ("regions labelled per cycle", s.per_cycle, p.per_cycle),
        ("cycles", s.cycles, p.cycles),
        ("epochs per cycle (best validation kept)", s.epochs, p.epochs),
        ("images per epoch (at least)", s.epoch_items or "labelled images", "labelled images"),
        ("batch size / Adam lr", f"{s.batch_size} / {s.lr:g}",
         f"{p.batch_size} / {p.lr:g}"),
        ("MC-dropout draws I", s.n_samples, f"not stated ({p.n_samples} here)"),
        ("fully supervised baseline: epochs (early-stopping patience)",
         f"<= {s.full_epochs} ({s.full_patience})",
         f"<= {p.full_epochs} (best validation epoch kept)"),
        ("region score", s.reduce, "max (Model Training) or mean (Fig. 4)"),
        ("loss normalisation", s.loss_balance, "Eq. 1 (labelled pixels)"),
        ("cost per point / tag", f"{POINT_SECONDS:g} s", f"{point_s:g} s [40]"),
        ("cost of a full slice", f"{FULL_SLICE_SECONDS:g} s", f"{slice_s:g} s [36]"),
    ]
    return pd.DataFrame(rows, columns=["setting", "this profile", "P1"])


# --------------------------------------------------------------------------------------------
# Paper values
# --------------------------------------------------------------------------------------------


def effort_arithmetic(initial_images: int, n_regions: int, cycles: int, per_cycle: int,
                      n_slices: int) -> dict[str, float]:
    """P1 Sec. 5.3's arithmetic: ``initial x 3 x K + cycles x per_cycle x 3`` seconds against
    ``n_slices x 96`` s (P1: 5 x 3 x 64 + 100 x 5 x 3 = 2460 s of 35328 s)."""
    al = POINT_SECONDS * (initial_images * n_regions + cycles * per_cycle)
    full = full_effort_seconds(n_slices)
    return {"al_seconds": al, "full_effort_seconds": full, "fraction": al / full}


def effort_table(values: Mapping[str, Any], settings: P1Settings, n_regions: int,
                 cycles: int, n_train: int) -> pd.DataFrame:
    """:func:`effort_arithmetic` for P1's schedule on P1's pool (``values``: the paper's
    Sec. 5.3 numbers), ours on our pool of ``n_train`` slices, and ours on P1's pool."""
    v, s = values, settings
    ours = (s.initial_images, n_regions, cycles, s.per_cycle)
    return pd.DataFrame({
        "P1 schedule, P1 pool": effort_arithmetic(v["initial_images"], v["regions_per_image"],
                                                  v["cycles"], v["regions_per_cycle"],
                                                  v["train_slices"]),
        "our schedule, our pool": effort_arithmetic(*ours, n_train),
        "our schedule, P1's pool": effort_arithmetic(*ours, v["train_slices"]),
    }).T.round(4)


def whole_image_costs(data: ALData, n_regions: int = 64) -> pd.DataFrame:
    """Seconds to label the pool's slices by each scheme (P1 Sec. 5.3): every region with a
    tag or a point (K x 3 s), every region per pixel (3 s per tag, 3 s per polygon vertex
    inside each region), the whole slice per pixel as one polygon drawing (3 s per vertex, 3 s
    for a clean slice) and P1's seconds per slice (:func:`paper_headline`, 96 s); mean and
    total over the pool."""
    from covidlib.data.oracle import full_image_cost

    slice_s = float(paper_headline()["seconds_per_slice"])
    boxes = region_grid(tuple(data.masks.shape[1:]), n_regions)
    cols = {
        f"points and tags, K = {n_regions}": [full_image_cost(m, "point", boxes=boxes)
                                              for m in data.masks],
        f"per-pixel by region, K = {n_regions}": [full_image_cost(m, "pixel", boxes=boxes)
                                                  for m in data.masks],
        "per-pixel, whole slice": [full_image_cost(m, "pixel") for m in data.masks],
        f"P1's full slice ({slice_s:g} s)": [slice_s] * len(data.masks),
    }
    rows = [{"scheme": k, "seconds per slice (mean)": float(np.mean(v)),
             "seconds for the pool": float(np.sum(v))} for k, v in cols.items()]
    return pd.DataFrame(rows)


def fig5_paper_table(paper: Mapping[str, Any]) -> pd.DataFrame:
    """The Dice-axis ranges of P1 Fig. 5's panels (read off the figure, not data points)."""
    ax = paper.get("axes_read_off_figure", {})
    rows = [{"P1 panel": name, "Dice axis from": v["dice_axis"][0],
             "Dice axis to": v["dice_axis"][1], "x axis": f"{ax['x']['label']} "
             f"{ax['x']['range'][0]}-{ax['x']['range'][1]}"}
            for name, v in ax.get("panels", {}).items()]
    return pd.DataFrame(rows)
