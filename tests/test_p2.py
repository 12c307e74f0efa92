"""P2 experiments: splits, oracle points, scores, tables, verdicts and tiny real runs."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch

from covidlib.cache import ResultCache
from covidlib.data.api import open_dataset
from covidlib.data.errors import DataError
from covidlib.data.types import Case
from covidlib.experiments import p2, p2_data
from covidlib.experiments import p2_report as rep
from covidlib.losses import IGNORE

matplotlib.use("Agg")

TINY = {"size": 32, "epochs": 1, "model_kwargs": {"base_width": 4, "depth": 2},
        "max_slices": {"train": 6, "val": 3, "test": 6}}


# ------------------------------------------------------------------------------ settings


def test_settings_merge_and_errors():
    s = p2.settings("cpu", {"epochs": 2})
    assert isinstance(s, p2.P2Settings)
    assert s.epochs == 2 and s.size == p2.PROFILES["cpu"].size == 64
    s.max_slices["train"] = 1  # a copy: the profile is untouched
    assert p2.PROFILES["cpu"].max_slices["train"] == 45
    assert p2.settings("cpu").max_slices["train"] == 45
    with pytest.raises(AttributeError):
        s.epochs = 3  # frozen
    with pytest.raises(p2.SettingsError, match="'laptop'"):
        p2.settings("laptop")
    with pytest.raises(p2.SettingsError, match="'epoch'"):
        p2.settings("cpu", {"epoch": 3})
    assert p2.PROFILES["paper"].epochs == 100 and p2.PROFILES["paper"].lr == 1e-4
    assert p2.PROFILES["paper"].batch_size == 8 and p2.PROFILES["paper"].size == 352


@pytest.mark.parametrize(("kw", "msg"), [
    ({"epochs": 0}, "epochs=0: expected an integer >= 1"),
    ({"epochs": 2.5}, "epochs=2.5: expected int"),
    ({"size": True}, "size=True: expected int"),
    ({"lr": -1.0}, "lr=-1.0: expected a finite number > 0"),
    ({"lr": float("nan")}, "lr=nan"),
    ({"crop": 1.5}, "crop=1.5: expected a fraction"),
    ({"crop": 0}, "crop=0: expected a fraction"),
    ({"lam": -0.5}, "lam=-0.5"),
    ({"model": "vgg"}, "model='vgg': expected one of 'unet2d', 'fcn8_vgg16'"),
    ({"model_kwargs": [1]}, "model_kwargs=\\[1\\]: expected a mapping"),
    ({"placement": "random"}, "placement='random'"),
    ({"n_background": "many"}, "n_background='many'"),
    ({"n_background": -1}, "n_background=-1"),
    ({"patience": 0}, "patience=0: None or an integer >= 1"),
    ({"stand_in_seeds": 0}, "stand_in_seeds=0"),
    ({"checkpoints": "yes"}, "checkpoints='yes': expected bool"),
    ({"max_slices": {"train": 3}}, "max_slices=.*'train', 'val' and 'test'"),
    ({"max_slices": {"train": 0, "val": None, "test": None}}, "max_slices\\['train'\\]=0"),
    ({"max_slices": {"train": "all", "val": None, "test": None}}, "max_slices="),
])
def test_settings_validation_names_the_value(kw, msg):
    """A bad value -> SettingsError (a ValueError) naming the setting and the value."""
    with pytest.raises(p2.SettingsError, match="p2 setting " + msg):
        p2.settings("cpu", kw)


def test_settings_config_is_the_profile_dict():
    """The typed profiles give the same plain dict as the dict profiles they replace (the
    cache keys of the cpu and reference profiles depend on it)."""
    cpu = p2.settings("cpu").to_config()
    assert list(cpu) == ["lam", "n_background", "placement", "figure_slices", "model",
                         "model_kwargs", "size", "crop", "epochs", "batch_size", "lr",
                         "patience", "max_slices", "checkpoints", "stand_in_seeds"]
    assert cpu == {"lam": 1.0, "n_background": "match", "placement": "distance",
                   "figure_slices": 3, "model": "unet2d",
                   "model_kwargs": {"base_width": 8, "depth": 3}, "size": 64, "crop": 0.75,
                   "epochs": 10, "batch_size": 4, "lr": 2e-3, "patience": None,
                   "max_slices": {"train": 45, "val": 24, "test": 96}, "checkpoints": False,
                   "stand_in_seeds": 1}
    ref = p2.table_settings("P2-T2", "reference")
    assert (ref.size, ref.epochs, ref.crop, ref.max_slices) == (
        96, 20, 1.0, {"train": 96, "val": 32, "test": 160})
    run = p2.make_run("synthetic", "a-like", "pl", 0, ref)
    assert run.config() == {"version": p2.VERSION, "dataset": "synthetic", "split": "a-like",
                            "loss": "pl", "seed": 0, "task": "segmentation", "model": "unet2d",
                            "model_kwargs": {"base_width": 8, "depth": 3}, "size": 96,
                            "crop": 1.0, "epochs": 20, "batch_size": 4, "lr": 2e-3,
                            "lam": 1.0, "patience": None,
                            "max_slices": {"train": 96, "val": 32, "test": 160},
                            "n_background": "match", "placement": "distance",
                            "figure_slices": 3}
    with pytest.raises(TypeError, match="P2Settings"):
        p2.make_run("synthetic", "a-like", "pl", 0, cpu)  # a plain dict is refused


@pytest.mark.parametrize(("kw", "msg"), [
    ({"loss": "dice"}, "loss='dice'"),
    ({"epochs": 0}, "epochs=0"),
    ({"crop": 1.5}, "crop=1.5"),
    ({"max_slices": {"train": 3}}, "max_slices"),
    ({"max_slices": {"train": 0, "val": None, "test": None}}, "max_slices\\['train'\\]=0"),
    ({"n_background": "many"}, "n_background='many'"),
    ({"task": "detection"}, "task='detection'"),
])
def test_run_validation_names_the_field(kw, msg):
    args = {"dataset": "synthetic", "split": "sep", "loss": "pl", **kw}
    with pytest.raises(ValueError, match=msg):
        p2.P2Run(**args)


# ---------------------------------------------------------------------------- splits


def test_thin_spreads_evenly():
    # item floor((2i + 1) * 10 / 6): 1, 5, 8
    assert p2_data.thin(list(range(10)), 3) == [1, 5, 8]
    assert p2_data.thin([4, 5], 1) == [5]
    assert p2_data.thin(list(range(4)), None) == [0, 1, 2, 3]
    assert p2_data.thin(list(range(4)), 9) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="n=0"):
        p2_data.thin(list(range(4)), 0)


def test_stand_in_specs():
    ids = [f"synth_{i:03d}" for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)]  # unsorted on purpose
    a = p2_data.stand_in_spec("a-like", ids)
    assert a["train"] == ["synth_000", "synth_002", "synth_004", "synth_006", "synth_008",
                          "synth_010"]
    assert a["val"] == ["synth_001"]
    assert a["test"] == ["synth_003", "synth_005", "synth_007", "synth_009"]
    b = p2_data.stand_in_spec("b-sep", ids)
    assert b["train"] == [f"synth_{i:03d}" for i in range(5)]
    assert b["val"] == ["synth_005"] and b["test"] == ["synth_006", "synth_007", "synth_008"]
    m = p2_data.stand_in_spec("b-mixed", ids)
    assert m["cases"] == [f"synth_{i:03d}" for i in range(9)]
    assert (m["train"], m["val"], m["test"]) == (0.45, 0.05, 0.50)
    with pytest.raises(ValueError, match="'b-sep' needs >= 9 volumes, got 3"):
        p2_data.stand_in_spec("b-sep", ids[:3])
    with pytest.raises(ValueError, match="'c-like'"):
        p2_data.stand_in_spec("c-like", ids)


def test_split_refs_on_the_phantom(synthetic_root):
    ds = open_dataset("synthetic", synthetic_root)
    cases = ds.cases()
    by_id = {c.case_id: c for c in cases}
    parts = p2_data.split_refs(ds, "a-like", cases)
    assert {k: len(v) for k, v in parts.items()} == {"train": 45, "val": 5, "test": 48}
    for part in parts.values():  # A-like keeps infected slices only
        assert all(np.isin(by_id[c].mask[z], [1, 2]).any() for c, z in part)
    assert {c for c, _ in parts["val"]} == {"synth_001"}
    assert {int(c[-3:]) % 2 for c, _ in parts["train"]} == {0}
    capped = p2_data.split_refs(ds, "b-sep", cases, {"train": 10, "val": None, "test": 7})
    assert len(capped["train"]) == 10 and len(capped["test"]) == 7
    assert len(capped["val"]) == by_id["synth_005"].n_slices
    assert capped["train"] == p2_data.thin(p2_data.split_refs(ds, "b-sep", cases)["train"], 10)
    with pytest.raises(DataError, match=r"unknown split 'nope'.*'sep'.*stand-in"):
        p2_data.split_refs(ds, "nope", cases)


def test_center_crop_keeps_the_middle():
    img = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    case = Case("c", img, mask=(img > 50).astype(np.int64))
    cut = p2_data.center_crop(case, 0.5)  # 5 rows from row (10 - 5) // 2 = 2
    assert cut.image.shape == (1, 5, 5) and cut.image[0, 0, 0] == 22 and cut.image[0, 4, 4] == 66
    assert cut.mask.shape == (1, 5, 5) and cut.lung is None
    assert p2_data.center_crop(case, 1.0) is case
    with pytest.raises(ValueError, match="fraction=0"):
        p2_data.center_crop(case, 0)


def test_resolve_data(tmp_path):
    assert p2.resolve_data("P2-T2", "synthetic") == ("synthetic", "a-like", False)
    assert p2.resolve_data("P2-T6", "auto", tmp_path) == ("synthetic", "sep", False)
    with pytest.raises(DataError, match="ma20-slices"):  # every real candidate is named
        p2.resolve_data("P2-T5", "real", tmp_path)
    with pytest.raises(ValueError, match="'ma-20', 'ma20-slices'"):
        p2.resolve_data("P2-T8", "covid-semiseg")
    with pytest.raises(DataError, match="covid-semiseg"):
        p2.resolve_data("P2-T2", "real", tmp_path)
    with pytest.raises(ValueError, match="'covid-semiseg' for P2-T3"):
        p2.resolve_data("P2-T3", "covid-semiseg")
    with pytest.raises(ValueError, match="'P2-T9'"):
        p2.resolve_data("P2-T9")


# ----------------------------------------------------------------------- oracle, scores


def test_oracle_points_are_seeded():
    mask = np.zeros((1, 12, 12), dtype=np.int64)
    mask[0, 1:4, 1:4] = 1  # 3 x 3 region: centre (2, 2)
    mask[0, 8:11, 7:10] = 2  # second region, other label: centre (9, 8)
    cases = {"c": Case("c", np.zeros((1, 12, 12), np.float32), mask=mask)}
    a = p2_data.oracle_points(cases, [("c", 0)], 0, [1, 2])[("c", 0)]
    b = p2_data.oracle_points(cases, [("c", 0)], 0, [1, 2])[("c", 0)]
    assert a == b
    assert [(p.y, p.x, p.label) for p in a if p.label] == [(2, 2, 1), (9, 8, 1)]
    bg = [p for p in a if p.label == 0]
    assert len(bg) == 2 and all(mask[0, p.y, p.x] == 0 for p in bg)
    others = [p2_data.oracle_points(cases, [("c", 0)], s, [1, 2])[("c", 0)] for s in range(1, 6)]
    assert any(o != a for o in others)  # the background draw depends on the seed


def test_score_slices_hand_computed():
    m1 = np.zeros((4, 4), bool)
    m1[0:2, 0:2] = True
    p1 = np.zeros((4, 4), bool)
    p1[0:2, 0:3] = True  # TP 4, FP 2, FN 0, TN 10
    m2 = np.zeros((4, 4), bool)
    m2[0, 0] = m2[3, 3] = True  # two regions
    p2_ = np.zeros((4, 4), bool)
    p2_[3, 3] = True  # TP 1, FP 0, FN 1, TN 14
    s = p2.score_slices([p1, p2_], [m1, m2], [("a", 0), ("b", 0)])
    # summed: TP 5, FP 2, FN 1, TN 24
    assert s["dice"] == pytest.approx(10 / 13)
    assert s["iou"] == pytest.approx(5 / 8)
    assert s["ppv"] == pytest.approx(5 / 7)
    assert s["sens"] == pytest.approx(5 / 6)
    assert s["spec"] == pytest.approx(24 / 26)
    # counts 1 vs 1 and 1 vs 2 -> MAE 0.5; slice 1: predicted centroid (0, 1), true point
    # (0, 0) -> GAME 2; slice 2: (3, 3) matches, (0, 0) missed -> GAME 1
    assert s["mae"] == pytest.approx(0.5) and s["game"] == pytest.approx(1.5)
    assert s["regions_per_slice"] == pytest.approx(1.5) and s["n_volumes"] == 2


def test_mask_codec_and_figure_refs():
    mask = np.zeros((1, 8), bool)
    mask[0, 0] = True
    assert p2.encode_mask(mask) == "gA=="  # one byte 0b10000000
    rng = np.random.default_rng(0)
    m = rng.random((7, 5)) > 0.5
    assert np.array_equal(p2.decode_mask(p2.encode_mask(m), (7, 5)), m)
    with pytest.raises(ValueError, match="shape"):
        p2.decode_mask(p2.encode_mask(m), (9, 9))
    masks = [np.zeros((3, 3), bool) for _ in range(5)]
    for m_, area in zip(masks, [0, 5, 3, 9, 1], strict=True):
        m_.flat[:area] = True
    refs = [("c", z) for z in range(5)]
    # infected by area: z3 (9), z1 (5), z2 (3), z4 (1); thin(4 items, 2) takes items 1 and 3
    assert p2.figure_refs(masks, refs, 2) == [("c", 1), ("c", 4)]
    assert p2.figure_refs(masks, refs, 0) == []


@pytest.mark.parametrize("loss", p2.LOSSES)
def test_every_loss_trains(loss):
    torch.manual_seed(0)
    run = p2.P2Run("synthetic", "sep", loss, model_kwargs={"base_width": 4, "depth": 1})
    model = p2.make_model(run)
    points = torch.full((2, 16, 16), IGNORE, dtype=torch.int64)
    points[0, 3, 3], points[0, 10, 12], points[1, 5, 5] = 1, 0, 0
    mask = torch.zeros((2, 16, 16), dtype=torch.int64)
    mask[0, 2:5, 2:5] = 1
    batch = {"image": torch.randn(2, 3, 16, 16), "mask": mask, "points": points}
    value, parts = p2.make_loss(loss, 1.0, 0)(model, batch)
    assert value.ndim == 0 and math.isfinite(float(value.detach())) and parts
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match="'dice'"):
        p2.make_loss("dice")


# ------------------------------------------------------------------------ tables, verdicts


def _fake_runs(artifact: str, values: dict[str, list[dict]]) -> p2.TableRuns:
    runs = [{"loss": loss, "seed": seed, "result": {"scores": sc, "seconds": 1.0},
             "cached": False} for loss, per_seed in values.items()
            for seed, sc in enumerate(per_seed)]
    return p2.TableRuns(artifact, "synthetic", "a-like", False, "cpu",
                        p2.settings("cpu"), runs)


def _seg(d1: float, d2: float) -> list[dict]:
    base = {"iou": 0.5, "ppv": 0.5, "sens": 0.5, "spec": 0.9}
    return [{"dice": d1, **base}, {"dice": d2, **base, "ppv": None}]


def test_summary_display_and_verdicts_segmentation():
    tr = _fake_runs("P2-T2", {"fully": _seg(0.6, 0.8), "pl": _seg(0.3, 0.3),
                              "cb_flip": _seg(0.5, 0.5), "cb_flip_rot": _seg(0.6, 0.7)})
    f = rep.summary_frame(tr)
    assert list(f.index) == ["fully", "pl", "cb_flip", "cb_flip_rot"]
    assert f.loc["fully", "dice_paper"] == 0.65  # from p2.yaml
    assert f.loc["fully", "dice_mean"] == pytest.approx(0.7)
    assert f.loc["fully", "dice_std"] == pytest.approx(math.sqrt(0.02))  # sample std, ddof 1
    assert f.loc["pl", "ppv_mean"] == 0.5 and f.loc["pl", "ppv_std"] == 0.0  # None skipped
    shown = rep.display_table(f)
    assert shown.loc["Fully Supervised", ("Dice", "paper")] == "0.65"
    assert shown.loc["Fully Supervised", ("Dice", "ours")] == "0.70 ± 0.14"
    assert list(shown.columns.get_level_values(0)[::2]) == ["Dice", "IoU", "PPV", "Sens.",
                                                             "Spec."]
    v = rep.ordering_verdicts(f, "P2-T2")
    # paper: CB(Flip, Rot) 0.73 > fully 0.65 > CB(Flip) 0.58 > PL 0.54; ours: fully 0.7 >
    # CB(Flip, Rot) 0.65 > CB(Flip) 0.5 > PL 0.3 -> only the (CB(Flip, Rot), fully) pair differs
    assert "5 of 6 pairs are ordered as in the paper" in v[0]
    assert v[1].startswith("The paper has CB(Flip, Rot) + PL better than Point Loss (PL) on "
                           "Dice (0.73 vs 0.54)")
    assert v[1].endswith("the ordering holds, by more than the seeds' spread.")
    assert "reversed on the means, within the seeds' spread (difference 0.050" in v[4]
    assert rep.verdict_summary(f, "P2-T2").startswith("5/6 pairs ordered as in the paper by Dice")
    # Table 3: the paper has fully supervised (0.84) above CB(Flip, Rot) (0.75): named first
    f3 = rep.summary_frame(_fake_runs("P2-T3", {"fully": _seg(0.6, 0.8),
                                                "cb_flip_rot": _seg(0.6, 0.7)}))
    v3 = rep.ordering_verdicts(f3, "P2-T3")
    assert v3[0].endswith("1 of 1 pairs are ordered as in the paper.")
    assert v3[1] == ("The paper has Fully Supervised better than CB(Flip, Rot) + PL on Dice "
                     "(0.84 vs 0.75); ours 0.700 ± 0.141 vs 0.650 ± 0.071: the ordering holds on "
                     "the means but within the seeds' spread (difference 0.050 <= sum of stds "
                     "0.212).")
    paper, ours = rep.scorecard_values(f, "P2-T2")
    assert paper["Point Loss (PL)"] == 0.54 and ours["Point Loss (PL)"] == pytest.approx(0.3)


def test_verdicts_counting_lower_is_better():
    def c(mae: float) -> dict:
        return {"mae": mae, "game": mae + 1, "regions_per_slice": 2.0}
    tr = _fake_runs("P2-T7", {"pl": [c(9.0), c(7.0)], "lcfcn": [c(1.0), c(1.2)],
                              "cb_lcfcn": [c(1.3), c(1.5)]})
    f = rep.summary_frame(tr)
    assert f.attrs["regions_per_slice"] == 2.0
    v = rep.ordering_verdicts(f, "P2-T7")
    # paper MAE: CB LCFCN 0.66 < LCFCN 1.15 < PL 5.97; ours LCFCN 1.1 < CB 1.4 < PL 8
    assert "Ranking by MAE (best first): paper CB LCFCN Loss < LCFCN Loss < Point Loss" in v[0]
    assert "2 of 3 pairs" in v[0]
    assert v[1].startswith("The paper has CB LCFCN Loss better than LCFCN Loss on MAE "
                           "(0.66 vs 1.15)")
    # ours 1.4 ± 0.141 vs 1.1 ± 0.141: gap 0.3 > 0.283, the sum of the stds
    assert v[1].endswith("ours 1.400 ± 0.141 vs 1.100 ± 0.141: the ordering is reversed, by "
                         "more than the seeds' spread.")
    assert "predicting no region at all scores MAE = GAME = 2.00" in v[-1]


def test_settings_comparison_and_sources():
    t = rep.settings_comparison(p2.settings("cpu"))
    assert t.loc["image_size", "paper"] == "352" and t.loc["image_size", "ours"] == "64"
    assert t.loc["epochs", "paper"] == "100"
    src = rep.data_sources(["P2-T4"], "synthetic",
                           max_slices={"train": 45, "val": None, "test": 96})
    row = src.loc["P2 Table 4"]
    assert (row["dataset"], row["split"], row["data"]) == ("synthetic", "b-sep", "phantom")
    assert row["centre crop"] == "none"
    assert "volumes 1-5 train" in row["slices"] and "at most 45 / all / 96" in row["slices"]


# ------------------------------------------------------------------------------ tiny runs


def test_tiny_runs_are_deterministic_cached_and_drawn(synthetic_root, tmp_path):
    s = p2.table_settings("P2-T2", "cpu", TINY)  # no centre crop outside COVID-19-C
    run = p2.make_run("synthetic", "a-like", "cb_flip_rot", 0, s)
    a = p2.run_p2(run, synthetic_root, device="cpu")
    b = p2.run_p2(run, synthetic_root, device="cpu")
    assert a["scores"] == b["scores"] and a["figure"] == b["figure"]
    assert a["n_slices"] == {"train": 6, "val": 3, "test": 6}
    assert a["n_points"]["infection"] == a["n_points"]["background"] > 0
    tr = p2.run_table("P2-T2", "synthetic", "cpu", TINY, seeds=[0], device="cpu",
                      data_root=synthetic_root, results_dir=tmp_path, progress=False)
    assert [r["loss"] for r in tr.runs] == list(p2.SEGMENTATION_LOSSES)
    assert tr.result("cb_flip_rot", 0)["scores"] == a["scores"]  # same config, same numbers
    cache = ResultCache(tmp_path)
    assert len(cache.entries(p2.KIND)) == 4
    again = p2.run_table("P2-T2", "synthetic", "cpu", TINY, seeds=[0], device="cpu",
                         data_root=synthetic_root, results_dir=tmp_path, progress=False)
    assert all(r["cached"] for r in again.runs) and not any(r["cached"] for r in tr.runs)
    fig = rep.figure3(tr, data_root=synthetic_root)
    assert len(fig.axes) == 4 * len(a["figure"]["refs"]) > 0
    assert [ax.get_title().split("\n")[0] for ax in fig.axes[1:4]] == [
        "Ground truth", "Point loss (PL)", "CB(Flip, Rot) + PL"]
    assert "the CB prediction has the higher Dice on" in rep.figure3_verdict(
        tr, data_root=synthetic_root)
