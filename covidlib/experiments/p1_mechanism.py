"""P1's mechanism checks, the baseline's convergence, three-way verdicts and figures.

The checks of issue 14 and Figures 2, 5, 6, 7, re-exported by :mod:`covidlib.experiments.p1`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from covidlib.acquisition import infected_share
from covidlib.active import (
    ALConfig,
    decode_mask,
)
from covidlib.data.oracle import (
    region_grid,
    region_label,
)
from covidlib.experiments.p1_report import _final, fig5_verdict
from covidlib.experiments.p1_settings import _COLOURS, HEURISTIC_LABELS, _data
from covidlib.report import paper_values
from covidlib.report.figures import display_view
from covidlib.verdict import (
    INCONCLUSIVE,
    Comparison,
    Convergence,
    Verdict,
    baseline_converged,
    three_way_verdict,
)

if TYPE_CHECKING:
    from covidlib.experiments.p1 import Runs


# Mechanism checks, the baseline's convergence and the three-way verdicts (issue 14)
# --------------------------------------------------------------------------------------------


__all__ = [
    "MECHANISMS",
    "baseline_convergence",
    "baseline_curves",
    "chapter_verdict",
    "fig5_verdicts",
    "figure2",
    "figure5",
    "figure6",
    "figure7",
    "figure_baseline",
    "mechanism_present",
    "mechanism_summary",
    "pool_infected_share",
    "selection_shares",
    "upper_bound_check",
    "upper_bound_table",
]

def selection_shares(runs: Runs, data_root: Any = None) -> pd.DataFrame:
    """Per run and cycle: the regions selected after that cycle and the share of them that
    hold infection (:func:`covidlib.acquisition.infected_share` on the pool's masks). P1
    Sec. 5.1 explains entropy's win by this share."""
    rows = []
    for labels, res in runs.items:
        cfg = ALConfig.from_mapping(res["config"])
        data = _data(cfg, data_root)
        boxes = region_grid((cfg.size, cfg.size), cfg.n_regions)
        for rec in res["records"]:
            picks = [tuple(p) for p in rec["selected"]]
            if not picks:
                continue
            rows.append({"split": labels["split"], "heuristic": labels["heuristic"],
                         "seed": labels["seed"], "cycle": rec["cycle"],
                         "selected regions": len(picks),
                         "infected share": infected_share(data.masks, boxes, picks)})
    return pd.DataFrame(rows, columns=["split", "heuristic", "seed", "cycle",
                                       "selected regions", "infected share"])


def mechanism_summary(shares: pd.DataFrame, pool_share: Mapping[str, float] | None = None
                      ) -> pd.DataFrame:
    """Per split and heuristic: the mean infected share of the selected regions over cycles
    and seeds, and its range over the cycles; with ``pool_share`` (split -> share of all
    pool regions holding infection) the share random selection should approach."""
    rows = []
    for (split, h), g in shares.groupby(["split", "heuristic"], sort=False):
        per_cycle = g.groupby("cycle")["infected share"].mean()
        row = {"split": split, "heuristic": h,
               "infected share (mean)": round(float(g["infected share"].mean()), 3),
               "per cycle": ", ".join(f"{v:.2f}" for v in per_cycle)}
        if pool_share is not None:
            row["share in the whole pool"] = round(float(pool_share[split]), 3)
        rows.append(row)
    return pd.DataFrame(rows)


def pool_infected_share(runs: Runs, split: str, data_root: Any = None) -> float:
    """The share of all pool regions (of ``split``'s first run) that hold infection."""
    res = runs.get(split=split)[0]
    cfg = ALConfig.from_mapping(res["config"])
    data = _data(cfg, data_root)
    boxes = region_grid((cfg.size, cfg.size), cfg.n_regions)
    picks = [(i, k) for i in range(len(data.masks)) for k in range(len(boxes))]
    return infected_share(data.masks, boxes, picks)


def mechanism_present(shares: pd.DataFrame, split: str, better: str = "entropy",
                      baseline: str = "random") -> bool | None:
    """P1's mechanism on ``split``: ``better`` selects a larger share of infected regions
    than ``baseline`` (mean over cycles and seeds); None without both heuristics."""
    g = shares[shares["split"] == split]
    a = g[g["heuristic"] == better]["infected share"]
    b = g[g["heuristic"] == baseline]["infected share"]
    if a.empty or b.empty:
        return None
    return bool(a.mean() > b.mean())


def baseline_curves(runs: Runs) -> pd.DataFrame:
    """The fully supervised baselines' training curves: split, seed, epoch, train loss,
    validation Dice."""
    rows = [{"split": lab["split"], "seed": lab["seed"], **h}
            for lab, r in runs.full for h in r.get("history", [])]
    return pd.DataFrame(rows, columns=["split", "seed", "epoch", "train_loss", "val_dice"])


def baseline_convergence(runs: Runs, split: str, window: int = 3, tol: float = 0.01
                         ) -> Convergence:
    """:func:`covidlib.verdict.baseline_converged` on the mean validation curve (over seeds)
    of ``split``'s fully supervised baseline."""
    c = baseline_curves(runs)
    c = c[c["split"] == split]
    if c.empty:
        raise ValueError(f"p1: no fully supervised baseline of split {split!r} (run baseline())")
    curve = c.groupby("epoch")["val_dice"].mean().sort_index()
    return baseline_converged(curve.tolist(), window=window, tol=tol)


def headline_share() -> float:
    """P1's headline ratio: the AL run reaches this share of the fully supervised Dice
    (Sec. 5.3, ``dice_fraction`` of ``p1.yaml``'s P1-headline)."""
    return float(paper_values.artifact("P1-headline")["values"]["dice_fraction"])


def upper_bound_check(al_dice: float, ceiling_dice: float, full_dice: float,
                      share: float | None = None) -> dict[str, float | bool]:
    """The upper-bound check (issue 14): how far the AL run is from its own end point (every
    region labelled with points, ``ceiling_dice``), and how far that end point is from the
    fully supervised Dice (``full_dice``). ``ceiling_reaches_full``: the point labels on the
    whole pool reach ``share`` of the fully supervised Dice (default :func:`headline_share`,
    P1's headline ratio); when they do not, no selection rule can reach P1's headline."""
    share = headline_share() if share is None else share
    def ratio(a: float, b: float) -> float:
        return float(a) / float(b) if b > 0 else float("nan")

    c_f = ratio(ceiling_dice, full_dice)
    return {"al_dice": float(al_dice), "ceiling_dice": float(ceiling_dice),
            "full_dice": float(full_dice), "al_of_ceiling": ratio(al_dice, ceiling_dice),
            "ceiling_of_full": c_f, "al_of_full": ratio(al_dice, full_dice),
            "ceiling_reaches_full": bool(c_f >= share) if math.isfinite(c_f) else False}


def upper_bound_table(runs: Runs, split: str) -> tuple[pd.DataFrame, dict[str, float | bool]]:
    """:func:`upper_bound_check` of ``split`` (means over seeds: entropy AL at its last cycle,
    the every-region run, the fully supervised baseline) and a table of it."""
    fin = _final(runs.curves)
    al = fin[(fin["split"] == split) & (fin["heuristic"] == "entropy")]["dice"]
    ceil = [r["records"][-1]["test"]["dice"] or 0.0 for lab, r in runs.ceiling
            if lab["split"] == split]
    full = [r["test"]["dice"] or 0.0 for lab, r in runs.full if lab["split"] == split]
    if al.empty or not ceil or not full:
        raise ValueError(f"p1: the upper-bound check of {split!r} needs entropy, ceiling and "
                         "fully supervised runs (upper_bound())")
    chk = upper_bound_check(float(al.mean()), float(np.mean(ceil)), float(np.mean(full)))
    n_reg = [r["records"][-1]["n_labelled_regions"] for lab, r in runs.ceiling
             if lab["split"] == split]
    al_reg = fin[(fin["split"] == split) & (fin["heuristic"] == "entropy")][
        "n_labelled_regions"].mean()
    table = pd.DataFrame([
        ("AL (entropy), last cycle", f"{al_reg:.0f}", round(chk["al_dice"], 3)),
        ("every region labelled with points (AL end point)", f"{np.mean(n_reg):.0f}",
         round(chk["ceiling_dice"], 3)),
        ("fully supervised (per-pixel masks)", "all pixels", round(chk["full_dice"], 3)),
    ], columns=["run", "labelled regions", "test Dice"])
    return table, chk


MECHANISMS = {
    "P1-F5": "P1's mechanism (entropy selects more regions with infection than random)",
    "P1-headline": f"the upper bound (point labels on every region reach "
                   f"{round(100 * headline_share())} % of the fully supervised Dice)",
}


def _seed_count(runs: Runs, split: str) -> int | None:
    """Seeds of ``split``'s active-learning runs (None without any)."""
    seeds = {lab["seed"] for lab, _r in runs.items if lab.get("split") == split}
    return len(seeds) if seeds else None


def chapter_verdict(runs: Runs, split: str, comparison: str,
                    mechanism_present: bool | None = None, mechanism: str = "mechanism"
                    ) -> Verdict:
    """The three-way verdict (:func:`covidlib.verdict.three_way_verdict`) of one claim on
    ``split``: it holds when ``comparison`` (the sentence of :func:`fig5_verdict`,
    :func:`fig6_verdict`, :func:`fig7_verdict` or :func:`headline_verdict`) starts with
    "holds"; the baseline's convergence is :func:`baseline_convergence` of ``split``. The
    seeds, gap and spread the comparison carries (:class:`covidlib.verdict.Comparison`; for
    a plain sentence the seeds of ``split``'s runs) make a one-seed comparison, or one
    inside the seeds' spread, "inconclusive (run too small: ...)"."""
    if comparison.startswith("no comparison"):
        return Verdict(INCONCLUSIVE, f"{INCONCLUSIVE}, no comparison possible: {comparison}")
    stats = (comparison.stats() if isinstance(comparison, Comparison)
             else {"n_seeds": _seed_count(runs, split)})
    return three_way_verdict(comparison.startswith("holds"), baseline_convergence(runs, split),
                             mechanism_present, comparison, mechanism, **stats)


def fig5_verdicts(runs: Runs, shares: pd.DataFrame, splits: Sequence[str]
                  ) -> dict[str, Verdict]:
    """Per split: :func:`chapter_verdict` of :func:`fig5_verdict` with P1's mechanism
    (:func:`mechanism_present` on the selection ``shares``)."""
    curves = runs.curves
    return {split: chapter_verdict(runs, split, fig5_verdict(curves, split),
                                   mechanism_present(shares, split), MECHANISMS["P1-F5"])
            for split in splits}


def figure_baseline(runs: Runs) -> Figure:
    """The fully supervised baseline's training loss and validation Dice per epoch (one line
    per split and seed); the dot marks the kept (best validation) epoch."""
    c = baseline_curves(runs)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 3.3))
    for (split, seed), g in c.groupby(["split", "seed"], sort=False):
        lab = f"{split}, seed {seed}"
        a.plot(g["epoch"], g["train_loss"], "-", lw=1.5, label=lab)
        line = b.plot(g["epoch"], g["val_dice"], "-", lw=1.5, label=lab)[0]
        if g["val_dice"].notna().any():
            best = g.loc[g["val_dice"].idxmax()]
            b.plot([best["epoch"]], [best["val_dice"]], "o", color=line.get_color())
    a.set(xlabel="epoch", ylabel="training loss (structure loss)", title="training")
    b.set(xlabel="epoch", ylabel="validation Dice", title="validation")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.suptitle(f"fully supervised baseline ({runs.dataset})", fontsize=11)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _band(ax: Any, g: pd.DataFrame, x: str, y: str, colour: str, label: str) -> None:
    stats = g.groupby(x)[y].agg(["mean", "min", "max"]).sort_index()
    ax.plot(stats.index, stats["mean"], "-o", color=colour, label=label, lw=2, ms=4)
    if g["seed"].nunique() > 1:
        ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.2,
                        lw=0)


def figure5(frame: pd.DataFrame, metrics: Sequence[str] = ("dice", "spec"),
            title: str = "") -> Figure:
    """P1 Fig. 5: Dice and specificity (rows) against labelled regions, one column per split;
    line = mean over seeds, band = lowest to highest seed."""
    splits = list(dict.fromkeys(frame["split"]))
    names = {"dice": "Dice", "spec": "specificity", "sens": "sensitivity"}
    fig, axes = plt.subplots(len(metrics), len(splits), figsize=(5.2 * len(splits),
                             3.4 * len(metrics)), squeeze=False)
    for j, split in enumerate(splits):
        g = frame[frame["split"] == split]
        for i, m in enumerate(metrics):
            ax = axes[i, j]
            for h in dict.fromkeys(g["heuristic"]):
                _band(ax, g[g["heuristic"] == h], "n_labelled_regions", m, _COLOURS.get(h, "k"),
                      HEURISTIC_LABELS.get(h, h))
            ax.set_title(f"{frame['dataset'].iloc[0]} {split}", fontsize=11)
            ax.set_xlabel("labelled regions")
            ax.set_ylabel(names.get(m, m))
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=9)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def figure6(summary: pd.DataFrame, frame: pd.DataFrame) -> Figure:
    """P1 Fig. 6: Dice at the last cycle per K (bars: mean over seeds, dots: seeds); under
    each bar the size of the initial set."""
    fin = _final(frame)
    s = summary.sort_values("K (regions per image)")
    ks = s["K (regions per image)"].tolist()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    means = [float(fin[fin["n_regions"] == k]["dice"].mean()) for k in ks]
    xs = np.arange(len(ks))
    ax.bar(xs, means, color="tab:blue", alpha=0.7, width=0.6)
    for x, k in zip(xs, ks, strict=True):
        d = fin[fin["n_regions"] == k]["dice"].to_numpy()
        ax.plot(np.full(d.shape, x), d, "ko", ms=4)
    labels = [f"K = {k}\n{n // k} initial image{'s' if n // k > 1 else ''}"
              for k, n in zip(ks, s["initial labelled regions"], strict=True)]
    ax.set_xticks(xs, labels)
    ax.set_ylabel("test Dice (last cycle)")
    ax.set_xlabel("regions per image (more = smaller regions)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def figure7(frame: pd.DataFrame) -> Figure:
    """P1 Fig. 7: Dice against labelling cost (seconds), point-level vs per-pixel labels;
    thin lines = seeds, thick = mean (at each cycle)."""
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    for sup, g in frame.groupby("supervision", sort=False):
        c = _COLOURS.get(sup, "k")
        for _seed, r in g.groupby("seed"):
            r = r.sort_values("cycle")
            ax.plot(r["seconds"], r["dice"], "-", color=c, alpha=0.35, lw=1)
        m = g.groupby("cycle")[["seconds", "dice"]].mean()
        ax.plot(m["seconds"], m["dice"], "-o", color=c, lw=2, ms=4,
                label={"point": "point-level", "pixel": "per-pixel"}.get(sup, sup))
    ax.set_xlabel("labelling cost (s): 3 s per point or tag, 3 s per polygon vertex")
    ax.set_ylabel("test Dice")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def figure2(runs: Runs, split: str, seed: int | None = None, data_root: Any = None) -> Figure:
    """P1 Fig. 2: test slices; columns: ground truth (red) with the oracle's point labels on
    the K grid (crosses), then the predictions (cyan, truth outlined in red) of the fully
    supervised network and of the random and entropy AL runs at their last cycle, with each
    slice's Dice (radiological view)."""
    seed = runs.get(split=split)[0]["config"]["seed"] if seed is None else seed
    ent = runs.get(split=split, heuristic="entropy", seed=seed)
    rnd = runs.get(split=split, heuristic="random", seed=seed)
    full = [r for lab, r in runs.full if lab["split"] == split and lab["seed"] == seed]
    if not ent:
        raise ValueError(f"p1: no entropy run of split {split!r} and seed {seed}")
    cfg = ALConfig.from_mapping(ent[0]["config"])
    data = _data(cfg, data_root)
    fig_info = ent[0]["figure"]
    idx, size = fig_info["indices"], fig_info["size"]
    cols = [("ground truth + point labels", None)]
    if full:
        cols.append((f"fully supervised ({full[0]['full_effort_seconds']:.0f} s)", full[0]))
    if rnd:
        cols.append((f"AL random ({rnd[0]['label_seconds']:.0f} s)", rnd[0]))
    cols.append((f"AL entropy ({ent[0]['label_seconds']:.0f} s)", ent[0]))
    fig, axes = plt.subplots(len(idx), len(cols), figsize=(2.9 * len(cols), 2.9 * len(idx)),
                             squeeze=False)
    view = SimpleNamespace(intensity=data.intensity)
    boxes = region_grid((size, size), cfg.n_regions)
    rng = np.random.default_rng(0)
    for r, i in enumerate(idx):
        gray = display_view(view, data.test_gray[i])
        truth = display_view(view, data.test_masks[i].astype(bool))
        for c, (name, res) in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(gray, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if res is None:
                shown = truth
                pts = [region_label(data.test_masks[i], b, rng, [1]) for b in boxes]
                yx = np.array([(p.point.y, p.point.x) for p in pts if p.point is not None])
                if yx.size:
                    yx = yx.reshape(-1, 2)
                    if data.intensity == "hu":
                        yx = (size - 1) - yx
                    ax.scatter(yx[:, 1], yx[:, 0], s=14, c="red", marker="x", lw=1)
                dice = None
            else:
                j = res["figure"]["indices"].index(i)
                pred = decode_mask(res["figure"]["pred"][j], (size, size))
                shown = display_view(view, pred)
                t = data.test_masks[i].astype(bool)
                den = pred.sum() + t.sum()
                dice = 1.0 if den == 0 else 2 * (pred & t).sum() / den
            colour = "red" if res is None else "cyan"
            ax.imshow(np.ma.masked_equal(shown.astype(np.uint8), 0),
                      cmap=ListedColormap([colour]), alpha=0.45, vmin=0, vmax=1,
                      interpolation="nearest")
            if res is not None and truth.any():
                ax.contour(truth.astype(float), levels=[0.5], colors="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if dice is not None:
                ax.set_xlabel(f"Dice {dice:.2f}", fontsize=9)
            ref = data.test.refs[i]
            if c == 0:
                ax.set_ylabel(f"{ref[0]} z={ref[1]}", fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
