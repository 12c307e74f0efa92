"""P2's result tables: paper beside ours per loss, data sources, settings and the lung check.

The numbers behind :mod:`covidlib.experiments.p2_report` (CSV and text cells); the verdicts
on them are in :mod:`covidlib.experiments.p2_verdicts`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidlib.cache import atomic_write_text
from covidlib.data.manifest import load_manifest
from covidlib.experiments.p2 import TABLES, P2Settings, TableRuns, resolve_data
from covidlib.experiments.p2_data import STAND_INS, open_cached, prepared_cases, split_refs
from covidlib.report import paper_values

__all__ = [
    "LOWER_IS_BETTER",
    "METRICS",
    "METRIC_LABELS",
    "a_split_counts",
    "data_sources",
    "display_table",
    "lung_display",
    "lung_frame",
    "record_settings",
    "results_path",
    "scorecard_values",
    "settings_comparison",
    "summary_frame",
    "write_results",
]

METRICS: dict[str, tuple[str, ...]] = {
    "segmentation": ("dice", "iou", "ppv", "sens", "spec"),
    "counting": ("mae", "game"),
}
METRIC_LABELS: dict[str, str] = {"dice": "Dice", "iou": "IoU", "ppv": "PPV", "sens": "Sens.",
                                 "spec": "Spec.", "mae": "MAE", "game": "GAME(L=4)"}
LOWER_IS_BETTER: frozenset[str] = frozenset({"mae", "game"})


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


def settings_comparison(s: P2Settings) -> pd.DataFrame:
    """P2's settings (paper values ``P2-S``) beside the profile's."""
    paper = paper_values.artifact("P2-S")["values"]
    ours = {
        "model": f"{s.model} {s.model_kwargs}",
        "image_size": s.size,
        "batch_size": s.batch_size,
        "epochs": s.epochs,
        "learning_rate": s.lr,
        "model_selection": "best validation epoch"
        + (f" (stop after {s.patience} epochs without gain)" if s.patience else ""),
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


def record_settings(results_dir: str | Path, s: P2Settings, provenance: Mapping[str, str]
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
