"""The P4 chapters run under papermill (tiny profile) and write every row and column; the
2-D variant runs on the real COVID-SemiSeg slices when they are present."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest

from covidlib.data.phantom import PhantomConfig, write_dataset
from covidlib.experiments import p4

REPO = Path(__file__).resolve().parents[1]
# 16 x 8 x 8 mm voxels and 16^3 patches: a few seconds per network on one core
TINY = {"spacing": [16.0, 8.0, 8.0], "patch": [16, 16, 16], "teacher_steps": 2,
        "student_steps": 2, "pool_size": 2, "pool_shape": [16, 48, 48], "figure_cases": 2}


@pytest.fixture(scope="module")
def small_phantom(tmp_path_factory) -> Path:
    """The 20-case phantom at 16 x 64 x 64 voxels (about 5 s): same cases, sites and splits
    as the default one, small enough that scoring 30 volumes takes a second."""
    root = tmp_path_factory.mktemp("p4data")
    write_dataset(PhantomConfig(shape=(16, 64, 64)), root / "synthetic", progress=False,
                  workers=1)
    return root


def _run(tmp_path: Path, notebook: str, synthetic_root: Path) -> nbformat.NotebookNode:
    out = tmp_path / f"{notebook}.ipynb"
    papermill.execute_notebook(
        str(REPO / "notebooks" / f"{notebook}.ipynb"), str(out), kernel_name="python3",
        cwd=str(REPO / "notebooks"), progress_bar=False,
        parameters={"profile": "cpu", "dataset": "synthetic", "data_root": str(synthetic_root),
                    "device": "cpu", "seeds": [0], "results_dir": str(tmp_path / "results"),
                    "overrides": TINY})
    return nbformat.read(out, as_version=4)


def _pngs(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)


def test_p4_notebooks(tmp_path, small_phantom):
    results = tmp_path / "results"
    nb = _run(tmp_path, "p4_ablation", small_phantom)
    t2 = pd.read_csv(results / "p4" / "P4-T2_synthetic.csv")
    assert list(t2.columns) == ["Method", "Met.", "Fold-1", "Average"]
    assert t2["Method"].tolist() == [p4.METHOD_LABELS[m] for m in p4.TABLE2_METHODS
                                     for _ in range(2)]
    assert t2["Met."].tolist() == ["DS↑", "HD↓"] * 6
    assert t2["Average"].str.contains("±").all()
    assert _pngs(nb) == 3  # weights figure, the baseline's learning curve and Figure 2
    assert (results / "p4" / "P4-mechanism_synthetic.csv").exists()
    text = json.dumps(nb, ensure_ascii=False)
    assert "Paper's order by mean Dice" in text and "0.621 ± 0.211" in text
    assert "inconclusive" in text or "reproduced" in text  # the three-way verdict
    assert "Uniform pseudo-labels" in text
    # the benchmark chapter reuses the ablation's teacher and shared runs from the cache
    n_runs = len(list((results / "p4_run").glob("*.json")))
    assert n_runs == 6
    nb = _run(tmp_path, "p4_benchmark", small_phantom)
    assert len(list((results / "p4_run").glob("*.json"))) == n_runs + 1  # only RGS+AL is new
    assert len(list((results / "p4_teacher").glob("*.json"))) == 1
    t3 = pd.read_csv(results / "p4" / "P4-T3_synthetic.csv")
    assert t3["Method"].tolist() == [p4.METHOD_LABELS[m] for m in p4.TABLE3_METHODS
                                     for _ in range(2)]
    t4 = pd.read_csv(results / "p4" / "P4-T4_synthetic.csv")
    assert list(t4.columns) == ["Method type", "Methods", "Mean Dice (paper)",
                                "Mean Dice (ours)"]
    assert len(t4) == 9
    ours = dict(zip(t4["Methods"], t4["Mean Dice (ours)"], strict=True))
    assert ours["Isensee et al. (2019)"] == "not run" and "±" in ours["Proposed RGS&M+AL"]
    assert _pngs(nb) == 2  # the baseline's learning curve and Figure 3
    assert "4,806,481" in json.dumps(nb, ensure_ascii=False)
    for artifact in ("P4-T1", "P4-T2", "P4-F2", "P4-T3", "P4-T4", "P4-F3"):
        entry = json.loads((results / "scorecard" / f"{artifact}.json").read_text())
        assert entry["verdict"] and entry["provenance"]["profile"] == "cpu"


def test_real_2d_variant(tmp_path, shared_data):
    """COVID-SemiSeg: the 48 expert test slices are scored; the pool's provided maps serve as
    the noisy teacher's pseudo-labels (and are never scored against)."""
    tiny = {"size_2d": 32, "teacher_steps": 2, "student_steps": 2, "pool_2d": 4}
    res = p4.run("covid-semiseg", ("rgsm_al",), teacher="provided", profile="cpu", seeds=[0],
                 overrides=tiny, data_root=shared_data, results_dir=tmp_path, device="cpu",
                 progress=False)
    assert res.dims == 2 and res.real
    assert len(res.frame) == 48 and np.isfinite(res.frame["dice"]).all()
    assert res.frame["hd"].dropna().ge(0).all()
    teacher = res.teachers[(0, 0)]
    assert teacher["pseudo_labels"] == "provided" and len(teacher["cases"]) == 48
    assert teacher["pool"]["n"] == 4 and teacher["pool"]["dice_vs_provided"] == 1.0
    assert "dice_vs_truth" not in teacher["pool"]  # the real pool has no truth
