"""Tables, verdicts and figures of the P3 chapter (``notebooks/p3_volume_al.ipynb``).

Everything here reads a :class:`covidlib.experiments.p3.P3Results` and P3's quoted numbers
(``covidlib/report/paper_values/p3.yaml``): the setup beside P3's, the Dice curves of P3
Fig. 2, the fully supervised baseline, the mechanism (does the score find the volumes the
model gets wrong?), three-way verdicts, the scorecard rows and the contours of Fig. 3.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from covidlib.data.api import Dataset
from covidlib.data.types import Case
from covidlib.engine import resolve_device
from covidlib.experiments.p3 import (
    _COLOURS,
    _STRATEGY_LABELS,
    P3Results,
    P3Settings,
    _count,
    default_tasks,
    make_model,
    task_spec,
    volume_split,
)
from covidlib.report import paper_values
from covidlib.report.figures import display_view
from covidlib.verdict import Convergence, paired_spread, three_way_verdict
from covidlib.verdict import baseline_converged as _converged
from covidlib.volume_al import (
    STRATEGIES,
    Volume,
    round_weights,
    score_error_correlation,
    volume_dice,
)

__all__ = [
    "MECHANISM_RHO",
    "baseline_converged",
    "baseline_convergence",
    "baseline_curve",
    "contour_figure",
    "describe",
    "figure2",
    "mechanism_frame",
    "mechanism_summary",
    "paper_comparison",
    "paper_numbers",
    "plot_baseline_curve",
    "plot_dice_curves",
    "scorecard_entries",
    "selection_table",
    "verdict",
]

def describe(ds: Dataset, s: P3Settings, seeds: Sequence[int]) -> pd.DataFrame:
    """The chapter's setup beside P3's (Sec. III): split, schedule, model and MC sampling."""
    sp = volume_split(ds, s)
    n_pool = len(sp["pool"])
    k = _count(s.per_iteration, n_pool, "per_iteration")
    n_init = _count(s.initial, n_pool, "initial")
    sizes = sorted({min(n_init + i * k, n_pool) for i in range(int(s.iterations) + 1)})
    ref = _paper_settings()
    ref_sizes = sorted({min(ref["initial_labelled"] + i * ref["per_iteration"], ref["train"])
                        for i in range(4)})
    source = "the manifest's p3 split" if s.split == "auto" and \
        "p3" in ds.manifest.splits else f"drawn with split_seed {s.split_seed}"
    rows = [
        ("volumes (test / val / pool)",
         f"{ref['test']} / {ref['val']} / {ref['train']}",
         f"{len(sp['test'])} / {len(sp['val'])} / {n_pool} ({source})"),
        ("labelled at the start; added per iteration",
         f"{ref['initial_labelled']}; {ref['per_iteration']}", f"{n_init}; {k}"),
        ("labelled volumes per iteration",
         ", ".join(str(x) for x in ref_sizes) + " (our reading)",
         ", ".join(str(x) for x in sizes)),
        ("classes C (used in Eq. 1)", f"{ref['classes_C']}",
         ", ".join(f"{len(task_spec(t, ds, s)['class_names'])} ({t} task)"
                   for t in default_tasks(ds))),
        ("MC passes T; dropout p", f"{ref['mc_passes_T']}; {ref['dropout_p']}",
         f"{s.n_samples}; {s.dropout}"),
        ("epochs per run", f"{ref['epochs_per_run']}",
         f"{s.epochs} first, then {s.warm_epochs} (fine-tuning)" if s.warm_start
         else f"{s.epochs} (retrained from scratch)"),
        ("network", str(ref["model"]),
         f"3D U-Net, {s.base_width} channels, {s.depth} poolings, dropout in the decoder"),
        ("input", "LCTSC CT (about 1 mm in-plane)",
         f"{'x'.join(str(g) for g in s.grid)} grid, HU window {s.window} -> [0, 1]"
         + (f", {'x'.join(str(p) for p in s.patch)} patches" if s.patch else
            ", whole volumes")),
        ("seeds", "not stated", ", ".join(str(x) for x in seeds)),
    ]
    return pd.DataFrame(rows, columns=["setting", "P3", "ours"])


def _paper_settings() -> dict[str, Any]:
    return paper_values.artifact("P3-F2")["settings"]


# --------------------------------------------------------------------------------------------
# Tables and verdicts
# --------------------------------------------------------------------------------------------


def _summary(curves: pd.DataFrame, task: str, metric: str = "dice") -> pd.DataFrame:
    """Mean, std, min and max over seeds of ``metric`` (``dice``: test, ``val_dice``:
    validation) per strategy and iteration."""
    sub = curves[curves["task"] == task]
    if sub.empty:
        raise ValueError(f"p3: no results for task {task!r}")
    g = sub.groupby(["strategy", "iteration"])[metric]
    out = g.agg(["mean", "std", "min", "max", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def _gaps(curves: pd.DataFrame, task: str, metric: str = "dice") -> pd.DataFrame:
    """Per seed and iteration: ``metric`` of variance minus that of random."""
    sub = curves[curves["task"] == task]
    wide = sub.pivot_table(index=["seed", "iteration"], columns="strategy", values=metric)
    if not set(STRATEGIES) <= set(wide.columns):
        raise ValueError(f"p3: task {task!r} needs both strategies to compare them")
    wide = wide.reset_index()
    wide["gap"] = wide["variance"] - wide["random"]
    return wide


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def paper_comparison(curves: pd.DataFrame, paper: Mapping[str, Any], task: str = "heart"
                     ) -> pd.DataFrame:
    """P3's quoted numbers (Fig. 2 / Sec. III: validation Dice) beside our validation Dice
    (like with like) and our test Dice (ours only: P3 quotes none), mean ± std over seeds.

    P3's "iteration 2" and "last" are matched to our iteration 2 and our last iteration.
    """
    val = _summary(curves, task, "val_dice").set_index(["strategy", "iteration"])
    test = _summary(curves, task, "dice").set_index(["strategy", "iteration"])
    gaps = {m: _gaps(curves, task, m) for m in ("val_dice", "dice")}
    last = int(curves["iteration"].max())
    n_all_frac = curves[(curves["task"] == task)].groupby("iteration")["fraction_of_all"].first()

    def ours(summ: pd.DataFrame, strategy: str, it: int) -> str:
        if (strategy, it) not in summ.index:
            return "n/a"
        row = summ.loc[(strategy, it)]
        return _fmt(row["mean"], row["std"])

    def gap(metric: str, it: int) -> str:
        g = gaps[metric]
        g = g[g["iteration"] == it]["gap"]
        return _fmt(g.mean(), g.std(ddof=1) if len(g) > 1 else 0.0) if len(g) else "n/a"

    points = {str(p["iteration"]): p for p in paper["points"]}
    rows = []
    for label, it, pt in (("iteration 1", 1, points["1"]), ("iteration 2", 2, points["2"]),
                          ("last iteration", last, points["last"])):
        for strategy, key in (("variance", "active"), ("random", "random")):
            if key in pt:
                rows.append((f"{label}: {key}", pt[key], ours(val, strategy, it),
                             ours(test, strategy, it)))
        rows.append((f"{label}: active - random", pt["gap"], gap("val_dice", it),
                     gap("dice", it)))
    share = paper_values.artifact("P3-headline")["values"]["labelled_fraction"]
    frac = f"{n_all_frac.get(2, float('nan')):.2f}"
    rows.append(("labelled share of all volumes at iteration 2", share, frac, frac))
    return pd.DataFrame(rows, columns=["quantity", "P3 (LCTSC, validation Dice)",
                                       "ours: validation Dice", "ours: test Dice (P3: none)"])


def paper_numbers() -> dict[str, Any]:
    """P3's quoted numbers for the chapter's prose (glue names -> values), from
    ``paper_values/p3.yaml``: validation Dice at iteration 2 and the last, labelled share."""
    pts = {str(p["iteration"]): p for p in paper_values.artifact("P3-F2")["points"]}
    share = paper_values.artifact("P3-headline")["values"]["labelled_fraction"]
    return {"p3_paper_it2_active": pts["2"]["active"], "p3_paper_it2_random": pts["2"]["random"],
            "p3_paper_last_active": pts["last"]["active"], "p3_paper_share": f"{share:.0%}"}


# --------------------------------------------------------------------------------------------
# The fully supervised baseline and the mechanism (issue: converged baselines, mechanisms)
# --------------------------------------------------------------------------------------------


def baseline_converged(curve: Sequence[Mapping[str, float]], window: int = 3,
                       tol: float = 0.01) -> Convergence:
    """:func:`covidlib.verdict.baseline_converged` of a round's training curve (its
    ``val_dice`` per epoch): flat when the last ``window`` epochs gain less than ``tol``."""
    return _converged([c.get("val_dice") for c in curve], window=window, tol=tol)


def baseline_curve(res: P3Results, task: str) -> pd.DataFrame:
    """Train loss and validation Dice per epoch of the fully supervised baseline (every pool
    volume labelled), one block per seed it was trained for."""
    rows = [{"seed": seed, **c} for (t, seed), r in sorted(res.reference.items()) if t == task
            for c in r.get("curve", [])]
    return pd.DataFrame(rows, columns=["seed", "epoch", "train_loss", "val_dice"])


def plot_baseline_curve(res: P3Results, task: str) -> Figure:
    """The baseline's training loss (left) and validation Dice (right) against epochs."""
    df = baseline_curve(res, task)
    if df.empty:
        raise ValueError(f"p3: no fully supervised baseline of task {task!r} (profile setting "
                         "reference_seeds is 0)")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for seed, g in df.groupby("seed"):
        a1.plot(g["epoch"], g["train_loss"], "o-", ms=3, label=f"seed {seed}")
        a2.plot(g["epoch"], g["val_dice"], "o-", ms=3, label=f"seed {seed}")
    a1.set(xlabel="epoch", ylabel="training loss", title=f"{task}: training loss")
    a2.set(xlabel="epoch", ylabel="validation Dice", ylim=(0, 1),
           title=f"{task}: validation Dice")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    return fig


def mechanism_frame(res: P3Results, task: str, device: str = "cpu") -> pd.DataFrame:
    """Per seed and iteration of the variance strategy: Spearman's rho between the candidates'
    P3 scores and the current model's error (1 - Dice of the target class) on them, and the
    mean error of the volumes it selected and of those it left."""
    spec = res.specs[task]
    rows = []
    for (t, strategy, seed), records in sorted(res.runs.items()):
        if t != task or strategy != "variance":
            continue
        for r in records:
            if not r["scores"]:
                continue
            model = make_model(res.settings, len(spec["class_names"]))
            model.load_state_dict(round_weights(res.checkpoint_root, r["round"]))
            dice = volume_dice(model, [res.volumes[task][c] for c in sorted(r["scores"])],
                               spec["target"], device)
            err = {c: 1.0 - d for c, d in dice.items()}
            chosen = set(r["selected"])
            rest = [err[c] for c in err if c not in chosen]
            rows.append({"seed": seed, "iteration": r["iteration"], "candidates": len(err),
                         "spearman": score_error_correlation(r["scores"], dice),
                         "error_selected": float(np.mean([err[c] for c in chosen])),
                         "error_left": float(np.mean(rest)) if rest else math.nan})
    return pd.DataFrame(rows, columns=["seed", "iteration", "candidates", "spearman",
                                       "error_selected", "error_left"])


#: Mean Spearman rho from which the variance score counts as pointing at the model's errors.
MECHANISM_RHO = 0.3


def mechanism_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """Mean rho over seeds and iterations, the share of positive rhos, and whether the
    mechanism is present (mean rho >= :data:`MECHANISM_RHO`); nan / None without data."""
    rho = frame["spearman"].dropna()
    if rho.empty:
        return {"mean_spearman": math.nan, "positive_share": math.nan, "n": 0, "present": None}
    mean = float(rho.mean())
    return {"mean_spearman": mean, "positive_share": float((rho > 0).mean()), "n": int(rho.size),
            "present": bool(mean >= MECHANISM_RHO)}


def verdict(curves: pd.DataFrame, task: str, *,
            baseline: Convergence | bool | None = None,
            mechanism: Mapping[str, Any] | None = None, metric: str = "val_dice") -> str:
    """Three-way verdict (:func:`covidlib.verdict.three_way_verdict`) on P3's claim that
    variance beats random on ``metric`` (validation Dice, as P3): holds when the mean gap over
    selection rounds and seeds is > 0 and variance wins most seed-rounds; "inconclusive (run
    too small)" from one seed or a mean gap inside the std of the per-seed mean gaps.
    ``baseline``: its convergence (None: not trained); ``mechanism``: :func:`mechanism_summary`."""
    gaps = _gaps(curves, task, metric)
    parts = []
    for it, g in gaps[gaps["iteration"] > 0].groupby("iteration"):
        wins, ties = int((g["gap"] > 0).sum()), int((g["gap"] == 0).sum())
        tied = f", tied in {ties}" if ties else ""
        parts.append(f"iteration {it}: mean gap {g['gap'].mean():+.3f} "
                     f"(variance better in {wins} of {len(g)} seed(s){tied})")
    sub = gaps[gaps["iteration"] > 0]
    if not len(sub):
        return f"{task}: inconclusive: no selection round was run, so nothing is compared"
    mean_gap = float(sub["gap"].mean())
    n_seeds, _, spread = paired_spread(sub.groupby("seed")["gap"].mean().tolist())
    holds = mean_gap > 0 and bool((sub["gap"] > 0).mean() > 0.5)
    order = ("MC-dropout variance selection beats random selection, as in P3" if holds else
             "random selection beats MC-dropout variance selection" if mean_gap < 0 else
             "the two strategies tie or alternate")
    baseline = baseline if baseline is not None else Convergence(
        False, math.nan, None, math.nan, "no fully supervised baseline was trained")
    mech = mechanism or {}
    rho = mech.get("mean_spearman", math.nan)
    what = "validation" if metric == "val_dice" else "test"
    detail = (f"{order} (mean {what} Dice gap over selection rounds and seeds {mean_gap:+.3f}, "
              f"std over {n_seeds} seed(s) {spread:.3f}; mean Spearman rho of P3 score vs "
              f"error {rho:+.2f}); " + "; ".join(parts))
    v = three_way_verdict(holds, baseline, mech.get("present"), detail,
                          mechanism="mechanism (variance points at the model's errors)",
                          n_seeds=n_seeds, gap=mean_gap, spread=spread)
    return f"{task}: {v.text}"


def baseline_convergence(res: P3Results, task: str) -> Convergence | None:
    """:func:`baseline_converged` of ``task``'s fully supervised baseline (the first seed's
    that has not converged when several were trained); None when none was trained."""
    out = [baseline_converged(r["curve"]) for (t, _), r in sorted(res.reference.items())
           if t == task and r.get("curve")]
    if not out:
        return None
    return next((c for c in out if not c.converged), out[0])


def scorecard_entries(res: P3Results, task: str = "heart", device: str = "cpu",
                      mechanism: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``paper``, ``ours`` and ``verdict`` of P3-F2, P3-headline and P3-F3 for
    :func:`covidlib.report.scorecard.record` (heart task, mean over seeds). P3 quotes
    validation Dice, so ours is validation Dice too. ``mechanism``: the task's
    :func:`mechanism_summary` (computed when not given)."""
    curves = res.curves
    summ = _summary(curves, task, "val_dice").set_index(["strategy", "iteration"])["mean"]
    sub = curves[curves["task"] == task]
    last = int(sub["iteration"].max())
    it2 = min(2, last)
    fig2 = paper_values.artifact("P3-F2")
    head_paper = paper_values.artifact("P3-headline")["values"]
    pts = {str(p["iteration"]): p for p in fig2["points"]}

    def at(strategy: str, it: int) -> float:
        return round(float(summ.get((strategy, it), float("nan"))), 4)

    f2_paper = {"it. 2 active": pts["2"]["active"], "it. 2 random": pts["2"]["random"],
                "last active": pts["last"]["active"], "last random": pts["last"]["random"]}
    f2_ours = {f"it. {it2} active": at("variance", it2), f"it. {it2} random": at("random", it2),
               f"last ({last}) active": at("variance", last),
               f"last ({last}) random": at("random", last)}
    share = float(sub[sub["iteration"] == it2]["fraction_of_all"].iloc[0])
    ref = [r["val_dice"] for (t, _), r in res.reference.items() if t == task]
    head_ours: dict[str, Any] = {"labelled share": round(share, 3),
                                 "active val. Dice there": at("variance", it2)}
    if ref:
        full = float(np.mean(ref))
        head_ours["val. Dice, whole pool labelled"] = round(full, 4)
        ratio = at("variance", it2) / full if full > 0 else float("nan")
        head_verdict = (f"with {share:.0%} of the volumes labelled, variance selection reaches "
                        f"{ratio:.0%} of the validation Dice of the whole pool")
    else:
        head_verdict = (f"with {share:.0%} of the volumes labelled (P3: "
                        f"{head_paper['labelled_fraction']:.0%}), variance selection reaches "
                        f"validation Dice {at('variance', it2):.2f} (P3: {pts['2']['active']}); "
                        "this profile trains no whole-pool reference")
    mech = mechanism_summary(mechanism_frame(res, task, device)) if mechanism is None \
        else mechanism
    shown = res.split["test"][:2]
    return {
        "P3-F2": {"paper": f2_paper, "ours": f2_ours,
                  "verdict": verdict(curves, task, baseline=baseline_convergence(res, task),
                                     mechanism=mech)},
        "P3-headline": {"paper": {"labelled share": head_paper["labelled_fraction"],
                                  "active val. Dice there": pts["2"]["active"]},
                        "ours": head_ours, "verdict": head_verdict},
        "P3-F3": {"paper": "qualitative", "ours": f"contours drawn for {', '.join(shown)}",
                  "verdict": "qualitative figure (no numbers to compare); see the P3 chapter"},
    }


def selection_table(res: P3Results, task: str, seed: int | None = None) -> pd.DataFrame:
    """Which volumes each strategy labelled at each iteration, with the P3 scores of the
    variance strategy's candidates (highest first)."""
    seed = res.seeds[0] if seed is None else int(seed)
    rows = []
    for strategy in STRATEGIES:
        for r in res.runs.get((task, strategy, seed), []):
            if not r["selected"]:
                continue
            sc = r["scores"] or {}
            ranked = ", ".join(f"{c} {v:.3g}" for c, v in
                               sorted(sc.items(), key=lambda kv: (-kv[1], kv[0])))
            rows.append({"strategy": strategy, "iteration": r["iteration"],
                         "labelled next": ", ".join(r["selected"]),
                         "P3 score of the candidates (sum of Eq. 1)": ranked or "-"})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


_METRIC_WORDS = {"val_dice": "validation Dice", "dice": "test Dice"}


def plot_dice_curves(curves: pd.DataFrame, task: str, paper: Mapping[str, Any] | None = None,
                     reference: Mapping[tuple[str, int], Mapping[str, Any]] | None = None,
                     metric: str = "val_dice") -> Figure:
    """P3 Fig. 2: validation (``metric="val_dice"``, what P3 plots) or test (``"dice"``) Dice
    of the target class vs iteration, active vs random, mean over seeds with a min-max band;
    with ``paper``, a second panel holds P3's quoted (validation) numbers."""
    if metric not in _METRIC_WORDS:
        raise ValueError(f"p3: metric={metric!r} must be one of {sorted(_METRIC_WORDS)}")
    summ = _summary(curves, task, metric)
    sub = curves[curves["task"] == task]
    n_seeds = sub["seed"].nunique()
    ncols = 2 if paper is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.9), squeeze=False)
    ax = axes[0, 0]
    its = sorted(summ["iteration"].unique())
    labelled = sub.groupby("iteration")["n_labelled"].first()
    for strategy in STRATEGIES:
        s = summ[summ["strategy"] == strategy].sort_values("iteration")
        if s.empty:
            continue
        c = _COLOURS[strategy]
        ax.plot(s["iteration"], s["mean"], "o-", color=c, lw=2,
                label=f"{_STRATEGY_LABELS[strategy]}, mean of {n_seeds} seed(s)")
        if n_seeds > 1:
            ax.fill_between(s["iteration"], s["min"], s["max"], color=c, alpha=0.2, lw=0)
    if reference:
        key = "val_dice" if metric == "val_dice" else "test_target_dice_mean"
        vals = [r[key] for (t, _), r in reference.items() if t == task]
        if vals:
            ax.axhline(float(np.mean(vals)), color="0.4", ls="--", lw=1.2,
                       label="all pool volumes labelled")
    ax.set_xticks(its, [f"{i}\n({labelled[i]} vol.)" for i in its])
    ax.set_xlabel("active-learning iteration (labelled volumes)")
    ax.set_ylabel(f"{_METRIC_WORDS[metric]} ({task})")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    band = " (band: min-max over seeds)" if n_seeds > 1 else ""
    ax.set_title(f"ours: {task}{band}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    if paper is not None:
        ax2 = axes[0, 1]
        pts = {str(p["iteration"]): p for p in paper["points"]}
        last_x = 3  # P3: labelled sets 11, 16, 21, 22 -> iterations 0..3
        for strategy, key in (("variance", "active"), ("random", "random")):
            xs = [2, last_x]
            ys = [pts["2"][key], pts["last"][key]]
            ax2.plot(xs, ys, "s", color=_COLOURS[strategy], ms=8, label=_STRATEGY_LABELS[strategy])
            for x, y in zip(xs, ys, strict=True):
                ax2.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(8, -3),
                             fontsize=8)
        ax2.annotate(f"iteration 1: active - random = {pts['1']['gap']:+.2f}\n(values not given)",
                     (1, 0.3), fontsize=8, ha="center")
        ref = _paper_settings()
        sizes = [min(ref["initial_labelled"] + i * ref["per_iteration"], ref["train"])
                 for i in range(last_x + 1)]
        ax2.set_xticks(range(last_x + 1), [f"{i}{' = last' if i == last_x else ''}\n({n} vol.)"
                                           for i, n in enumerate(sizes)])
        ax2.set_xlim(-0.4, 3.6)
        ax2.set_ylim(0, 1)
        ax2.grid(alpha=0.3)
        ax2.set_xlabel("iteration (labelled volumes, our reading)")
        ax2.set_title("P3 Fig. 2, numbers quoted in Sec. III (LCTSC)", fontsize=10)
        ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def figure2(res: P3Results, task: str, metric: str = "val_dice") -> Figure:
    """:func:`plot_dice_curves` of ``task``; for the heart's validation Dice with P3's quoted
    (validation) numbers beside it. Test Dice is ours only (P3 quotes none)."""
    paper = paper_values.artifact("P3-F2") if task == "heart" and metric == "val_dice" else None
    return plot_dice_curves(res.curves, task, paper, res.reference, metric)


def _upsampled_prediction(model: torch.nn.Module, vol: Volume, target: int, device: str
                          ) -> np.ndarray:
    """Target-class mask of the argmax of the probabilities upsampled (trilinear) to the
    volume's original shape."""
    dev = resolve_device(device)
    model.to(dev).eval()
    with torch.no_grad():
        probs = torch.softmax(model(vol.image[None].to(dev)).float(), dim=1)
        probs = F.interpolate(probs, size=vol.source_shape, mode="trilinear", align_corners=False)
    return (probs.argmax(1)[0] == target).cpu().numpy()


def _truth(case: Case, spec: Mapping[str, Any]) -> np.ndarray:
    src = case.organs if spec["source"] == "organs" else case.mask
    return np.isin(src, spec["classes"][spec["target"]])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    den = a.sum() + b.sum()
    return 1.0 if den == 0 else float(2 * (a & b).sum() / den)


def _pick_z(truth: np.ndarray, n: int, largest: bool = False) -> list[int]:
    """``n`` slices: spread over the middle of the structure (its 30-70 % z range), or with
    ``largest`` the slices where it is largest (at least 3 apart); central slices if absent."""
    area = truth.reshape(truth.shape[0], -1).sum(1)
    zs = np.flatnonzero(area)
    if zs.size == 0:
        zs = np.arange(truth.shape[0])
    if largest:
        picked: list[int] = []
        for z in sorted(zs, key=lambda z: (-area[z], z)):
            if all(abs(int(z) - p) >= 3 for p in picked):
                picked.append(int(z))
            if len(picked) == n:
                break
        return sorted(picked)
    q = np.linspace(0.3, 0.7, n) if n > 1 else np.array([0.5])
    return sorted({int(zs[round(float(x) * (zs.size - 1))]) for x in q})


def contour_figure(res: P3Results, task: str = "heart", iteration: int = 1, n_patients: int = 2,
                   slices_per_patient: int = 2, device: str = "cpu") -> Figure:
    """P3 Fig. 3: contours of the truth (red) and the U-Net (blue) on test slices, for random
    and active selection at ``iteration`` (seed = first seed) and, when run, the model trained
    on the whole pool. Radiological view (:func:`covidlib.report.figures.display_view`)."""
    spec = res.specs[task]
    seed = res.seeds[0]
    methods: list[tuple[str, dict[str, Any]]] = []
    for strategy in ("random", "variance"):
        recs = res.runs.get((task, strategy, seed))
        if recs is None:
            continue
        if not 0 <= iteration < len(recs):
            raise ValueError(f"p3: iteration {iteration} not in 0..{len(recs) - 1}")
        methods.append((f"{_STRATEGY_LABELS[strategy]}, it. {iteration}", recs[iteration]))
    if (task, seed) in res.reference:
        methods.append(("all pool volumes labelled", res.reference[(task, seed)]))
    if not methods:
        raise ValueError(f"p3: no runs of task {task!r} to draw")
    n_classes = len(spec["class_names"])
    cases = {c.case_id: c for c in res.dataset.cases()}
    patients = res.split["test"][:n_patients]
    preds: dict[tuple[int, str], np.ndarray] = {}
    for m, (_, rec) in enumerate(methods):
        model = make_model(res.settings, n_classes)
        model.load_state_dict(round_weights(res.checkpoint_root, rec["round"]))
        for pid in patients:
            preds[(m, pid)] = _upsampled_prediction(model, res.volumes[task][pid], spec["target"],
                                                    device)
    rows = [(pid, z) for pid in patients
            for z in _pick_z(_truth(cases[pid], spec), slices_per_patient,
                             largest=task != "heart")]
    fig, axes = plt.subplots(len(rows), len(methods), squeeze=False,
                             figsize=(3.3 * len(methods), 3.3 * len(rows)))
    lo, hi = (-160.0, 240.0) if task == "heart" else (-1000.0, 400.0)
    for r, (pid, z) in enumerate(rows):
        case = cases[pid]
        truth = _truth(case, spec)
        t_view = display_view(case, truth[z])
        p_views = [display_view(case, preds[(m, pid)][z]) for m in range(len(methods))]
        if task == "heart":  # zoom on the heart
            box = _crop_box(t_view, *p_views)
        else:  # the body (lesions lie anywhere in the lungs)
            box = _crop_box(display_view(case, case.image[z] > -500.0), margin=2)
        for m, (name, _) in enumerate(methods):
            ax = axes[r, m]
            pred = preds[(m, pid)]
            img = display_view(case, case.image[z])[box]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            for view, colour in ((t_view, "red"), (p_views[m], "deepskyblue")):
                if view[box].any():
                    ax.contour(view[box].astype(float), levels=[0.5], colors=colour,
                               linewidths=1.4)
            ax.set_title(f"{name}\n{pid} z={z}: volume Dice {_dice(pred, truth):.2f}",
                         fontsize=8)
            ax.set_axis_off()
    handles = [Line2D([], [], color="red", lw=1.5, label="manual (truth)"),
               Line2D([], [], color="deepskyblue", lw=1.5, label="U-Net prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def _crop_box(*masks: np.ndarray, margin: int = 18) -> tuple[slice, slice]:
    """A square crop around the union of the (displayed) 2D ``masks``, with a margin; the
    whole slice when they are empty."""
    h, w = masks[0].shape
    union = np.zeros((h, w), bool)
    for m in masks:
        union |= m.astype(bool)
    if not union.any():
        return slice(None), slice(None)
    ys, xs = np.nonzero(union)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min()) / 2 + margin
    half = min(half, min(h, w) / 2)
    y0 = int(np.clip(round(cy - half), 0, h - 2 * half))
    x0 = int(np.clip(round(cx - half), 0, w - 2 * half))
    n = round(2 * half)
    return slice(y0, y0 + n), slice(x0, x0 + n)
