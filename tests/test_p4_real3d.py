"""P4 on its own 3-D datasets: ``ma-20`` (Benchmark, split ``p4-cv4``) and ``covid19-20``
(Challenge, ``p4-cv5``, teacher from the Benchmark's ``X_tr``), each from a tiny fixture
written in the dataset's published layout (NIfTI in HU, data_manifests/*.yaml), run through
the P4 chapter code path end to end with a tiny profile."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covidlib.data.api import Dataset, open_dataset
from covidlib.data.manifest import load_manifest
from covidlib.experiments import p4
from covidlib.experiments import p4_report as report

TINY = {"spacing": [16.0, 8.0, 8.0], "patch": [16, 16, 16], "teacher_steps": 2,
        "student_steps": 2, "pool_size": 2, "pool_shape": [16, 48, 48], "figure_cases": 1}
DIAG = p4.Diagnostics(curve_points=1, curve_items=1, probe_batches=1)


def _volume(rng: np.random.Generator, lesion: bool = True) -> tuple[np.ndarray, ...]:
    """(HU image, infection mask, lung mask) of a 48 x 48 x 12 (x, y, z) thorax-like box."""
    img = rng.normal(-900.0, 40.0, (48, 48, 12)).astype(np.int16)  # lung air
    lung = np.zeros(img.shape, np.uint8)
    lung[6:22, 8:40, 2:10], lung[26:42, 8:40, 2:10] = 1, 2
    img[lung == 0] = 40  # soft tissue
    mask = np.zeros(img.shape, np.uint8)
    if lesion:
        mask[10:18, 15:25, 4:8] = 1
        img[mask > 0] = -300
    return img, mask, lung


def _save(arr: np.ndarray, path: Path, spacing=(2.0, 2.0, 6.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0])), str(path))


def _write_ma20(root: Path) -> None:
    m = load_manifest("ma-20")
    rng = np.random.default_rng(0)
    for g in m.layout.groups:
        for cid in g.cases:
            img, mask, lung = _volume(rng)
            _save(img, root / "ma-20" / g.image.format(case=cid))
            _save(mask, root / "ma-20" / g.mask.format(case=cid))
            _save(lung, root / "ma-20" / g.lung.format(case=cid))
            combo = np.where(mask > 0, 3, lung).astype(np.uint8)
            _save(combo, root / "ma-20" / g.extras["lung_and_infection"].format(case=cid))


def _write_covid1920(root: Path, n: int) -> Dataset:
    m = load_manifest("covid19-20")
    g = m.layout.groups[0]
    rng = np.random.default_rng(1)
    for i in range(n):
        cid = f"volume-covid19-A-{i:04d}"
        img, mask, _ = _volume(rng, lesion=i % 4 != 3)
        _save(img, root / "covid19-20" / g.image.format(case=cid), (1.5, 1.5, 5.0))
        _save(mask, root / "covid19-20" / g.mask.format(case=cid), (1.5, 1.5, 5.0))
    # the real release has 199 cases (the manifest checks that count when locating it);
    # the fixture holds n of them in the same layout, read through the same manifest
    return Dataset(m, root / "covid19-20")


@pytest.fixture(scope="module")
def ma20_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("p4real")
    _write_ma20(root)
    return root


def test_kfold_lists_follow_the_manifest_rule():
    ids = [f"c{i}" for i in range(11)]
    folds = [p4.kfold_lists(ids, 5, 0, f) for f in range(5)]
    tests = [t for f in folds for t in f["test"]]
    assert sorted(tests) == sorted(ids) and [len(f["test"]) for f in folds] == [3, 2, 2, 2, 2]
    perm = np.random.default_rng(0).permutation(11)
    order = sorted(ids, key=lambda c: int(c[1:]))
    assert set(folds[0]["test"]) == {order[i] for i in perm[:3]}
    assert all(not set(f["val"]) & set(f["test"]) for f in folds)
    with pytest.raises(ValueError, match=r"folds 0\.\.4"):
        p4.kfold_lists(ids, 5, 0, 5)


def test_ma20_3d_benchmark_end_to_end(ma20_root, tmp_path):
    ds = open_dataset("ma-20", ma20_root)
    res = p4.run(ds, ("fully", "rgsm_al"), profile="gpu", overrides={**TINY, "folds": [0],
                 "checkpoint_every": 0}, seeds=[0], results_dir=tmp_path, device="cpu",
                 progress=False, diagnostics=DIAG)
    assert res.dims == 3 and res.real and res.dataset == "ma-20"
    spec = ds.manifest.split("p4-cv4")
    assert sorted(res.frame["case_id"].unique()) == sorted(spec.folds[0].test)
    assert np.isfinite(res.frame["dice"]).all()
    assert res.frame["hd"].dropna().ge(0).all()  # mm at the NIfTI spacing
    assert report.fold_table(res, ("fully", "rgsm_al"))["Fold-1"].str.contains("±").all()
    assert len(res.mechanism[(0, 0)]["quality"]) == 4


def test_covid1920_challenge_end_to_end(ma20_root, tmp_path):
    ds = _write_covid1920(ma20_root, 10)
    res = p4.run(ds, ("semi", "rgsm_al"), profile="paper",
                 overrides={**TINY, "folds": [1], "checkpoint_every": 0, "infer_roi": None},
                 seeds=[0], results_dir=tmp_path, device="cpu", progress=False,
                 diagnostics=DIAG)
    assert res.dims == 3 and res.dataset == "covid19-20"
    ids = [f"volume-covid19-A-{i:04d}" for i in range(10)]
    fold = p4.kfold_lists(ids, 5, 0, 1)
    assert sorted(res.frame["case_id"].unique()) == sorted(fold["test"])
    # the teacher learned from the Benchmark's X_tr (P4 Sec. 4, experiment 2)
    data = p4.fold_data(ds, 1, p4.settings("paper", {**TINY, "infer_roi": None}),
                        tmp_path / "store", progress=False)
    train = load_manifest("ma-20").split("p4-cv4").train
    assert [it.case_id for it in data.train] == list(train)
    assert {it.case_id for it in data.val} == set(fold["val"])
