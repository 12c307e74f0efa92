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
  converged baseline (mechanism present or absent) / inconclusive (baseline not converged,
  or the run too small: one seed, or a difference inside the seeds' spread;
  :func:`covidlib.verdict.three_way_verdict`).

Paper values come from ``covidlib/report/paper_values/p2.yaml``, never from this code.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from covidlib.experiments.p2 import TABLES, TableRuns, decode_mask, run_table
from covidlib.experiments.p2_data import slice_views
from covidlib.experiments.p2_tables import (
    LOWER_IS_BETTER,
    METRIC_LABELS,
    METRICS,
    _data_kind,
    _paper,
    _pm,
    a_split_counts,
    data_sources,
    display_table,
    lung_display,
    lung_frame,
    record_settings,
    results_path,
    scorecard_values,
    settings_comparison,
    summary_frame,
    write_results,
)
from covidlib.experiments.p2_verdicts import (
    BASELINE,
    _short,
    baseline_convergence,
    baseline_curves,
    claim_verdicts,
    ordering_verdicts,
    verdict_summary,
)
from covidlib.metrics import confusion, scores
from covidlib.report import paper_values
from covidlib.report.figures import display_view
from covidlib.verdict import INCONCLUSIVE, TOO_SMALL, Convergence, Verdict

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
        """The one-line verdict of the table (its scorecard entry's): the first claim's label
        (with "(run too small)" when that is why it is inconclusive), then
        :func:`verdict_summary`."""
        head = ""
        if self.claims:
            v = self.claims[0]
            small = v.label == INCONCLUSIVE and v.text.startswith(f"{INCONCLUSIVE} ({TOO_SMALL}")
            head = f"{v.label} ({TOO_SMALL}): " if small else f"{v.label}: "
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

    def show(self, table: Any = None) -> None:
        """Display heading, table (paper beside ours; ``table(self)`` instead when given, e.g.
        ``covidlib.report.reference.p2_table`` adds the reference run), verdicts, timing and
        provenance."""
        from IPython.display import Markdown, display

        display(Markdown(self.heading()))
        display(display_table(self.frame) if table is None else table(self))
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


def record_figure3(results_dir: str | Path, report: TableReport, verdict: str) -> Path:
    """Scorecard entry ``P2-F3`` from :func:`figure3_verdict`'s sentence."""
    from covidlib.report import scorecard

    return scorecard.record(results_dir, "P2-F3", paper=paper_values.artifact("P2-F3")["claim"],
                            ours=verdict, verdict=verdict.rsplit(": ", 1)[-1].rstrip("."),
                            provenance=report.provenance)


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
    views = slice_views(tr.dataset, refs, size, tr.settings.crop, data_root)
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
