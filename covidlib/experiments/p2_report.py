"""P2's tables and Figure 3 from the runs of :mod:`covidlib.experiments.p2`.

* :func:`summary_frame`: one row per loss, the paper's value beside our mean and sample
  standard deviation over seeds, for every column of the table (numbers, written to CSV).
* :func:`display_table`: the same as text cells, "paper" and "ours" side by side.
* :func:`ordering_verdicts`: sentences, computed from the numbers, saying whether the
  paper's orderings (e.g. CB(Flip, Rot) + PL > PL on Dice) hold in our runs.
* :func:`figure3`: image, ground truth, PL and CB predictions on the same test slices.
* :func:`baseline_curves` / :func:`baseline_convergence`: the baseline's training and
  validation curve, and whether it flattened (:func:`covidlib.verdict.baseline_converged`).
* :func:`lung_frame`: the mechanism check of P2 Sec. 4.3.1, the share of predicted infection
  pixels inside the lungs per loss (PL vs CB), where the data has lung masks.
* :func:`claim_verdicts`: every claim of the table as reproduced / not reproduced with a
  converged baseline (mechanism present or absent) / inconclusive
  (:func:`covidlib.verdict.three_way_verdict`).

Paper values come from ``covidlib/report/paper_values/p2.yaml``, never from this code.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from covidlib.cache import atomic_write_text
from covidlib.data.manifest import load_manifest
from covidlib.experiments.p2 import TABLES, TableRuns, decode_mask, resolve_data, run_table
from covidlib.experiments.p2_data import (
    STAND_INS,
    open_cached,
    prepared_cases,
    slice_views,
    split_refs,
)
from covidlib.metrics import confusion, scores
from covidlib.report import paper_values
from covidlib.report.figures import display_view
from covidlib.verdict import Convergence, Verdict, baseline_converged, three_way_verdict

__all__ = [
    "BASELINE",
    "LOWER_IS_BETTER",
    "METRICS",
    "METRIC_LABELS",
    "TableReport",
    "a_split_counts",
    "baseline_convergence",
    "baseline_curves",
    "claim_verdicts",
    "data_sources",
    "display_table",
    "figure3",
    "figure3_verdict",
    "lung_display",
    "lung_frame",
    "ordering_verdicts",
    "record_figure3",
    "record_settings",
    "reproduce_table",
    "results_path",
    "scorecard_values",
    "settings_comparison",
    "summary_frame",
    "verdict_summary",
    "write_results",
]

METRICS: dict[str, tuple[str, ...]] = {
    "segmentation": ("dice", "iou", "ppv", "sens", "spec"),
    "counting": ("mae", "game"),
}
METRIC_LABELS: dict[str, str] = {"dice": "Dice", "iou": "IoU", "ppv": "PPV", "sens": "Sens.",
                                 "spec": "Spec.", "mae": "MAE", "game": "GAME(L=4)"}
LOWER_IS_BETTER: frozenset[str] = frozenset({"mae", "game"})

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


def _paper(artifact: str) -> dict[str, Any]:
    art = paper_values.artifact(artifact)
    if "rows" not in art:
        raise ValueError(f"{artifact}: p2.yaml holds no rows for it")
    return art


def _value(x: Any) -> float:
    return math.nan if x is None else float(x)


def summary_frame(tr: TableRuns) -> pd.DataFrame:
    """Paper value, our mean and sample std over seeds (ddof=1; 0 for one seed) per metric.

    Index: the loss ids in the paper's row order; columns: ``label``, ``n_seeds`` and
    ``<metric>_paper``, ``<metric>_mean``, ``<metric>_std`` for every metric of the table.
    """
    art = _paper(tr.artifact)
    task = TABLES[tr.artifact].task
    rows = []
    for loss in TABLES[tr.artifact].losses:
        runs = [r for r in tr.runs if r["loss"] == loss]
        if not runs:
            continue
        paper_row = art["rows"].get(loss)
        if paper_row is None:
            raise ValueError(f"{tr.artifact}: p2.yaml has no row {loss!r}")
        row: dict[str, Any] = {"loss": loss, "label": paper_row["label"], "n_seeds": len(runs)}
        for m in METRICS[task]:
            vals = np.array([_value(r["result"]["scores"].get(m)) for r in runs])
            ok = vals[~np.isnan(vals)]
            row[f"{m}_paper"] = float(paper_row[m])
            row[f"{m}_mean"] = float(ok.mean()) if ok.size else math.nan
            row[f"{m}_std"] = float(ok.std(ddof=1)) if ok.size > 1 else 0.0 if ok.size else math.nan
        rows.append(row)
    if not rows:
        raise ValueError(f"{tr.artifact}: no runs to summarise")
    frame = pd.DataFrame(rows).set_index("loss")
    regions = [r["result"]["scores"].get("regions_per_slice") for r in tr.runs]
    if task == "counting" and regions and None not in regions:
        frame.attrs["regions_per_slice"] = float(np.mean(regions))
    return frame


def _metrics_of(frame: pd.DataFrame) -> list[str]:
    return [c[: -len("_paper")] for c in frame.columns if c.endswith("_paper")]


def display_table(frame: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Text table: rows = the paper's row names, columns = (metric, "paper" | "ours"),
    ours as ``mean ± std`` (the mean alone for one seed)."""
    cols, data = [], {}
    for m in _metrics_of(frame):
        label = METRIC_LABELS.get(m, m)
        cols += [(label, "paper"), (label, "ours")]
        data[(label, "paper")] = [f"{v:.{digits}f}" for v in frame[f"{m}_paper"]]
        data[(label, "ours")] = [
            "n/a" if math.isnan(mu) else f"{mu:.{digits}f}" if n < 2  # one seed: no spread
            else f"{mu:.{digits}f} ± {sd:.{digits}f}"
            for mu, sd, n in zip(frame[f"{m}_mean"], frame[f"{m}_std"], frame["n_seeds"],
                                 strict=True)]
    out = pd.DataFrame(data, index=list(frame["label"]), columns=pd.MultiIndex.from_tuples(cols))
    out.index.name = "Loss function"
    return out


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
                   "(one seed: no spread to compare the difference with)")
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


def scorecard_values(frame: pd.DataFrame, artifact: str) -> tuple[dict, dict]:
    """``(paper, ours)`` flat mappings for the scorecard: the main metric(s) per row."""
    metrics = ("dice",) if TABLES[artifact].task == "segmentation" else ("mae", "game")
    paper, ours = {}, {}
    for _loss, row in frame.iterrows():
        for m in metrics:
            key = row["label"] if len(metrics) == 1 else f"{row['label']} {METRIC_LABELS[m]}"
            paper[key] = float(row[f"{m}_paper"])
            mean = row[f"{m}_mean"]
            ours[key] = None if math.isnan(mean) else round(float(mean), 4)
    return paper, ours


def results_path(results_dir: str | Path, artifact: str, dataset: str) -> Path:
    """``<results_dir>/p2/<artifact>_<dataset>.csv``."""
    return Path(results_dir) / "p2" / f"{artifact}_{dataset}.csv"


def write_results(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the summary frame as CSV, atomically."""
    path = Path(path)
    atomic_write_text(path, frame.to_csv(float_format="%.6g"))
    return path


def settings_comparison(s: Mapping[str, Any]) -> pd.DataFrame:
    """P2's settings (paper values ``P2-S``) beside the profile's."""
    paper = paper_values.artifact("P2-S")["values"]
    ours = {
        "model": f"{s['model']} {s['model_kwargs']}",
        "image_size": s["size"],
        "batch_size": s["batch_size"],
        "epochs": s["epochs"],
        "learning_rate": s["lr"],
        "model_selection": "best validation epoch"
        + (f" (stop after {s['patience']} epochs without gain)" if s.get("patience") else ""),
    }
    rows = [{"setting": k, "paper": str(paper[k]), "ours": str(v)} for k, v in ours.items()]
    return pd.DataFrame(rows).set_index("setting")


def _describe_split(name: str, split: str) -> str:
    if split in STAND_INS:
        return STAND_INS[split]
    spec = load_manifest(name).split(split)
    get = spec.get if isinstance(spec, Mapping) else lambda k, d=None: getattr(spec, k, d)
    if get("method") == "by-case":
        n = [len(get(p) or []) for p in ("train", "val", "test")]
        return f"by case: {n[0]} / {n[1]} / {n[2]} cases train / val / test"
    if get("method") == "by-slice-fraction":
        cases = get("cases") or []
        fr = [float(get(p)) for p in ("train", "val", "test")]
        return (f"{len(cases) or 'all'} volumes; per volume the first {fr[0]:.0%} of the slices "
                f"train, the next {fr[1]:.0%} validate, the last {fr[2]:.0%} test")
    return str(get("method"))


def _data_kind(name: str) -> str:
    """"real", "phantom" or "real 2-D derivative" (the manifest's ``data_kind``)."""
    m = load_manifest(name)
    kind = getattr(m, "data_kind", None)
    return str(kind) if kind else ("phantom" if m.access == "generated" else "real")


def data_sources(tables: Sequence[str], dataset: str = "auto",
                 data_root: str | Path | None = None,
                 max_slices: Mapping[str, int | None] | None = None, crop: float = 1.0
                 ) -> pd.DataFrame:
    """Which data each table runs on here (see :func:`covidlib.experiments.p2.resolve_data`);
    ``max_slices`` (the profile's caps) adds how many slices per part are kept at most;
    ``crop`` (the profile's centre crop) is shown for the tables it applies to (COVID-19-C)."""
    caps = ""
    if max_slices and any(v is not None for v in max_slices.values()):
        caps = "; at most " + " / ".join(
            "all" if max_slices.get(p) is None else str(max_slices[p])
            for p in ("train", "val", "test")) + " slices kept (evenly spread)"
    rows = []
    for artifact in tables:
        name, split, _real = resolve_data(artifact, dataset, data_root)
        cut = crop if TABLES[artifact].crop and crop < 1 else None
        rows.append({"table": paper_values.artifact(artifact)["source"],
                     "P2 data": TABLES[artifact].paper_name, "dataset": name, "split": split,
                     "data": _data_kind(name),
                     "centre crop": "none" if cut is None else f"central {cut:.0%}",
                     "slices": _describe_split(name, split) + caps})
    return pd.DataFrame(rows).set_index("table")


# --------------------------------------------------------------------------------------------
# One table, end to end (what a chapter calls)
# --------------------------------------------------------------------------------------------


@dataclass
class TableReport:
    """A reproduced P2 table: its runs, the summary, the verdicts and where they went."""

    runs: TableRuns
    frame: pd.DataFrame
    verdicts: list[str]
    provenance: dict[str, str]
    seconds: float
    path: Path | None = None
    claims: list[Verdict] = field(default_factory=list)
    convergence: Convergence | None = None
    lungs: pd.DataFrame | None = None

    @property
    def artifact(self) -> str:
        return self.runs.artifact

    def headline(self) -> str:
        """The one-line verdict of the table (its scorecard entry's): the first claim's label,
        then :func:`verdict_summary`."""
        head = f"{self.claims[0].label}: " if self.claims else ""
        return head + verdict_summary(self.frame, self.artifact)

    def timing(self) -> str:
        """Wall time of this call and the summed compute time of its runs."""
        n = len(self.runs.runs)
        hits = sum(bool(r.get("cached")) for r in self.runs.runs)
        compute = sum(float(r["result"].get("seconds", 0.0)) for r in self.runs.runs)
        return (f"{n} runs ({hits} from the results cache) in {self.seconds:.1f} s of wall "
                f"time here; computing them took {compute:.1f} s in total when they ran "
                f"(device {self.runs.runs[0]['result'].get('device', '?')}).")

    def evidence(self) -> str:
        """Markdown: the baseline's convergence, the mechanism and one verdict per claim."""
        loss = BASELINE[self.runs.task][0]
        label = _paper(self.artifact)["rows"][loss]["label"]
        conv = ("did not run" if self.convergence is None else
                f"{'converged' if self.convergence.converged else 'not converged'} "
                f"({self.convergence.reason})")
        lines = [f"**Baseline** ({label}): {conv}; its curve is below."]
        if self.lungs is not None:
            lu = self.lungs
            parts = [f"{_short(lab)} {_pm(m, sd)}" for lab, m, sd in zip(
                lu["label"], lu["inside_lung_mean"], lu["inside_lung_std"], strict=True)]
            lines.append("**Mechanism** (P2 Sec. 4.3.1, share of predicted infection pixels "
                         "inside the lung mask; ground truth "
                         f"{self.lungs['ground_truth'].mean():.2f}): " + "; ".join(parts) + ".")
        claims = [f"- **{v.label}**{v.text[len(v.label):]}" for v in self.claims]
        return "\n\n".join(lines) + "\n\n" + "\n".join(claims)

    def heading(self) -> str:
        art = paper_values.artifact(self.artifact)
        tr = self.runs
        data = (f"**{_data_kind(tr.dataset)}** data" if tr.real else
                f"the **synthetic** stand-in `{tr.split}`")
        return (f"### {art['source']}: {art['title']}\n\n{TABLES[self.artifact].paper_name} "
                f"in P2; here `{tr.dataset}` split `{tr.split}` ({data}); "
                f"{self.frame['n_seeds'].max()} seed(s), profile `{tr.profile}`.")

    def show(self) -> None:
        """Display heading, table (paper beside ours), verdicts, timing and provenance."""
        from IPython.display import Markdown, display

        display(Markdown(self.heading()))
        display(display_table(self.frame))
        display(Markdown("\n".join(f"- {v}" for v in self.verdicts)))
        display(Markdown(self.evidence()))
        if self.lungs is not None:
            display(lung_display(self.lungs))
        if any(r["loss"] == BASELINE[self.runs.task][0] for r in self.runs.runs):
            fig = baseline_curves(self.runs)
            display(fig)
            plt.close(fig)
        prov = " · ".join(f"{k}: {v}" for k, v in self.provenance.items() if v)
        display(Markdown(f"*{self.timing()}*  \n*{prov}*"))


def reproduce_table(artifact: str, *, dataset: str = "auto", profile: str = "cpu",
                    overrides: Mapping[str, Any] | None = None, seeds: Sequence[int] = (0, 1),
                    losses: Sequence[str] | None = None, device: str = "auto",
                    data_root: str | Path | None = None,
                    results_dir: str | Path | None = None, record: bool = True,
                    progress: bool = True) -> TableReport:
    """Run (or load) every run of ``artifact``, summarise it, write
    ``<results_dir>/p2/<artifact>_<dataset>.csv`` and record the scorecard entry."""
    from covidlib.report import provenance as prov_mod
    from covidlib.report import scorecard

    t0 = time.perf_counter()
    tr = run_table(artifact, dataset, profile, overrides, seeds, losses, device, data_root,
                   results_dir, progress)
    frame = summary_frame(tr)
    verdicts = ordering_verdicts(frame, artifact)
    conv, lungs = baseline_convergence(tr), lung_frame(tr)
    claims = claim_verdicts(frame, tr, lungs, conv)
    used = tr.runs[0]["result"].get("device", device)
    prov = prov_mod.provenance(profile, f"{tr.dataset}/{tr.split}",
                               "cuda" if str(used).startswith("cuda") else "cpu", tr.real)
    path = None
    if results_dir is not None:
        path = write_results(frame, results_path(results_dir, artifact, tr.dataset))
    report = TableReport(tr, frame, verdicts, prov, time.perf_counter() - t0, path, claims,
                         conv, lungs)
    if results_dir is not None and record:
        paper, ours = scorecard_values(frame, artifact)
        scorecard.record(results_dir, artifact, paper=paper, ours=ours,
                         verdict=report.headline(), provenance=prov,
                         note=f"{int(frame['n_seeds'].max())} seed(s); mean over seeds")
    return report


def record_settings(results_dir: str | Path, s: Mapping[str, Any], provenance: Mapping[str, str]
                    ) -> Path:
    """Scorecard entry ``P2-S``: the profile's settings against P2's, differences in words."""
    from covidlib.report import scorecard

    table = settings_comparison(s)
    differ = [k.replace("_", " ") for k, row in table.iterrows()
              if k != "model_selection" and row["paper"] != row["ours"]]
    verdict = ("same settings as P2" if not differ else
               "differs from P2 in " + ", ".join(differ) + " (see the chapter)")
    return scorecard.record(results_dir, "P2-S", paper=dict(table["paper"]),
                            ours=dict(table["ours"]), verdict=verdict, provenance=provenance)


def record_figure3(results_dir: str | Path, report: TableReport, verdict: str) -> Path:
    """Scorecard entry ``P2-F3`` from :func:`figure3_verdict`'s sentence."""
    from covidlib.report import scorecard

    return scorecard.record(results_dir, "P2-F3", paper=paper_values.artifact("P2-F3")["claim"],
                            ours=verdict, verdict=verdict.rsplit(": ", 1)[-1].rstrip("."),
                            provenance=report.provenance)


# --------------------------------------------------------------------------------------------
# Figure 3
# --------------------------------------------------------------------------------------------

_OVERLAY = {"gt": (1.0, 0.85, 0.0, 0.55), "pl": (0.95, 0.2, 0.2, 0.55),
            "cb": (0.1, 0.8, 1.0, 0.55)}


def _cb_loss(tr: TableRuns) -> str:
    for loss in ("cb_flip_rot", "cb_flip"):
        if any(r["loss"] == loss for r in tr.runs):
            return loss
    raise ValueError(f"{tr.artifact}: Figure 3 needs a CB run (cb_flip_rot or cb_flip)")


def _figure_data(tr: TableRuns, seed: int | None, data_root: str | Path | None
                 ) -> tuple[list[dict[str, Any]], str, int]:
    """Per Figure 3 slice: ref, image, ground truth, case and the PL / CB predictions."""
    seeds = sorted({r["seed"] for r in tr.runs})
    seed = seeds[0] if seed is None else seed
    cb = _cb_loss(tr)
    res = {"pl": tr.result("pl", seed), "cb": tr.result(cb, seed)}
    fig = res["pl"]["figure"]
    refs = [(str(c), int(z)) for c, z in fig["refs"]]
    if [(str(c), int(z)) for c, z in res["cb"]["figure"]["refs"]] != refs:
        raise ValueError(f"{tr.artifact}: PL and CB runs kept different Figure 3 slices")
    size = int(fig["size"])
    views = slice_views(tr.dataset, refs, size, tr.settings.get("crop", 1.0), data_root)
    out = []
    for i, (ref, (img, gt, case)) in enumerate(zip(refs, views, strict=True)):
        out.append({"ref": ref, "image": img, "gt": gt, "case": case,
                    **{k: decode_mask(r["figure"]["pred"][i], (size, size))
                       for k, r in res.items()}})
    return out, cb, seed


def figure3(tr: TableRuns, seed: int | None = None, data_root: str | Path | None = None
            ) -> Figure:
    """P2 Fig. 3: per test slice, the image, the ground truth, the PL prediction and the CB
    prediction (CB(Flip, Rot) + PL, else CB(Flip) + PL) of the run with ``seed`` (default:
    the first seed). The ground truth's outline is drawn on the prediction panels too; each
    title gives the slice's Dice. HU volumes are shown in radiological orientation."""
    items, cb, seed = _figure_data(tr, seed, data_root)
    if not items:
        raise ValueError(f"{tr.artifact}: no infected test slice was kept for Figure 3")
    cb_label = {"cb_flip_rot": "CB(Flip, Rot) + PL", "cb_flip": "CB(Flip) + PL"}[cb]
    columns = [("image", None), ("Ground truth", "gt"), ("Point loss (PL)", "pl"),
               (cb_label, "cb")]
    fig, axes = plt.subplots(len(items), 4, figsize=(10.4, 2.8 * len(items) + 0.4),
                             squeeze=False)
    for row, item in zip(axes, items, strict=True):
        case = item["case"]
        gt = display_view(case, item["gt"])
        for ax, (title, key) in zip(row, columns, strict=True):
            ax.imshow(display_view(case, item["image"]), cmap="gray", vmin=0, vmax=255,
                      interpolation="nearest")
            if key is None:  # a slice of a volume, or an image of a slice set
                cid, z = item["ref"]
                title = f"{cid}, slice {z}" if case.n_slices > 1 else f"image {cid}"
            else:
                mask = display_view(case, item[key])
                ax.imshow(np.ma.masked_equal(mask.astype(np.uint8), 0),
                          cmap=ListedColormap([_OVERLAY[key]]), vmin=0.5, vmax=1.5,
                          interpolation="nearest")
                if key != "gt":
                    if gt.any():
                        ax.contour(gt, levels=[0.5], colors=[_OVERLAY["gt"][:3]],
                                   linewidths=1.0)
                    title = f"{title}\nDice {scores(confusion(item[key], item['gt']))['dice']:.2f}"
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
    fig.suptitle(f"{tr.dataset} / {tr.split}, seed {seed}: prediction in colour, ground truth "
                 "outlined in yellow", fontsize=10)
    fig.tight_layout()
    return fig


def figure3_verdict(tr: TableRuns, seed: int | None = None,
                    data_root: str | Path | None = None) -> str:
    """Whether the CB predictions are closer to the ground truth than PL's (P2 Sec. 4.3.1),
    on the slices of :func:`figure3` (per-slice Dice)."""
    items, _cb, seed = _figure_data(tr, seed, data_root)
    if not items:
        raise ValueError(f"{tr.artifact}: no infected test slice was kept for Figure 3")
    d_pl = [scores(confusion(it["pl"], it["gt"]))["dice"] for it in items]
    d_cb = [scores(confusion(it["cb"], it["gt"]))["dice"] for it in items]
    wins = sum(c > p for c, p in zip(d_cb, d_pl, strict=True))
    holds = "holds" if 2 * wins > len(items) else "does not hold"
    return (f"On the {len(items)} slices shown (seed {seed}) the CB prediction has the higher "
            f"Dice on {wins} (mean Dice CB {np.mean(d_cb):.2f} vs PL {np.mean(d_pl):.2f}): the "
            f"paper's claim that CB masks are closer to the ground truth {holds} here.")


# --------------------------------------------------------------------------------------------
# Evidence: the baseline's curve, the lung-containment mechanism, three-way verdicts
# --------------------------------------------------------------------------------------------

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


def lung_frame(tr: TableRuns) -> pd.DataFrame | None:
    """Share of predicted infection pixels inside the lungs (P2 Sec. 4.3.1), mean and sample
    std over seeds per loss, beside the ground truth's share; ``None`` without lung masks."""
    rows = []
    for loss in TABLES[tr.artifact].losses:
        runs = [r for r in tr.runs if r["loss"] == loss]
        vals = np.array([_value(r["result"]["scores"].get("lung_containment")) for r in runs])
        truth = [_value(r["result"]["scores"].get("lung_containment_truth")) for r in runs]
        if not runs or np.isnan(truth).all():
            continue
        ok = vals[~np.isnan(vals)]
        rows.append({"loss": loss, "label": _paper(tr.artifact)["rows"][loss]["label"],
                     "inside_lung_mean": float(ok.mean()) if ok.size else math.nan,
                     "inside_lung_std": float(ok.std(ddof=1)) if ok.size > 1 else math.nan,
                     "ground_truth": float(np.nanmean(truth))})
    return pd.DataFrame(rows).set_index("loss") if rows else None


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
    :func:`ordering_verdicts` for the claims): the claim holds when our means order the two
    rows as the paper does; otherwise "inconclusive" unless the baseline converged, and for
    CB vs PL the lung-containment mechanism is reported present or absent."""
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
        v = three_way_verdict(holds, conv if conv is not None else False,
                              _mechanism(lungs, a, b), detail=detail,
                              mechanism="lung containment (CB inside the lungs more than PL)")
        if tr.task == "counting":  # the counting tables' baseline is LCFCN (BASELINE)
            v = Verdict(v.label, v.text.replace("the fully supervised baseline",
                                                "the LCFCN baseline"))
        out.append(v)
    return out


def a_split_counts(dataset: str = "auto", data_root: str | Path | None = None,
                   max_slices: Mapping[str, int | None] | None = None) -> dict[str, int]:
    """COVID-19-A split sizes for the book's prose (glue): as P2 prints them (n = 50 / 5 / 48;
    50 + 5 + 48 = 103 > 98 images, so the 5 validation images are counted inside the 50) and
    as Table 2 uses them here (the split of :func:`~covidlib.experiments.p2.resolve_data`,
    capped by ``max_slices``)."""
    printed = paper_values.artifact("P2-S")["values"]["a_split_printed"]
    name, split, _real = resolve_data("P2-T2", dataset, data_root)
    ds = open_cached(name, data_root)
    parts = split_refs(ds, split, prepared_cases(ds, 1.0), max_slices)
    return {"paper_train": int(printed["train"]), "paper_val": int(printed["val"]),
            "paper_test": int(printed["test"]),
            "paper_images": int(printed["train"]) + int(printed["test"]),
            "paper_train_only": int(printed["train"]) - int(printed["val"]),
            **{f"ours_{p}": len(parts[p]) for p in ("train", "val", "test")}}


def lung_display(lungs: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """:func:`lung_frame` as text: one line per loss (``mean ± std`` over seeds), then the
    ground truth's share as the last line."""
    shown = [_pm(m, sd, digits)
             for m, sd in zip(lungs["inside_lung_mean"], lungs["inside_lung_std"], strict=True)]
    return pd.DataFrame(
        {"predicted infection pixels inside the lungs": [
            *shown, f"{lungs['ground_truth'].mean():.{digits}f}"]},
        index=pd.Index([*lungs["label"], "Ground truth (expert masks)"], name="Loss function"))


def _pm(mean: float, sd: float, digits: int = 2) -> str:
    """``mean ± sd``; the mean alone when ``sd`` is nan (one seed); "n/a" without a mean."""
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"
