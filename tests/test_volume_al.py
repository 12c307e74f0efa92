"""P3's volume-level active learning: Eq. 1 on hand-made samples, selection, volumes, the loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from covidlib import acquisition as acq
from covidlib import volume_al as val
from covidlib.cache import ResultCache
from covidlib.data.types import Case
from covidlib.losses import DiceCELoss
from covidlib.metrics import per_class_dice
from covidlib.models import UNet3D, mc_predict

# ------------------------------------------------------------------ P3 Eq. 1 by hand


def test_eq1_two_passes_two_classes_one_voxel():
    # pass 1: (0.2, 0.8), pass 2: (0.6, 0.4); each class: mean 0.4/0.6, population var 0.04
    samples = torch.tensor([[0.2, 0.8], [0.6, 0.4]])[:, :, None]  # (T=2, C=2, 1 voxel)
    v = acq.mc_variance_score(samples, class_axis=1)
    assert v.shape == (1,)
    assert v.item() == pytest.approx(0.04)
    # unbiased variance divides by T - 1 = 1: 0.08
    assert acq.mc_variance_score(samples, class_axis=1, ddof=1).item() == pytest.approx(0.08)


def test_eq1_three_classes_averages_over_classes():
    # class 0 constant (var 0); class 1: 0.5, 0.3, 0.1 (var 0.08/3); class 2: 0.3, 0.5, 0.7
    # (var 0.08/3) -> V = (0 + 0.08/3 + 0.08/3) / 3 = 0.16/9
    p = torch.tensor([[0.2, 0.5, 0.3], [0.2, 0.3, 0.5], [0.2, 0.1, 0.7]])  # (T=3, C=3)
    v = acq.mc_variance_score(p[:, :, None, None], class_axis=1)  # (T, C, 1, 1)
    assert v.shape == (1, 1)
    assert v.item() == pytest.approx(0.16 / 9)


def test_eq1_mc_predict_layout_and_volume_sum():
    # (T=2, B=2, C=2, 2 voxels). Volume 0: voxel a varies (score 0.04), voxel b is certain.
    # Volume 1: both voxels swing 0 <-> 1: per class var 0.25 -> V = 0.25 per voxel.
    s = torch.zeros(2, 2, 2, 2)
    s[0, 0, :, 0], s[1, 0, :, 0] = torch.tensor([0.2, 0.8]), torch.tensor([0.6, 0.4])
    s[:, 0, :, 1] = torch.tensor([0.9, 0.1])
    s[0, 1, 0, :], s[0, 1, 1, :] = 1.0, 0.0
    s[1, 1, 0, :], s[1, 1, 1, :] = 0.0, 1.0
    per_voxel = acq.mc_variance_score(s)  # class_axis=2 (mc_predict's layout)
    assert per_voxel.shape == (2, 2)
    assert per_voxel.flatten().tolist() == pytest.approx([0.04, 0.0, 0.25, 0.25])
    assert acq.volume_variance_score(s).tolist() == pytest.approx([0.04, 0.5])
    # a single volume in (T, C, *spatial) layout gives a 0-d score
    assert float(acq.volume_variance_score(s[:, 1], class_axis=1)) == pytest.approx(0.5)


def test_eq1_identical_passes_score_zero_and_numpy_input():
    x = np.full((5, 3, 2, 2, 2), 1 / 3, dtype=np.float32)
    assert float(acq.volume_variance_score(x, class_axis=1)) == 0.0


@pytest.mark.parametrize(("samples", "kw", "msg"), [
    (torch.rand(1, 2, 3), {"class_axis": 1}, "T >= 2"),
    (torch.ones(3, 2, 4, dtype=torch.int64), {"class_axis": 1}, "floating point"),
    (torch.rand(3, 2), {"class_axis": 1}, "at least a pass axis"),
    (torch.rand(3, 2, 4), {"class_axis": 0}, "class_axis=0"),
    (torch.rand(3, 2, 4), {"class_axis": 1, "ddof": 2}, "ddof"),
    (torch.tensor([[[0.5]], [[float("nan")]]]), {"class_axis": 1}, "nan or inf"),
])
def test_eq1_rejects_bad_samples(samples, kw, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        acq.mc_variance_score(samples, **kw)


# ------------------------------------------------------------------ acquisition


def test_select_top_k_orders_by_score_and_breaks_ties_by_id():
    scores = {"c": 1.0, "a": 3.0, "b": 3.0, "d": 0.5}
    assert val.select_top_k(scores, 2) == ["a", "b"]
    assert val.select_top_k(scores, 3) == ["a", "b", "c"]
    assert val.select_top_k(scores, 0) == []
    with pytest.raises(ValueError, match="only 4 unlabelled"):
        val.select_top_k(scores, 5)
    with pytest.raises(ValueError, match="score of 'x'"):
        val.select_top_k({"x": float("nan")}, 1)


def test_select_random_is_seeded_subset():
    ids = [f"v{i}" for i in range(10)]
    a = val.select_random(ids, 3, np.random.default_rng(7))
    b = val.select_random(list(reversed(ids)), 3, np.random.default_rng(7))
    assert a == b  # the candidates' order does not matter
    assert len(set(a)) == 3 and set(a) <= set(ids) and a == sorted(a)
    with pytest.raises(ValueError, match="duplicate"):
        val.select_random(["a", "a"], 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="only 2"):
        val.select_random(["a", "b"], 3, np.random.default_rng(0))


# ------------------------------------------------------------------ volumes


def test_relabel_maps_listed_values_and_zeroes_the_rest():
    lab = np.array([0, 1, 2, 3, 5, 6], dtype=np.uint8)
    assert val.relabel(lab, {1: [6], 2: [2, 1]}).tolist() == [0, 2, 2, 0, 0, 1]
    with pytest.raises(ValueError, match="mapped to two classes"):
        val.relabel(lab, {1: [2], 2: [2]})
    with pytest.raises(ValueError, match="integer labels"):
        val.relabel(lab.astype(float), {1: [1]})


def _case(cid: str = "c0", shape=(4, 8, 8), hu: float = -300.0, seed: int = 0) -> Case:
    rng = np.random.default_rng(seed)
    organs = np.zeros(shape, np.uint8)
    organs[:, 2:6, 2:6] = 3  # a "heart" block
    mask = (rng.random(shape) > 0.9).astype(np.uint8)
    return Case(cid, np.full(shape, hu, np.float32), mask=mask, organs=organs,
                spacing=(5.0, 2.0, 2.0))


def test_prepare_volume_windows_resamples_and_scales_spacing():
    v = val.prepare_volume(_case(), (2, 4, 4), source="organs", classes={1: [3]})
    # -300 HU in the (-1000, 400) window: 700 / 1400 = 0.5 everywhere
    assert v.image.shape == (1, 2, 4, 4) and v.image.dtype == torch.float32
    assert torch.allclose(v.image, torch.full_like(v.image, 0.5))
    assert v.label.dtype == torch.int64
    assert v.label[0].tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert v.spacing == pytest.approx((10.0, 4.0, 4.0))
    assert v.source_shape == (4, 8, 8)
    clipped = val.prepare_volume(_case(hu=3000.0), (2, 4, 4), source="organs", classes={1: [3]})
    assert float(clipped.image.max()) == pytest.approx(1.0)


def test_prepare_volume_errors_name_the_case():
    case = _case("synth_x")
    case.organs = None
    with pytest.raises(ValueError, match="synth_x: has no organs mask"):
        val.prepare_volume(case, (2, 4, 4), source="organs", classes={1: [3]})
    with pytest.raises(ValueError, match="source='lungs'"):
        val.prepare_volume(_case(), (2, 4, 4), source="lungs", classes={1: [1]})
    with pytest.raises(ValueError, match="grid"):
        val.prepare_volume(_case(), (2, 4), source="organs", classes={1: [3]})
    slices = _case()
    slices.intensity = "uint8"
    with pytest.raises(ValueError, match="HU volumes"):
        val.prepare_volume(slices, (2, 4, 4), source="organs", classes={1: [3]})


def test_volume_dataset_whole_volumes_and_seeded_patches():
    vols = [val.prepare_volume(_case(f"c{i}", seed=i), (4, 8, 8), source="infection",
                               classes={1: [1]}) for i in range(2)]
    ds = val.VolumeDataset(vols)
    assert len(ds) == 2 and ds[1]["case_id"] == "c1" and ds[0]["image"].shape == (1, 4, 8, 8)
    patched = val.VolumeDataset(vols, patch=(2, 16, 4), patches_per_volume=3)
    assert len(patched) == 6
    torch.manual_seed(0)
    a = patched[4]
    torch.manual_seed(0)
    b = patched[4]
    assert a["case_id"] == "c0" and a["image"].shape == (1, 2, 8, 4)  # 16 capped at 8
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    with pytest.raises(IndexError):
        patched[6]
    with pytest.raises(ValueError, match="needs a patch"):
        val.VolumeDataset(vols, patches_per_volume=2)


def test_class_dice_by_hand():
    pred = torch.tensor([[0, 1, 1, 2]])
    label = torch.tensor([[0, 1, 2, 2]])
    # class 1: tp 1, fp 1, fn 0 -> 2/3; class 2: tp 1, fp 0, fn 1 -> 2/3; class 3 empty -> 1
    assert per_class_dice(pred, label, [1, 2, 3]) == pytest.approx({1: 2 / 3, 2: 2 / 3, 3: 1.0})


def test_volume_scores_equal_eq1_of_mc_predict():
    torch.manual_seed(0)
    model = UNet3D(1, 2, base_width=2, depth=1, dropout=0.5)
    vols = [val.prepare_volume(_case(f"c{i}", hu=-900.0 + 200 * i), (4, 8, 8),
                               source="organs", classes={1: [3]}) for i in range(2)]
    got = val.volume_scores(model, vols, n_samples=3, seed=5)
    for v in vols:
        s = mc_predict(model, v.image[None], 3, seed=5)  # (T, 1, C, D, H, W)
        assert got[v.case_id] == pytest.approx(float(acq.volume_variance_score(s)[0]))
        assert got[v.case_id] > 0
    assert val.volume_scores(model, vols, n_samples=3, seed=5) == got  # deterministic


# ------------------------------------------------------------------ the loop


def _toy_volumes(n: int = 7) -> dict[str, val.Volume]:
    out = {}
    for i in range(n):
        case = _case(f"v{i}", shape=(4, 8, 8), hu=-200.0, seed=i)
        case.image[case.organs == 3] = 300.0  # a bright block to segment
        out[case.case_id] = val.prepare_volume(case, (4, 8, 8), source="organs",
                                               classes={1: [3]})
    return out


_CFG = {"target_class": 1, "n_classes": 2, "epochs": 1, "lr": 1e-2, "batch_size": 2,
        "patch": None, "loss": "combo"}
_SPLIT = {"pool": ["v0", "v1", "v2", "v3", "v4"], "val": ["v5"], "test": ["v6"]}


def _model() -> UNet3D:
    return UNet3D(1, 2, base_width=2, depth=1, dropout=0.5)


def _run(tmp_path, strategy, **kw):
    return val.run_volume_al(
        _toy_volumes(), _SPLIT, ["v0", "v1"], strategy=strategy, n_iterations=2,
        per_iteration=2, make_model=_model, config=_CFG, seed=0,
        cache=ResultCache(tmp_path / "res"), checkpoint_root=tmp_path / "ck", n_samples=3, **kw)


def test_loop_variance_picks_the_top_scores_and_random_shares_round0(tmp_path):
    recs = _run(tmp_path, "variance")
    assert [r["n_labelled"] for r in recs] == [2, 4, 5]  # the pool runs out at 5
    r0, r1 = recs[0], recs[1]
    assert set(r0["scores"]) == {"v2", "v3", "v4"}
    assert r0["selected"] == val.select_top_k(r0["scores"], 2)
    assert r1["labelled"] == sorted(["v0", "v1", *r0["selected"]])
    assert r1["selected"] == sorted(set(_SPLIT["pool"]) - set(r1["labelled"]))
    assert recs[-1]["selected"] == [] and recs[-1]["scores"] is None
    for r in recs:
        assert set(r["test_dice"]) == {"v6"} and 0.0 <= r["test_target_dice_mean"] <= 1.0
        assert (tmp_path / "ck" / r["round"] / val.WEIGHTS_NAME).exists()
        assert not (tmp_path / "ck" / r["round"] / "fit").exists()
    rand = _run(tmp_path, "random")
    assert rand[0]["round"] == r0["round"]  # same initial set, same seed: one training
    assert rand[0]["test_dice"] == r0["test_dice"]
    assert rand[0]["scores"] is None
    assert rand[0]["selected"] == val.select_random(["v2", "v3", "v4"], 2,
                                                    np.random.default_rng([0, 0, 5]))


def test_loop_reads_finished_rounds_back_without_training(tmp_path, monkeypatch):
    first = _run(tmp_path, "variance", warm_start=True, warm_epochs=1)

    def no_training(*_a, **_k):
        raise AssertionError("a finished round was trained again")

    monkeypatch.setattr(val, "_train_round", no_training)
    again = _run(tmp_path, "variance", warm_start=True, warm_epochs=1)
    assert again == first


def test_loop_retrains_a_round_whose_weights_were_lost(tmp_path):
    first = _run(tmp_path, "random")
    (tmp_path / "ck" / first[1]["round"] / val.WEIGHTS_NAME).unlink()
    again = _run(tmp_path, "random")
    assert again[1]["test_dice"] == first[1]["test_dice"]  # deterministic retraining
    assert (tmp_path / "ck" / first[1]["round"] / val.WEIGHTS_NAME).exists()


def test_loop_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="strategy='entropy'"):
        _run(tmp_path, "entropy")
    with pytest.raises(ValueError, match="non-empty pool subset"):
        val.run_volume_al(_toy_volumes(), _SPLIT, ["v6"], strategy="random", n_iterations=1,
                          per_iteration=1, make_model=_model, config=_CFG, seed=0,
                          cache=ResultCache(tmp_path), checkpoint_root=tmp_path)
    with pytest.raises(ValueError, match="not prepared"):
        val.run_volume_al({}, _SPLIT, ["v0"], strategy="random", n_iterations=1,
                          per_iteration=1, make_model=_model, config=_CFG, seed=0,
                          cache=ResultCache(tmp_path), checkpoint_root=tmp_path)
    with pytest.raises(ValueError, match="warm_epochs"):
        _run(tmp_path, "random", warm_start=True)
    with pytest.raises(FileNotFoundError, match="missing"):
        val.round_weights(tmp_path, "0123")


def test_make_loss_names():
    assert isinstance(val.make_loss("dice_ce"), DiceCELoss)
    logits = torch.zeros(1, 2, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2, dtype=torch.int64)
    loss = val.make_loss("combo")(logits, target)
    # uniform softmax: CE = log 2; empty foreground + smooth: Dice term 1 - 1e-5/(8*0.5+1e-5)
    assert float(loss) == pytest.approx(math.log(2) + 1 - 1e-5 / (4 + 1e-5), rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        val.make_loss("focal")


# ------------------------------------------------------------------ mechanism and curves


def test_score_error_correlation_by_hand():
    # errors 1 - Dice: a 0.1, b 0.5, c 0.3, d 0.9 -> ranks 1 3 2 4; scores rank 1 2 3 4;
    # d = (0, 1, -1, 0): rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    scores = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    dice = {"a": 0.9, "b": 0.5, "c": 0.7, "d": 0.1}
    assert val.score_error_correlation(scores, dice) == pytest.approx(0.8)
    # the highest score on the best-segmented volume: perfectly wrong ranking
    assert val.score_error_correlation({"a": 3.0, "b": 2.0, "c": 1.0},
                                       {"a": 0.9, "b": 0.5, "c": 0.1}) == pytest.approx(-1.0)
    assert math.isnan(val.score_error_correlation({"a": 1.0, "b": 2.0}, {"a": 0.1, "b": 0.2}))
    assert math.isnan(val.score_error_correlation(scores, dict.fromkeys(scores, 0.5)))
    with pytest.raises(ValueError, match=r"different volumes \(\['e'\]\)"):
        val.score_error_correlation(scores, {**dice, "e": 0.5})
    with pytest.raises(ValueError, match="Dice values"):
        val.score_error_correlation(scores, {**dice, "a": 1.5})
    with pytest.raises(ValueError, match=r"score of \['b'\]"):
        val.score_error_correlation({**scores, "b": float("nan")}, dice)


def test_training_curve_keeps_loss_and_val_dice_per_epoch():
    hist = [{"epoch": 1, "steps": 2, "train_loss": 0.9, "val_dice": 0.2, "seconds": 1.3},
            {"epoch": 2, "steps": 2, "train_loss": 0.5, "seconds": 1.1}]
    out = val.training_curve(hist)
    assert out[0] == {"epoch": 1, "train_loss": 0.9, "val_dice": 0.2}
    assert out[1]["epoch"] == 2 and math.isnan(out[1]["val_dice"])


def test_round_records_its_training_curve(tmp_path):
    recs = _run(tmp_path, "random")
    curve = recs[0]["curve"]
    assert [c["epoch"] for c in curve] == [1]  # _CFG trains 1 epoch
    assert curve[0]["val_dice"] == pytest.approx(recs[0]["val_dice"])


def test_volume_dice_per_volume_matches_class_dice():
    torch.manual_seed(0)
    model = UNet3D(1, 2, base_width=2, depth=1, dropout=0.5)
    vols = list(_toy_volumes(2).values())
    got = val.volume_dice(model, vols, 1)
    for v in vols:
        pred = val.predict_volume(model, v).argmax(0)
        assert got[v.case_id] == pytest.approx(per_class_dice(pred, v.label, [1])[1])
