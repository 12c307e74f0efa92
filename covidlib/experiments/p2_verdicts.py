"""P2's verdicts: the paper's orderings, the baseline's convergence and each claim's evidence.

Sentences and three-way verdicts computed from the tables of
:mod:`covidlib.experiments.p2_tables` (see :mod:`covidlib.experiments.p2_report`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from covidlib.experiments.p2 import TABLES, TableRuns
from covidlib.experiments.p2_tables import LOWER_IS_BETTER, METRIC_LABELS, _paper
from covidlib.verdict import Convergence, Verdict, baseline_converged, three_way_verdict

__all__ = [
    "BASELINE",
    "baseline_convergence",
    "baseline_curves",
    "claim_verdicts",
    "ordering_verdicts",
    "verdict_summary",
]

# The comparisons P2's text makes about each kind of table (Sec. 4.3, 4.4): (a, b, metric).
_CLAIMS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "segmentation": (("cb_flip_rot", "pl", "dice"), ("cb_flip", "pl", "dice"),
                     ("cb_flip_rot", "cb_flip", "dice"), ("cb_flip_rot", "fully", "dice")),
    "counting": (("cb_lcfcn", "lcfcn", "mae"), ("cb_lcfcn", "lcfcn", "game"),
                 ("lcfcn", "pl", "mae"), ("lcfcn", "pl", "game")),
}


_RANK_METRIC = {"segmentation": "dice", "counting": "mae"}
BASELINE: dict[str, tuple[str, str]] = {"segmentation": ("fully", "val_dice"),
                                        "counting": ("lcfcn", "val_mae")}
"""The baseline whose convergence decides "inconclusive", and its validation score: the fully
supervised network (Tables 2-6); the LCFCN loss for counting (Tables 7-8 have no fully
supervised row; LCFCN is the baseline P2's CB LCFCN is measured against)."""


def _better(a: float, b: float, metric: str) -> bool:
    return a < b if metric in LOWER_IS_BETTER else a > b


def _ranking(values: Mapping[str, float], metric: str) -> list[str]:
    reverse = metric not in LOWER_IS_BETTER
    return sorted(values, key=lambda k: (-values[k] if reverse else values[k], k))


def _short(label: str) -> str:
    return label.replace(" (Ours)", "")


def _compare(frame: pd.DataFrame, a: str, b: str, metric: str) -> str:
    """Does the paper's order of rows ``a`` and ``b`` on ``metric`` hold in our means?

    Rows are named in the paper's order (the better one first). "By more than the seeds'
    spread" means the gap of the means exceeds the sum of the two standard deviations.
    """
    name = METRIC_LABELS.get(metric, metric)
    pa, pb = frame.loc[a, f"{metric}_paper"], frame.loc[b, f"{metric}_paper"]
    if pa != pb and not _better(pa, pb, metric):
        a, b, pa, pb = b, a, pb, pa  # the paper's better row first
    la, lb = _short(frame.loc[a, "label"]), _short(frame.loc[b, "label"])
    ma, mb = frame.loc[a, f"{metric}_mean"], frame.loc[b, f"{metric}_mean"]
    sa, sb = frame.loc[a, f"{metric}_std"], frame.loc[b, f"{metric}_std"]
    ours = f"ours {ma:.3f} ± {sa:.3f} vs {mb:.3f} ± {sb:.3f}"
    if math.isnan(ma) or math.isnan(mb):
        return f"{la} vs {lb} on {name}: not measurable in our runs ({ours})."
    if pa == pb:
        return (f"{la} vs {lb} on {name}: the paper ties them at {pa:.2f}; {ours}, a "
                f"difference of {abs(ma - mb):.3f}.")
    claim = f"the paper has {la} better than {lb} on {name} ({pa:.2f} vs {pb:.2f})"
    gap, noise = abs(ma - mb), sa + sb
    spread = f"(difference {gap:.3f} <= sum of stds {noise:.3f})"
    one_seed = "n_seeds" in frame.columns and min(frame.loc[a, "n_seeds"],
                                                  frame.loc[b, "n_seeds"]) < 2
    if ma == mb:
        verdict = "our runs tie them, so the ordering does not hold"
    elif one_seed:
        verdict = (f"the ordering {'holds' if _better(ma, mb, metric) else 'is reversed'} "
                   "(one seed, no spread to compare the difference with)")
    elif _better(ma, mb, metric):
        verdict = ("the ordering holds, by more than the seeds' spread" if gap > noise else
                   f"the ordering holds on the means but within the seeds' spread {spread}")
    else:
        verdict = ("the ordering is reversed, by more than the seeds' spread" if gap > noise
                   else f"the ordering is reversed on the means, within the seeds' spread "
                   f"{spread}")
    return f"{claim}; {ours}: {verdict}."


def _agreeing_pairs(frame: pd.DataFrame, metric: str) -> tuple[int, int]:
    agree = total = 0
    for a, b in itertools.combinations(frame.index, 2):
        pa, pb = frame.loc[a, f"{metric}_paper"], frame.loc[b, f"{metric}_paper"]
        ma, mb = frame.loc[a, f"{metric}_mean"], frame.loc[b, f"{metric}_mean"]
        if pa == pb or math.isnan(ma) or math.isnan(mb):
            continue
        total += 1
        agree += int(ma != mb and _better(ma, mb, metric) == _better(pa, pb, metric))
    return agree, total


def _ranking_sentence(frame: pd.DataFrame, metric: str) -> str:
    name = METRIC_LABELS.get(metric, metric)
    labels = {k: _short(v) for k, v in frame["label"].items()}
    paper = _ranking(frame[f"{metric}_paper"].to_dict(), metric)
    ours = _ranking(frame[f"{metric}_mean"].dropna().to_dict(), metric)
    agree, total = _agreeing_pairs(frame, metric)
    sign = "<" if metric in LOWER_IS_BETTER else ">"
    return (f"Ranking by {name} (best first): paper {f' {sign} '.join(labels[k] for k in paper)}; "
            f"ours {f' {sign} '.join(labels[k] for k in ours)}. {agree} of {total} pairs are "
            "ordered as in the paper.")


def ordering_verdicts(frame: pd.DataFrame, artifact: str) -> list[str]:
    """The paper's orderings for ``artifact`` checked against our means (and seed spread).

    First the full ranking by the table's main metric (Dice; MAE for counting), then the
    pairwise claims of P2's text: CB(Flip, Rot) + PL vs PL, CB(Flip) + PL vs PL, CB(Flip,
    Rot) vs CB(Flip), CB(Flip, Rot) vs fully supervised (segmentation); CB LCFCN vs LCFCN and
    LCFCN vs point loss on MAE and GAME (counting). Rows missing from ``frame`` are skipped.
    """
    task = TABLES[artifact].task
    out = [_ranking_sentence(frame, _RANK_METRIC[task])]
    for a, b, metric in _CLAIMS[task]:
        if a in frame.index and b in frame.index:
            s = _compare(frame, a, b, metric)
            out.append(s[0].upper() + s[1:])
    if task == "counting" and "regions_per_slice" in frame.attrs:
        out.append(f"For reference, predicting no region at all scores MAE = GAME = "
                   f"{frame.attrs['regions_per_slice']:.2f} on these test slices (their mean "
                   "number of infected regions).")
    return out


def verdict_summary(frame: pd.DataFrame, artifact: str) -> str:
    """One line for the scorecard: pairs agreeing on the main metric + the headline claim."""
    task = TABLES[artifact].task
    metric = _RANK_METRIC[task]
    agree, total = _agreeing_pairs(frame, metric)
    a, b, m = _CLAIMS[task][0]
    head = ""
    if a in frame.index and b in frame.index:
        sentence = _compare(frame, a, b, m)
        head = (f"; {_short(frame.loc[a, 'label'])} vs {_short(frame.loc[b, 'label'])} on "
                f"{METRIC_LABELS[m]}: {sentence.rsplit(': ', 1)[-1].rstrip('.')}")
    return f"{agree}/{total} pairs ordered as in the paper by {METRIC_LABELS[metric]}{head}"


_TOL = {"val_dice": 0.01, "val_mae": 0.05}  # flat = the last epochs gain less than this


def baseline_convergence(tr: TableRuns, window: int = 3) -> Convergence | None:
    """Has the table's baseline (:data:`BASELINE`) converged? Each seed's validation curve
    (MAE negated, so higher is better) is judged by
    :func:`covidlib.verdict.baseline_converged`; the baseline has converged when every seed's
    has (else the first seed that has not is returned, its reason naming the seed).
    ``None`` when the baseline did not run."""
    loss, key = BASELINE[tr.task]
    runs = sorted((r for r in tr.runs if r["loss"] == loss), key=lambda r: r["seed"])
    if not runs:
        return None
    out = []
    for r in runs:
        curve = [rec.get(key) for rec in r["result"].get("history", [])]
        if key == "val_mae":
            curve = [None if v is None else -v for v in curve]
        c = baseline_converged(curve, window=window, tol=_TOL[key])
        out.append(replace(c, reason=f"seed {r['seed']}: {c.reason}"))
    failed = [c for c in out if not c.converged]
    return failed[0] if failed else out[0] if len(out) == 1 else replace(
        out[0], reason="; ".join(c.reason for c in out))


def baseline_curves(tr: TableRuns) -> Figure:
    """The baseline's training loss and validation score per epoch, one line per seed, the
    kept (best validation) epoch marked."""
    loss, key = BASELINE[tr.task]
    runs = [r for r in tr.runs if r["loss"] == loss]
    if not runs:
        raise ValueError(f"{tr.artifact}: no {loss!r} run, so no baseline curve")
    fig, (ax_l, ax_v) = plt.subplots(1, 2, figsize=(9.0, 3.0))
    for r in runs:
        hist = r["result"]["history"]
        ep = [h["epoch"] for h in hist]
        ax_l.plot(ep, [h.get("train_loss") for h in hist], marker=".", label=f"seed {r['seed']}")
        val = [np.nan if h.get(key) is None else h[key] for h in hist]
        line, = ax_v.plot(ep, val, marker=".", label=f"seed {r['seed']}")
        best = r["result"].get("best_epoch")
        if best is not None and 1 <= best <= len(val):
            ax_v.plot([best], [val[best - 1]], "o", color=line.get_color(), mfc="none", ms=9)
    name = {"val_dice": "validation Dice", "val_mae": "validation MAE"}[key]
    ax_l.set(xlabel="epoch", ylabel="training loss", title="training")
    ax_v.set(xlabel="epoch", ylabel=name, title=f"{name} (circle: epoch kept)")
    ax_v.legend(fontsize=8)
    label = _paper(tr.artifact)["rows"][loss]["label"]
    fig.suptitle(f"{tr.artifact} baseline: {label} on {tr.dataset}/{tr.split}", fontsize=10)
    fig.tight_layout()
    return fig


def _mechanism(lungs: pd.DataFrame | None, a: str, b: str) -> bool | None:
    """CB's predictions more inside the lungs than PL's (None: not measured / not CB vs PL)."""
    pair = {a, b}
    if lungs is None or "pl" not in pair or not pair & {"cb_flip", "cb_flip_rot"}:
        return None
    cb = (pair - {"pl"}).pop()
    if cb not in lungs.index or "pl" not in lungs.index:
        return None
    x, y = lungs.loc[cb, "inside_lung_mean"], lungs.loc["pl", "inside_lung_mean"]
    return None if math.isnan(x) or math.isnan(y) else bool(x > y)


def claim_verdicts(frame: pd.DataFrame, tr: TableRuns, lungs: pd.DataFrame | None = None,
                   convergence: Convergence | None = None) -> list[Verdict]:
    """One three-way verdict per claim of P2's text about this table (see
    :func:`ordering_verdicts` for the claims): "inconclusive (run too small)" when either row
    has fewer than two seeds or the difference of the means is inside the seeds' spread (sum
    of the two standard deviations; :func:`covidlib.verdict.run_too_small`); otherwise the
    claim holds when our means order the two rows as the paper does, else "inconclusive"
    unless the baseline converged. For CB vs PL the lung-containment mechanism is reported
    present or absent."""
    conv = convergence if convergence is not None else baseline_convergence(tr)
    out = []
    for a, b, metric in _CLAIMS[tr.task]:
        if a not in frame.index or b not in frame.index:
            continue
        pa, pb = frame.loc[a, f"{metric}_paper"], frame.loc[b, f"{metric}_paper"]
        ma, mb = frame.loc[a, f"{metric}_mean"], frame.loc[b, f"{metric}_mean"]
        if pa == pb or math.isnan(ma) or math.isnan(mb):
            continue
        holds = ma != mb and _better(ma, mb, metric) == _better(pa, pb, metric)
        detail = _compare(frame, a, b, metric)
        n = (int(min(frame.loc[a, "n_seeds"], frame.loc[b, "n_seeds"]))
             if "n_seeds" in frame.columns else None)
        spread = frame.loc[a, f"{metric}_std"] + frame.loc[b, f"{metric}_std"]
        v = three_way_verdict(holds, conv if conv is not None else False,
                              _mechanism(lungs, a, b), detail=detail,
                              mechanism="lung containment (CB inside the lungs more than PL)",
                              n_seeds=n, gap=abs(ma - mb), spread=float(spread))
        if tr.task == "counting":  # the counting tables' baseline is LCFCN (BASELINE)
            v = Verdict(v.label, v.text.replace("the fully supervised baseline",
                                                "the LCFCN baseline"))
        out.append(v)
    return out
