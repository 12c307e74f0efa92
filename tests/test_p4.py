"""P4 protocol, data helpers, tables and verdicts (covidlib.experiments.p4 / p4_report)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from covidlib import checkpoint
from covidlib import reweight as rw
from covidlib.cache import config_hash
from covidlib.data.augment import crop_padded, flip_lr_ud
from covidlib.data.manifest import load_manifest
from covidlib.data.preprocess import hu_to_unit, resample_volume
from covidlib.experiments import p4, p4_data
from covidlib.experiments import p4_report as report
from covidlib.models import resunet3d_p4

# ------------------------------------------------------------------------------ profiles


def test_settings_and_profiles():
    s = p4.settings("cpu", {"student_steps": 3, "patch": [16, 16, 16]})
    assert isinstance(s, p4.P4Settings) and s.patch == (16, 16, 16)  # lists stored as tuples
    assert s.student_steps == 3 and p4.PROFILES["cpu"].student_steps != 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown profile 'tpu'"):
        p4.settings("tpu")
    with pytest.raises(p4.SettingsError, match=r"unknown override key\(s\) \['epochs'\]; "
                       r"known: .*'student_steps'"):
        p4.settings("cpu", {"epochs": 3})
    with pytest.raises(ValueError, match="multiple of 16"):
        p4.settings("cpu", {"patch": [24, 32, 32]})
    with pytest.raises(ValueError, match="init='imagenet': expected one of 'teacher', 'scratch'"):
        p4.settings("cpu", {"init": "imagenet"})
    with pytest.raises(p4.SettingsError, match=r"batch=2.5: expected int"):
        p4.settings("cpu", {"batch": 2.5})
    with pytest.raises(p4.SettingsError, match=r"lam=1.5: must lie in \[0, 1\]"):
        p4.settings("cpu", {"lam": 1.5})
    with pytest.raises(p4.SettingsError, match=r"folds=\(\): a non-empty"):
        p4.settings("cpu", {"folds": []})
    for name in ("gpu", "paper"):  # P4 Sec. 4
        s = p4.settings(name)
        assert s.spacing == (3.2, 1.6, 1.6) and s.patch == (96, 96, 96)
        assert s.batch == 4 and s.lam == 0.5
    paper = p4.settings("paper")
    assert paper.lr == 0.01 and paper.optimizer == "adam"
    assert paper.teacher_steps == 500 * 16 // 4  # 500 epochs of 16 flipped volumes
    assert paper.student_steps == 500 * math.ceil(1473 / 4) == 184_500
    assert paper.folds == (0, 1, 2, 3) and paper.init == "scratch"


def test_settings_keep_the_cache_keys():
    # the cached configs are the same dicts as when profiles were plain dicts (tuples and
    # lists hash alike), so results cached before typed settings stay valid
    s = p4.settings("cpu")
    run = p4._run_config({"t": 1}, s, "rgs")
    assert config_hash(run) == config_hash({
        "version": p4.VERSION, "kind": "run", "method": "rgs", "teacher": {"t": 1},
        "init": "teacher", "student_steps": 30, "batch": 4, "lr": 3e-3, "optimizer": "adam",
        "pos_fraction": 0.5, "lam": 0.5, "meta_lr": 1e-2, "expert_term": True,
        "gem_norm": "l2", "rgs_method": "jvp"})


# ------------------------------------------------------------------------------ Table 1


def test_parameter_count_and_table1():
    model = resunet3d_p4()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4_806_481
    t = report.table1()
    total = t[t["layer"] == "Total"].iloc[0]
    assert total["params_p4"] == total["paper"] == 4_806_481
    body = t[t["layer"] != "Total"].reset_index(drop=True)
    assert len(body) == 27
    bad = body.index[~body["match"]].tolist()
    assert bad == [6, 18]  # P4 rows 7 and 19 print 110,720 and 110,621
    assert body.loc[6, "params_p4"] == 110_721 and body.loc[18, "params_p4"] == 110_625
    assert body["paper"].sum() == 4_806_476
    text = report.table1_verdict(t)
    assert "25 of 27 rows agree" in text and "4,806,476" in text


# ------------------------------------------------------------------------------ data


def test_p4_cv4_split_matches_p4_protocol():
    """P4 Sec. 4 in patients: 4 train the teacher; per fold 12 X_v and 4 test, the four
    test sets disjoint and covering every non-training volume."""
    for name in ("synthetic", "ma-20"):
        spec = load_manifest(name).split("p4-cv4")
        train = set(spec.train)
        assert len(train) == 4 and len(spec.folds) == 4
        tests = []
        for f in spec.folds:
            assert len(f.val) == 12 and len(f.test) == 4
            assert not (set(f.val) & set(f.test)) and not (train & (set(f.val) | set(f.test)))
            tests += list(f.test)
        assert len(tests) == len(set(tests)) == 16


def test_split_2d_quarters():
    ids = [str(i) for i in range(50)]
    parts = [p4_data._split_2d(ids, f) for f in range(4)]
    assert [len(tr) for tr, _ in parts] == [13, 13, 12, 12]
    for tr, va in parts:
        assert set(tr) | set(va) == set(ids) and not set(tr) & set(va)
    assert set().union(*[set(tr) for tr, _ in parts]) == set(ids)
    assert p4_data._split_2d(ids, 1) == parts[1]  # deterministic
    with pytest.raises(ValueError, match=r"folds 0\.\.3"):
        p4_data._split_2d(ids, 4)


def test_resample_volume():
    img = np.full((4, 6, 6), 0.25, dtype=np.float32)
    out = resample_volume(img, (2.0, 1.0, 1.0), (4.0, 2.0, 2.0))
    assert out.shape == (2, 3, 3) and np.allclose(out, 0.25)
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[:, :4, :4] = 1
    m = resample_volume(mask, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), kind="mask")
    assert m.shape == (2, 4, 4) and m.dtype == np.uint8
    assert m[:, :2, :2].all() and not m[:, 2:, :].any() and not m[:, :, 2:].any()
    with pytest.raises(ValueError, match="spacing"):
        resample_volume(img, (float("nan"), 1.0, 1.0), (2.0, 2.0, 2.0))


def test_window_flips_and_padded_crops_by_hand():
    hu = np.array([[-1200.0, -1000.0], [-300.0, 500.0]])
    assert np.allclose(hu_to_unit(hu), [[0.0, 0.0], [0.5, 1.0]])  # lung window -1000..400
    assert hu_to_unit(hu).dtype == np.float32
    with pytest.raises(ValueError, match="hi > lo"):
        hu_to_unit(hu, (400.0, -1000.0))
    a = np.arange(6).reshape(2, 3)
    assert flip_lr_ud(a, 1).tolist() == [[2, 1, 0], [5, 4, 3]]
    assert flip_lr_ud(a, 2).tolist() == [[3, 4, 5], [0, 1, 2]]
    assert flip_lr_ud(a, 3).tolist() == [[5, 4, 3], [2, 1, 0]]
    with pytest.raises(ValueError, match="code=4"):
        flip_lr_ud(a, 4)
    assert crop_padded(a, (1, 1), (2, 3)).tolist() == [[4, 5, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="2-D array"):
        crop_padded(a, (0,), (1,))


def test_sample_patch_flips_pads_and_centres():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    label = (image > 11).astype(np.uint8)
    item = p4.Item("a", image, label=label)
    flips = [image, image[:, ::-1], image[::-1], image[::-1, ::-1]]
    seen = set()
    for k in range(20):
        out = p4.sample_patch(item, (4, 4), np.random.default_rng(k), "label", flip=True)
        which = [i for i, f in enumerate(flips) if np.array_equal(out["image"], f)]
        assert len(which) == 1
        assert np.array_equal(out["label"], (out["image"] > 11).astype(np.int64))
        seen.add(which[0])
    assert seen == {0, 1, 2, 3}
    # a patch larger than the item is zero-padded at the far end
    out = p4.sample_patch(item, (6, 4), np.random.default_rng(0), "label")
    assert out["image"].shape == (6, 4) and not out["image"][4:].any()
    # pos_fraction = 1: the crop is centred on a labelled voxel
    vol = np.zeros((20, 20, 20), np.float32)
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[18, 18, 18] = 1
    item3 = p4.Item("b", vol, label=lab)
    for k in range(5):
        out = p4.sample_patch(item3, (4, 4, 4), np.random.default_rng(k), "label",
                              pos_fraction=1.0)
        assert out["label"].sum() == 1
    with pytest.raises(ValueError, match="no 'pseudo' labels"):
        p4.sample_patch(item3, (4, 4, 4), np.random.default_rng(0), "pseudo")


def test_mask_codec_and_figure_cases():
    m = np.random.default_rng(0).random((7, 9)) > 0.5
    assert np.array_equal(p4.decode_mask(p4.encode_mask(m), m.shape), m)
    with pytest.raises(ValueError, match="do not hold"):
        p4.decode_mask(p4.encode_mask(m), (9, 9))
    areas = [0, 5, 1, 9, 3]
    test = []
    for i, a in enumerate(areas):
        mask = np.zeros(10, bool)
        mask[:a] = True
        test.append(p4.TestItem(p4.Item(f"c{i}", np.zeros(10)), mask, None, None))
    assert p4.figure_cases(test, 2) == ["c2", "c3"]  # smallest and largest infected
    assert p4.figure_cases(test, 9) == ["c2", "c4", "c1", "c3"]  # the clean c0 is never shown


def test_pool_agreement_hand_computed():
    a = np.array([1, 1, 0, 0], np.uint8)
    b = np.array([1, 0, 0, 0], np.uint8)
    pool = [p4.Item("p0", np.zeros(4), truth=a, site="x"),
            p4.Item("p1", np.zeros(4), truth=b, site="y")]
    pseudo = {"p0": np.array([1, 0, 0, 0]), "p1": np.array([1, 0, 0, 0])}
    out = p4._pool_agreement(pool, pseudo)
    # summed counts: tp 2, fp 0, fn 1 -> Dice 4 / 5
    assert out["dice_vs_truth"] == pytest.approx(0.8)
    assert out["dice_vs_truth_by_site"] == {"x": pytest.approx(2 / 3), "y": 1.0}
    assert "dice_vs_provided" not in out


# ------------------------------------------------------------------------------ training loop


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def _tiny_items(n: int, seed: int, key: str) -> list[p4.Item]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        img = rng.random((16, 16)).astype(np.float32)
        lab = (img > 0.7).astype(np.uint8)
        items.append(p4.Item(f"{key}{i}", img, **{key: lab}))
    return items


def _student(steps: int, ckpt=None, mode: str = "rgsm_al") -> tuple[_Tiny, dict]:
    torch.manual_seed(0)
    model = _Tiny()
    s = p4.settings("cpu", {"size_2d": 16, "student_steps": steps, "batch": 2,
                            "checkpoint_every": 1 if ckpt else 0})
    hist = p4.train_student(model, mode, _tiny_items(3, 1, "label"), _tiny_items(4, 2, "pseudo"),
                            s, seed=0, dims=2, device=torch.device("cpu"), checkpoint=ckpt,
                            progress=False)
    return model, hist


def test_train_student_is_deterministic_and_resumes_exactly(tmp_path, monkeypatch):
    m1, h1 = _student(4)
    m2, h2 = _student(4)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert h1 == h2 and len(h1["w_star"]) == 4
    for w in h1["w_star"]:  # +AL: every kept weight reaches 1 / C_p
        assert all(v == 0 or v >= 0.5 * (1 - 1e-6) for v in w)
    # interrupted after 2 steps, then resumed from the checkpoint: same weights as straight
    ckpt = tmp_path / "run.pt"
    real = rw.weighted_update
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rw, "weighted_update", dying)
    with pytest.raises(KeyboardInterrupt):
        _student(4, ckpt)
    assert ckpt.exists() and checkpoint.read_header(ckpt)["sha256"]  # a verified checkpoint
    assert checkpoint.load(ckpt)["step"] == 2
    monkeypatch.setattr(rw, "weighted_update", real)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # resumed, not restarted
        m3, h3 = _student(4, ckpt)
    for a, b in zip(m1.state_dict().values(), m3.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert h3 == h1 and not ckpt.exists()
    # a damaged checkpoint is moved aside with a warning; training restarts: same result
    calls["n"] = 0
    monkeypatch.setattr(rw, "weighted_update", dying)
    with pytest.raises(KeyboardInterrupt):
        _student(4, ckpt)
    monkeypatch.setattr(rw, "weighted_update", real)
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="restarts from step 0"):
        m4, h4 = _student(4, ckpt)
    assert h4 == h1 and list(tmp_path.glob("run.pt.corrupt-*"))
    for a, b in zip(m1.state_dict().values(), m4.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_semi_mode_uses_uniform_weights():
    _, h = _student(2, mode="semi")
    assert h["w_star"] == [[0.5, 0.5], [0.5, 0.5]]


# ------------------------------------------------------------------------------ tables


def _fake(rows: list[dict], methods: tuple[str, ...], runs: dict | None = None) -> p4.P4Results:
    return p4.P4Results("synthetic", False, 3, methods, p4.settings("cpu", {"folds": [0, 1]}),
                        (0,), "ours", pd.DataFrame(rows), runs or {}, {}, {}, 0.0)


def _row(method: str, fold: int, case: str, dice: float, hd: float | None,
         empty_truth: bool = False) -> dict:
    return {"method": method, "fold": fold, "seed": 0, "case_id": case, "dice": dice,
            "hd": hd, "hd95": hd, "empty_truth": empty_truth, "empty_pred": hd is None}


def test_fold_table_averages_like_p4():
    rows = [_row("fully", 0, "a", 0.5, 10.0), _row("fully", 0, "b", 0.7, 20.0),
            _row("fully", 0, "z", 1.0, 0.0, empty_truth=True),  # clean case: left out
            _row("fully", 1, "c", 0.2, None), _row("fully", 1, "d", 0.4, 30.0)]
    t = report.fold_table(_fake(rows, ("fully",)))
    assert list(t.columns) == ["Method", "Met.", "Fold-1", "Fold-2", "Average"]
    ds, hd = t.iloc[0], t.iloc[1]
    assert ds["Fold-1"] == "0.600 ± 0.100" and ds["Fold-2"] == "0.300 ± 0.100"
    assert ds["Average"] == "0.450 ± 0.100"  # mean of fold means ± mean of fold stds
    assert hd["Fold-1"] == "15.00 ± 5.00" and hd["Fold-2"] == "30.00 ± 0.00"
    assert hd["Average"] == "22.50 ± 2.50"
    summ = report.fold_summary(_fake(rows, ("fully",)))
    assert summ["n_empty_pred"].tolist() == [0, 1]


def test_ordering_verdict_hand_computed():
    dice = {"fully": [0.50, 0.52, 0.48], "rgs": [0.60, 0.61, 0.62],
            "rgs_al": [0.40, 0.42, 0.44], "rgsm_al": [0.70, 0.72, 0.71]}
    rows = [_row(m, 0, f"c{i}", d, 10.0) for m, ds in dice.items() for i, d in enumerate(ds)]
    v = report.ordering_verdict(_fake(rows, tuple(dice)), "P4-T3")
    assert v["paper_order"] == ["rgsm_al", "rgs_al", "rgs", "fully"]
    assert v["our_order"] == ["rgsm_al", "rgs", "fully", "rgs_al"]
    # rank differences 0, 2, 1, 1 -> rho = 1 - 6 * 6 / (4 * 15) = 0.4
    assert v["spearman"] == pytest.approx(0.4)
    assert v["best_holds"] and v["baseline"] == "fully"
    assert v["vs_baseline"]["rgsm_al"]["diff"] == pytest.approx(0.21)
    assert v["vs_baseline"]["rgsm_al"]["beats"] and v["vs_baseline"]["rgs_al"]["loses"]
    assert "also our best" in v["text"]


def test_weights_table_hand_computed():
    hist = {"w_star": [[0.0, 0.6, 0.4], [0.0, 0.0, 1.0]],
            "quality": [[0.1, 0.8, 0.5], [0.2, 0.3, 0.9]]}
    runs = {("rgsm_al", 0, 0): {"history": hist}, ("semi", 0, 0): {"history": hist}}
    t = report.weights_table(_fake([], ("semi", "rgsm_al"), runs))
    assert t["Method"].tolist() == ["Proposed RGS&M+AL"]
    row = t.iloc[0]
    assert row["patches"] == 6 and row["share dropped (w* = 0)"] == pytest.approx(0.5)
    assert row["Dice of kept patches"] == pytest.approx((0.8 + 0.5 + 0.9) / 3)
    assert row["Dice of dropped patches"] == pytest.approx((0.1 + 0.2 + 0.3) / 3)
    expected = pd.Series([0, 0.6, 0.4, 0, 0, 1]).corr(pd.Series([.1, .8, .5, .2, .3, .9]),
                                                     method="spearman")
    assert row["Spearman(weight, pseudo-label Dice)"] == pytest.approx(expected)


def test_paper_tables_come_from_the_yaml():
    t2 = report.paper_table("P4-T2")
    assert len(t2) == 12 and list(t2.columns)[-1] == "Average"
    assert t2.iloc[10]["Average"] == "0.621 ± 0.211"  # RGS&M+AL, DS
    assert report.paper_averages("P4-T3")["fully"]["dice"] == 0.730


def test_uniform_pseudo_label_row_is_not_called_fan_et_al():
    """P4's "Semi-supervised" row adopts Fan et al.'s (progressive) strategy; ours weights
    the whole pool uniformly, and is named for that (issue 12, item 3)."""
    assert p4.METHOD_LABELS["semi"] == "Uniform pseudo-labels"
    assert p4.PAPER_NAMES["semi"] == "Semi-supervised"  # the paper's row still matches
    assert "semi" in report.paper_averages("P4-T2")
    rows = [_row(m, 0, "a", 0.5, 1.0) for m in ("fully", "semi", "rgsm_al")]
    t4 = report.table4(_fake(rows, ("fully", "semi", "rgsm_al")))
    ours = t4[t4["Method type"] == "Semi-supervised (ours)"]["Methods"].iloc[0]
    assert "Uniform pseudo-labels" in ours and "Fan et al.'s strategy" not in ours


def test_converged_and_three_way_verdict():
    assert report.converged([0.1, 0.3, 0.50, 0.51], tol=0.02)  # last 0.51 vs 0.50
    assert not report.converged([0.1, 0.3, 0.40, 0.50], tol=0.02)
    assert report.converged([0.2] * 8, tol=0.02) and not report.converged([0.5], tol=0.02)
    hist = {"step": [0], "loss": [1.0], "curve_step": [1, 2], "curve_dice": [0.2, 0.6]}
    # two folds (two training runs), three cases: +0.2 each, well beyond 2 SE
    rows = [_row(m, i % 2, f"c{i}", d + (0.2 if m == "rgsm_al" else 0.0), 1.0)
            for m in ("fully", "rgsm_al") for i, d in enumerate([0.3, 0.5, 0.4])]
    res = _fake(rows, ("fully", "rgsm_al"), {("fully", 0, 0): {"history": hist}})
    v = report.claim_verdict(res, "P4-T3")
    assert v["verdict"] == "reproduced" and v["diff"] == pytest.approx(0.2)
    # -0.2 each: significantly worse, a finding only once the baseline has converged
    rows = [_row(m, i % 2, f"c{i}", d - (0.2 if m == "rgsm_al" else 0.0), 1.0)
            for m in ("fully", "rgsm_al") for i, d in enumerate([0.3, 0.5, 0.4])]
    res = _fake(rows, ("fully", "rgsm_al"), {("fully", 0, 0): {"history": hist}})
    assert report.claim_verdict(res, "P4-T3")["verdict"] == "inconclusive"  # 0.2 -> 0.6
    hist["curve_dice"] = [0.6, 0.6]
    v = report.claim_verdict(res, "P4-T3")
    assert v["verdict"] == "not reproduced" and v["converged"] and v["mechanism"] is None


def test_verdict_needs_enough_cases_and_both_table2_baselines():
    hist = {"step": [0], "loss": [1.0], "curve_step": [1, 2], "curve_dice": [0.6, 0.6]}
    runs = {("fully", 0, 0): {"history": hist}}
    # two test cases only: inconclusive even with a clear gain
    rows = [_row(m, 0, f"c{i}", d + (0.3 if m == "rgsm_al" else 0.0), 1.0)
            for m in ("fully", "rgsm_al") for i, d in enumerate([0.3, 0.5])]
    v = report.claim_verdict(_fake(rows, ("fully", "rgsm_al"), runs), "P4-T3")
    assert v["verdict"] == "inconclusive" and "only 2 paired test cases" in v["text"]
    # Table 2: better than uniform pseudo-labels but not than fully supervised
    base = {"fully": [0.6, 0.7, 0.65], "semi": [0.3, 0.4, 0.35],
            "rgsm_al": [0.5, 0.61, 0.55]}
    rows = [_row(m, i % 2, f"c{i}", d, 1.0) for m, ds in base.items()
            for i, d in enumerate(ds)]
    v = report.claim_verdict(_fake(rows, tuple(base), runs), "P4-T2")
    assert not v["holds"] and v["verdict"] == "not reproduced"
    assert "Uniform pseudo-labels" in v["text"] and "Fully Supervised" in v["text"]
