"""P4's public entry point on your own data (issue 17): a temporary folder of PNG slices with
0/255 masks and a volume CSV, the minimal ``access: local`` manifest with per-volume splits,
one training of P4's re-weighting through :func:`covidlib.experiments.p4.train_p4` scored on
two test sets, ``covidlib train`` on that folder, and errors that name what is missing."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from covidlib import checkpoint
from covidlib.cli import main
from covidlib.data.demo_folder import DemoFolder, demo_manifest, write_demo_folder
from covidlib.data.phantom import PhantomConfig, write_dataset
from covidlib.experiments import p4
from covidlib.experiments.p4_method import P4TestSet, parse_test_set
from covidlib.experiments.p4_user import p4_spec

torch.set_num_threads(1)

SLICES, SIZE = 3, 48
# 32 px networks, two steps per network, four pool slices: seconds on one core
TINY = {"size_2d": 32, "teacher_steps": 2, "student_steps": 2, "pool_2d": 4,
        "figure_cases": 1}
EXTRA_SPLITS = """\
  no-val: {method: by-case, train: [patient01], val: [], test: [patient04]}
  everything: {method: by-case, train: [patient01, patient02], val: [patient03],
               test: [patient04, patient05, patient06]}
  halves: {method: by-slice-fraction, train: 0.5, val: 0.2, test: 0.3}
"""

UNLABELLED_AFTER = "      volumes: {csv: volumes.csv}\n"
UNLABELLED = """\
    - name: unlabelled
      image: "images/{case}.png"
      cases: ['0015', '0016', '0017']
      labels: none
    - name: mixed-pool
      image: "images/{case}.png"
      cases: ['0011', '0012']
      labels: none
"""
"""Groups of images without masks, slices of the volumes listed by slice id: ``unlabelled``
(patient06's slices as single images) and ``mixed-pool`` (the last slice of patient04, the
first of patient05): pools."""

MY_CT = """\
name: my-ct
access: local
intensity: hu
layout:
  format: nifti-volumes
  groups:
    - name: all
      image: "COVID-19-CT-Seg_20cases/{case}.nii.gz"
      mask: "Infection_Mask/{case}.nii.gz"
      cases: [synth_000, synth_001, synth_002, synth_003, synth_004]
label_map: {0: background, 1: ground-glass, 2: consolidation}
splits:
  mine: {method: by-case, train: [synth_000], val: [synth_001], test: [synth_002]}
"""
"""Five phantom CT volumes in HU (NIfTI) as your own data; synth_003-004 are the pool."""
TINY_3D = {"spacing": [16.0, 8.0, 8.0], "patch": [16, 16, 16], "teacher_steps": 2,
           "student_steps": 2, "figure_cases": 1}


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``my-slices``: 6 volumes of 3 slices (scanner A: patient01-04, B: patient05-06) with
    the demo's splits ``by-volume`` (train 01-02, val 03, test 04) and ``other-scanner``
    (test 05-06) plus broken ones, and a group ``unlabelled`` without masks; ``my-pool``: 4
    other volumes of one slice, no splits (a pool)."""
    root = tmp_path_factory.mktemp("p4-own")
    demo = write_demo_folder(root / "my-slices", n_volumes=6, slices_per_volume=SLICES,
                             size=SIZE, volumes_per_site=4, seed=0)
    text = demo_manifest("my-slices", demo).replace(UNLABELLED_AFTER, UNLABELLED_AFTER
                                                    + UNLABELLED)
    (root / "my-slices.yaml").write_text(text + EXTRA_SPLITS, encoding="utf-8")
    # the pool's volume ids patient01-04 are those of my-slices: other volumes all the same
    pool = write_demo_folder(root / "my-pool", n_volumes=4, slices_per_volume=1, size=SIZE,
                             volumes_per_site=2, seed=7)
    (root / "my-pool.yaml").write_text(demo_manifest("my-pool"), encoding="utf-8")
    return SimpleNamespace(demo=demo, pool=pool, manifest=str(root / "my-slices.yaml"),
                           pool_manifest=str(root / "my-pool.yaml"))


def test_parse_test_set_takes_a_split():
    assert parse_test_set("other-scanner/test") == P4TestSet("test", None, None,
                                                             "other-scanner")
    assert parse_test_set("/data/my.yaml:other/val@1") == P4TestSet("val", "/data/my.yaml", 1,
                                                                    "other")
    assert parse_test_set("covid-semiseg:test") == P4TestSet("test", "covid-semiseg")


def test_one_training_on_your_own_slices_scores_two_test_sets(own: SimpleNamespace):
    demo: DemoFolder = own.demo
    trained = p4.train_p4(own.manifest, "rgsm_al", split="by-volume", pool=own.pool_manifest,
                          profile="cpu", overrides=TINY, device="cpu", progress=False,
                          test_sets={"same": "test", "other": "other-scanner:test"})
    assert isinstance(trained.model, nn.Module) and trained.data.dims == 2
    # X_tr: patient01-02, X_v: patient03 (every slice), X_t: patient04 as one volume
    assert [it.case_id for it in trained.data.train] == [
        f"patient0{v}:{z}" for v in (1, 2) for z in range(SLICES)]
    assert [it.volume for it in trained.data.val] == ["patient03"] * SLICES
    assert trained.data.train[0].image.shape == (32, 32)
    assert trained.data.train[0].image.dtype == np.float32
    assert 0.0 <= trained.data.train[0].image.min() <= trained.data.train[0].image.max() <= 1.0
    # the pool: my-pool's 4 slices, its masks kept as provided labels only; that its ids
    # patient01-04 are also my-slices' ids is no leak (another dataset)
    assert [it.case_id for it in trained.data.pool] == [f"patient0{v}:0" for v in range(1, 5)]
    assert all(it.label is None and it.provided is not None for it in trained.data.pool)
    assert trained.history["step"] == [0, 1] and len(trained.history["w_star"]) == 2
    assert set(trained.scores) == {"same", "other"}
    assert [r["case_id"] for r in trained.results["same"]["cases"]] == ["patient04"]
    assert [r["case_id"] for r in trained.results["other"]["cases"]] == \
        demo.site_volumes("B") == ["patient05", "patient06"]
    for name, n in (("same", 1), ("other", 2)):
        sc = trained.scores[name]
        assert set(sc) == {"dice", "dice_sd", "hd", "hd_sd", "n_cases", "n_infected",
                           "n_hd_undefined"}
        assert sc["n_cases"] == sc["n_infected"] == n  # every demo volume is infected
        assert 0.0 <= sc["dice"] <= 1.0
        assert sc["hd"] is None or sc["hd"] >= 0.0
        rows = trained.results[name]["cases"]
        assert all(r["true_voxels"] > 0 for r in rows)  # scored at the 48 px originals
        assert sc["dice"] == pytest.approx(np.mean([r["dice"] for r in rows]))
    assert trained.scores["same"]["dice_sd"] is None  # one volume: no sd
    # more test sets later, without training: the same numbers
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "in the pool" warning
        assert trained.score(P4TestSet(split="other-scanner"), "again") == \
            trained.scores["other"]
        assert trained.score("by-volume/test", "own") == trained.scores["same"]
    assert trained.history["step"] == [0, 1]


def test_default_pool_is_the_unlisted_volumes_and_provided_labels_train(own: SimpleNamespace):
    trained = p4.train_p4(own.manifest, "semi", split="by-volume", teacher="provided",
                          profile="cpu", overrides=TINY, device="cpu", progress=False)
    assert {it.volume for it in trained.data.pool} == {"patient05", "patient06"}
    assert set(trained.scores) == {"test"} and trained.scores["test"]["n_cases"] == 1
    with pytest.warns(UserWarning, match=r"\['patient05', 'patient06'\] were in the unlabelled "
                                         "pool"):
        trained.score("other-scanner:test", "other")


@pytest.mark.parametrize(("split", "pool", "message"), [
    (None, None, r"not one of P4's: name the split .* its splits: \['by-volume', "
                 r"'everything', 'halves', 'no-val', 'other-scanner'\]"),
    ("nope", None, "has no split 'nope'"),
    ("no-val", None, r"split 'no-val' of 'my-slices' has no 'val' cases: P4 needs them as X_v "
                     r"\(Alg. 1's clean meta set\)"),
    ("everything", None, "no unlabelled pool X_p: every labelled case of 'my-slices' that "
                         "split 'everything' does not list gives no case"),
    ("halves", None, "'by-slice-fraction': P4 needs whole volumes"),
])
def test_missing_parts_are_named(own: SimpleNamespace, split, pool, message):
    with pytest.raises(ValueError, match=message):
        p4.train_p4(own.manifest, "rgs", split=split, pool=pool, profile="cpu",
                    overrides=TINY, device="cpu", progress=False)


def test_p4_datasets_keep_their_split_and_pool():
    ds = SimpleNamespace(name="synthetic")
    assert p4_spec(ds, None, None) is None and p4_spec(ds, "p4-cv4", None) is None
    with pytest.raises(ValueError, match="uses split 'p4-cv4'"):
        p4_spec(ds, "mixed", None)
    with pytest.raises(ValueError, match="pool= is for your own datasets"):
        p4_spec(ds, None, "my-pool")


def test_cli_trains_p4_on_your_own_slices(own: SimpleNamespace, tmp_path: Path, capsys):
    out = tmp_path / "run"
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    assert main(["train", own.manifest, "by-volume", "rgs", *sets, "--pool", own.pool_manifest,
                 "--test", "same=test", "--test", "other=other-scanner:test",
                 "--out", str(out), "--device", "cpu"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["paper"], config["dataset"], config["split"], config["method"]) == (
        "p4", "my-slices", "by-volume", "rgs")
    assert config["pool"] == own.pool_manifest and config["settings"]["size_2d"] == 32
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["scores"]) == set(scores["cases"]) == {"same", "other"}
    assert [r["case_id"] for r in scores["cases"]["other"]] == ["patient05", "patient06"]
    weights = checkpoint.load(out / "model.pt")  # verified on load
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    printed = capsys.readouterr().out
    assert "same: Dice " in printed and "other: Dice " in printed and str(out) in printed
    with pytest.raises(SystemExit, match="has no split 'nope'"):
        main(["train", own.manifest, "nope", "rgs", "--out", str(tmp_path / "bad")])


def test_a_group_without_masks_is_a_pool(own: SimpleNamespace):
    trained = p4.train_p4(own.manifest, "rgs", split="by-volume", pool="unlabelled",
                          profile="cpu", overrides=TINY, device="cpu", progress=False)
    assert [it.case_id for it in trained.data.pool] == ["0015:0", "0016:0", "0017:0"]
    assert all(it.provided is None and it.label is None for it in trained.data.pool)
    assert 0.0 <= trained.scores["test"]["dice"] <= 1.0
    with pytest.raises(ValueError, match="teacher='provided' needs a pool with provided "
                                         "noisy-teacher maps"):
        p4.train_p4(own.manifest, "rgs", split="by-volume", pool="unlabelled",
                    teacher="provided", profile="cpu", overrides=TINY, device="cpu",
                    progress=False)


def test_pool_slices_listed_by_slice_id_count_as_their_volume(own: SimpleNamespace):
    # by-volume tests patient04: its slice 0011 leaves the pool as patient04 itself would;
    # patient05's slice 0012 stays, as patient05
    trained = p4.train_p4(own.manifest, "rgs", split="by-volume", pool="mixed-pool",
                          profile="cpu", overrides=TINY, device="cpu", progress=False)
    assert [(it.case_id, it.volume) for it in trained.data.pool] == [("0012:0", "patient05")]
    with pytest.warns(UserWarning, match=r"other-scanner/test of my-slices: case\(s\) "
                                         r"\['patient05'\] were in the unlabelled pool"):
        trained.score("other-scanner:test", "other")
    # other-scanner tests patient05-06: every slice of 'unlabelled' is patient06's
    with pytest.raises(ValueError, match="no unlabelled pool X_p: group 'unlabelled' of "
                                         "'my-slices' without the test cases gives no case"):
        p4.train_p4(own.manifest, "rgs", split="other-scanner", pool="unlabelled",
                    profile="cpu", overrides=TINY, device="cpu", progress=False)


def test_your_own_hu_volumes_train_the_3d_network(tmp_path: Path):
    write_dataset(PhantomConfig(n_cases=5, shape=(16, 64, 64), cases_per_site=3),
                  tmp_path / "my-ct", progress=False, workers=1)
    (tmp_path / "my-ct.yaml").write_text(MY_CT, encoding="utf-8")
    trained = p4.train_p4(str(tmp_path / "my-ct.yaml"), "rgs", split="mine", profile="cpu",
                          overrides=TINY_3D, device="cpu", progress=False,
                          test_sets={"own": "test", "val": "mine/val"})
    assert trained.data.dims == 3 and trained.data.train[0].image.ndim == 3
    assert [it.case_id for it in trained.data.pool] == ["synth_003", "synth_004"]
    assert all(it.provided is not None and it.label is None for it in trained.data.pool)
    assert [r["case_id"] for r in trained.results["own"]["cases"]] == ["synth_002"]
    assert [r["case_id"] for r in trained.results["val"]["cases"]] == ["synth_001"]
    for sc in trained.scores.values():
        assert sc["n_cases"] == 1 and (sc["dice"] is None or 0.0 <= sc["dice"] <= 1.0)
        assert sc["hd"] is None or sc["hd"] >= 0.0  # mm, at the volume's own spacing


@pytest.mark.parametrize("extra", [["--pool", "unlabelled"], ["--teacher", "provided"],
                                   ["--fold", "1"]])
def test_cli_refuses_p4_options_for_a_p2_method(tmp_path: Path, extra: list[str]):
    with pytest.raises(SystemExit, match=f"{extra[0]} {extra[1]}: P4 options, but 'pl'"):
        main(["train", "synthetic", "sep", "pl", *extra, "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()  # refused before anything was written
