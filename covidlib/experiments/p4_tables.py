"""P4 chapters' tables: per-fold and average Dice / HD beside P4 Tables 1-4, the paired
ordering verdicts and the learned weights (re-exported by :mod:`covidlib.experiments.p4_report`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from covidlib.experiments.p4 import (
    METHOD_LABELS,
    PAPER_NAMES,
    P4Results,
)
from covidlib.models import resunet3d_p4, resunet3d_table

# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _fmt(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fold_summary(res: P4Results, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Per method and fold: Dice and HD mean/std over the test cases with infection (seeds
    pooled), the numbers of cases and of empty predictions (HD undefined, left out)."""
    methods = list(methods or res.methods)
    f = res.frame[(~res.frame["empty_truth"]) & res.frame["method"].isin(methods)]
    out = []
    for (m, fold), g in f.groupby(["method", "fold"], sort=False):
        hd = g["hd"].dropna()
        out.append({"method": m, "fold": fold, "dice_mean": g["dice"].mean(),
                    "dice_std": g["dice"].std(ddof=0), "hd_mean": hd.mean(),
                    "hd_std": hd.std(ddof=0), "n": len(g), "n_empty_pred": int(
                        g["empty_pred"].sum())})
    return pd.DataFrame(out)


def fold_table(res: P4Results, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Ours in the layout of P4 Tables 2-3: rows (method, DS / HD), columns Fold-k and
    Average (mean of the fold means ± mean of the fold standard deviations, as P4 does)."""
    methods = list(methods or res.methods)
    summ = fold_summary(res, methods)
    rows = []
    for m in methods:
        g = summ[summ["method"] == m].sort_values("fold")
        for metric, key, digits in (("DS↑", "dice", 3), ("HD↓", "hd", 2)):
            row = {"Method": METHOD_LABELS[m], "Met.": metric}
            for _, r in g.iterrows():
                row[f"Fold-{int(r['fold']) + 1}"] = _fmt(r[f"{key}_mean"], r[f"{key}_std"],
                                                         digits)
            row["Average"] = _fmt(g[f"{key}_mean"].mean(), g[f"{key}_std"].mean(), digits)
            rows.append(row)
    return pd.DataFrame(rows)


def averages(res: P4Results, methods: Sequence[str] | None = None) -> dict[str, dict]:
    """``{method: {"dice": avg, "dice_std": avg std, "hd": avg, "hd_std": ...}}``."""
    summ = fold_summary(res, methods)
    out = {}
    for m, g in summ.groupby("method", sort=False):
        out[m] = {"dice": float(g["dice_mean"].mean()), "dice_std": float(g["dice_std"].mean()),
                  "hd": float(g["hd_mean"].mean()), "hd_std": float(g["hd_std"].mean())}
    return out


def _paper(artifact: str) -> dict[str, Any]:
    from covidlib.report import paper_values

    return paper_values.artifact(artifact)


def paper_table(artifact: str) -> pd.DataFrame:
    """P4 Table 2 or 3 as printed (values from ``paper_values/p4.yaml``)."""
    art = _paper(artifact)
    rows = []
    for r in art["rows"]:
        for metric, key in (("DS↑", "dice"), ("HD↓", "hd")):
            row = {"Method": r["method"], "Met.": metric}
            for k, (mean, std) in enumerate(r[key]["folds"]):
                row[f"Fold-{k + 1}"] = _fmt(mean, std, 3 if key == "dice" else 2)
            mean, std = r[key]["average"]
            row["Average"] = _fmt(mean, std, 3 if key == "dice" else 2)
            rows.append(row)
    return pd.DataFrame(rows)


def paper_averages(artifact: str) -> dict[str, dict[str, float]]:
    """``{method key: {"dice": avg, "hd": avg}}`` of P4 Table 2 or 3."""
    art = _paper(artifact)
    key_of = {v: k for k, v in PAPER_NAMES.items()}
    return {key_of[r["method"]]: {"dice": r["dice"]["average"][0], "hd": r["hd"]["average"][0]}
            for r in art["rows"]}


def _paired(res: P4Results, a: str, b: str) -> tuple[float, float, int]:
    """Mean and standard error of the per-case Dice difference a - b (same folds, seeds
    and test cases; cases with infection only)."""
    f = res.frame[~res.frame["empty_truth"]]
    pa = f[f["method"] == a].set_index(["fold", "seed", "case_id"])["dice"]
    pb = f[f["method"] == b].set_index(["fold", "seed", "case_id"])["dice"]
    d = (pa - pb).dropna()
    if len(d) < 2:
        return float(d.mean()) if len(d) else math.nan, math.nan, len(d)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), len(d)


def ordering_verdict(res: P4Results, artifact: str) -> dict[str, Any]:
    """Does P4's ordering of the methods (by average Dice) hold in our run?

    Returns the two orderings, their Spearman rank correlation, whether P4's best method
    is our best, and for every re-weighting method its paired Dice difference to the
    baseline (plain pseudo-labels for Table 2, fully supervised for Table 3) with its
    standard error; ``text`` says it in words.
    """
    paper = paper_averages(artifact)
    ours = averages(res)
    methods = [m for m in paper if m in ours]
    if len(methods) < 2:
        raise ValueError(f"{artifact}: need at least two of {list(paper)} in the results")
    p_order = sorted(methods, key=lambda m: -paper[m]["dice"])
    o_order = sorted(methods, key=lambda m: -ours[m]["dice"])
    rank_p = {m: i for i, m in enumerate(p_order)}
    rank_o = {m: i for i, m in enumerate(o_order)}
    n = len(methods)
    rho = 1 - 6 * sum((rank_p[m] - rank_o[m]) ** 2 for m in methods) / (n * (n * n - 1))
    base = "semi" if "semi" in methods else "fully"
    diffs = {}
    for m in methods:
        if m in ("fully", "semi"):
            continue
        mean, se, k = _paired(res, m, base)
        diffs[m] = {"diff": mean, "se": se, "n": k,
                    "beats": bool(math.isfinite(se) and mean > 2 * se),
                    "loses": bool(math.isfinite(se) and mean < -2 * se)}
    best = p_order[0]
    lines = [
        f"Paper's order by mean Dice: {', '.join(PAPER_NAMES[m] for m in p_order)}.",
        f"Ours: {', '.join(METHOD_LABELS[m] for m in o_order)} "
        f"(Spearman rank correlation {rho:+.2f}).",
        f"P4's best method ({METHOD_LABELS[best]}) is "
        + ("also our best." if o_order[0] == best else
           f"our #{rank_o[best] + 1} of {n}; ours is {METHOD_LABELS[o_order[0]]}."),
    ]
    n_beat = sum(d["beats"] for d in diffs.values())
    n_lose = sum(d["loses"] for d in diffs.values())
    detail = "; ".join(f"{METHOD_LABELS[m]} {d['diff']:+.3f} ± {d['se']:.3f}"
                       for m, d in diffs.items() if math.isfinite(d["diff"]))
    n_rest = len(diffs) - n_beat - n_lose
    rest = f"; {n_rest} within two standard errors (not distinguishable)" if n_rest else ""
    lines.append(
        f"Against {METHOD_LABELS[base]} (paired per-case Dice difference ± standard error over "
        f"{max((d['n'] for d in diffs.values()), default=0)} test cases × seeds; the spread "
        f"between training runs is not in it): {detail}. {n_beat} of {len(diffs)} "
        f"re-weighting variants are better by more than two standard errors, {n_lose} worse"
        f"{rest}.")
    return {"paper_order": p_order, "our_order": o_order, "spearman": rho,
            "best_holds": o_order[0] == best, "vs_baseline": diffs, "baseline": base,
            "text": " ".join(lines)}


def table4(res: P4Results) -> pd.DataFrame:
    """P4 Table 4 (Dice on the Benchmark, other published methods) with our rows added.

    The other methods' numbers are the paper's (labelled so); our rows are this run's
    average Dice (mean over folds ± mean per-fold std) of the methods we trained.
    """
    art = _paper("P4-T4")
    ours = averages(res)
    ours_of = {"Our 3D UNet": "fully", "Proposed RGS": "rgs", "Proposed RGS+AL": "rgs_al",
               "Proposed RGS&M+AL": "rgsm_al"}
    rows = []
    for r in art["rows"]:
        mean, std = r["dice"]
        paper = f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"
        m = ours_of.get(r["method"])
        mine = _fmt(ours[m]["dice"], ours[m]["dice_std"], 4) if m in ours else "not run"
        rows.append({"Method type": r["type"], "Methods": r["method"], "Mean Dice (paper)":
                     paper, "Mean Dice (ours)": mine})
    if "semi" in ours:
        rows.append({"Method type": "Semi-supervised (ours)",
                     "Methods": f"{METHOD_LABELS['semi']} (weights 1/C_p, P4's network; "
                                "not Inf-Net's progressive scheme)",
                     "Mean Dice (paper)": "—",
                     "Mean Dice (ours)": _fmt(ours["semi"]["dice"], ours["semi"]["dice_std"],
                                              4)})
    return pd.DataFrame(rows)


def table1() -> pd.DataFrame:
    """P4 Table 1 printed from the actual model, with the paper's per-row counts beside
    ours (``params_p4`` books residual parameters in the unit's first row, as P4 does)."""
    t = resunet3d_table(resunet3d_p4())
    paper_rows = _paper("P4-T1")["rows"]
    body = t[t["layer"] != "Total"].reset_index(drop=True)
    if len(body) != len(paper_rows):
        raise ValueError(f"P4 Table 1 has {len(paper_rows)} rows, the model {len(body)}")
    body["paper"] = [int(r["params"]) for r in paper_rows]
    body["match"] = body["params_p4"] == body["paper"]
    total = t[t["layer"] == "Total"].copy()
    total["paper"] = int(_paper("P4-T1")["total"])
    total["match"] = total["params_p4"] == total["paper"]
    return pd.concat([body, total], ignore_index=True)


def table1_verdict(t: pd.DataFrame) -> str:
    """Words for :func:`table1`: the total and which rows differ from the paper."""
    body = t[t["layer"] != "Total"]
    total = t[t["layer"] == "Total"].iloc[0]
    bad = body[~body["match"]]
    paper_sum = int(body["paper"].sum())
    text = (f"Our model has {int(total['params_p4']):,} trainable parameters; P4 Table 1 states "
            f"{int(total['paper']):,} ({'equal' if total['match'] else 'different'}). "
            f"{len(body) - len(bad)} of {len(body)} rows agree exactly.")
    if len(bad):
        diffs = ", ".join(f"row {i + 1} ({r['block']}): paper {r['paper']:,}, ours "
                          f"{r['params_p4']:,}" for i, r in bad.iterrows())
        text += (f" Differing rows: {diffs}; the paper's rows sum to {paper_sum:,}, not to its "
                 "stated total, so these rows are misprints in the paper.")
    return text


def weights_table(res: P4Results) -> pd.DataFrame:
    """Do the weights find the bad pseudo-labels? Per re-weighting method (synthetic pool,
    whose hidden masks measure each pseudo-labelled patch's Dice): Spearman correlation of
    weight and patch quality, and the mean quality of the patches kept (w* > 0) and
    dropped (w* = 0) by the update."""
    rows = []
    for m in res.methods:
        if m in ("fully", "semi"):
            continue
        w, q = [], []
        for (mm, _, _), r in res.runs.items():
            if mm == m and r["history"].get("quality"):
                w += [v for step in r["history"]["w_star"] for v in step]
                q += [v for step in r["history"]["quality"] for v in step]
        if not q:
            continue
        wa, qa = np.asarray(w), np.asarray(q)
        rho = pd.Series(wa).corr(pd.Series(qa), method="spearman") if wa.std() > 0 else np.nan
        kept, dropped = qa[wa > 0], qa[wa == 0]
        rows.append({"Method": METHOD_LABELS[m], "patches": len(qa),
                     "Spearman(weight, pseudo-label Dice)": rho,
                     "share dropped (w* = 0)": float((wa == 0).mean()),
                     "Dice of kept patches": float(kept.mean()) if kept.size else np.nan,
                     "Dice of dropped patches": float(dropped.mean()) if dropped.size
                     else np.nan})
    return pd.DataFrame(rows)


