"""P2 fixes (PL background, crop on COVID-19-C only, A split sizes), the lung-containment
mechanism, three-way verdicts, the real ma20-slices tables and the public entry point."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from covidlib.data.api import open_dataset
from covidlib.data.types import Case
from covidlib.experiments import p2, p2_data
from covidlib.experiments import p2_report as rep
from covidlib.losses import IGNORE
from covidlib.metrics import lung_containment

TINY = {"size": 32, "epochs": 1, "model_kwargs": {"base_width": 4, "depth": 2},
        "max_slices": {"train": 6, "val": 3, "test": 6}}


class _Constant(nn.Module):
    """Logits log(1) = 0 for background and log(3) for infection at every pixel:
    p(background) = 1/4, p(infection) = 3/4."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, math.log(3.0)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _c, h, w = x.shape
        return self.bias.view(1, 2, 1, 1).expand(b, 2, h, w)


def _batch() -> dict[str, torch.Tensor]:
    points = torch.full((2, 4, 4), IGNORE, dtype=torch.int64)
    points[0, 1, 1], points[0, 3, 3] = 1, 0  # infected slice: one click each
    points[1, 2, 2] = 0  # clean slice: one background click only
    return {"image": torch.zeros(2, 3, 4, 4), "points": points,
            "mask": torch.zeros(2, 4, 4, dtype=torch.int64)}


# ------------------------------------------------------------------------------- fixes


def test_pl_baseline_pushes_every_pixel_of_a_clean_slice_to_background():
    value, _ = p2.make_loss("pl")(_Constant(), _batch())
    # P2 Sec. 4.2: slice 2 has no infection, so all its 16 pixels are background:
    # (-log 3/4 + log 4 + 16 log 4) / 18 labelled pixels (the old loss used its 1 click: /3)
    expected = (math.log(4 / 3) + 17 * math.log(4)) / 18
    assert float(value.detach()) == pytest.approx(expected)


def test_cb_point_term_keeps_to_the_clicks():
    _, parts = p2.make_loss("cb_flip")(_Constant(), _batch())
    # P2 Eq. 2 inside CB: the 3 clicked pixels only; constant logits are flip-consistent
    assert parts["point"] == pytest.approx((math.log(4 / 3) + 2 * math.log(4)) / 3)
    assert parts["consistency"] == pytest.approx(0.0)


@pytest.mark.parametrize(("artifact", "crop"), [
    ("P2-T2", 1.0), ("P2-T3", 1.0), ("P2-T4", 1.0), ("P2-T7", 1.0),
    ("P2-T5", 0.75), ("P2-T6", 0.75), ("P2-T8", 0.75)])
def test_centre_crop_on_covid19_c_only(artifact, crop):
    assert p2.table_settings(artifact, "cpu").crop == crop
    assert p2.table_settings(artifact, "paper").crop == crop


def test_crop_applies_to_slice_sets_too():
    """A crop in the config is a crop in the data: 8-bit slice stacks are cut as well."""
    img = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)

    class _DS:
        name = "x"
        root = "."
        manifest = type("M", (), {"layout": type("L", (), {"groups": ()})()})()

        def cases(self):
            return [Case("c", img, mask=np.zeros_like(img), lung=np.ones_like(img),
                         intensity="uint8")]

    (cut,) = p2_data.prepared_cases(_DS(), 0.5)
    assert cut.image.shape == (2, 4, 4) and cut.image[0, 0, 0] == img[0, 2, 2]
    assert cut.lung.shape == (2, 4, 4)


def test_a_split_counts_come_from_the_paper_values_and_the_split(synthetic_root):
    c = rep.a_split_counts("synthetic", synthetic_root)
    assert (c["paper_train"], c["paper_val"], c["paper_test"]) == (50, 5, 48)
    assert c["paper_images"] == 98 and c["paper_train_only"] == 45
    assert (c["ours_train"], c["ours_val"], c["ours_test"]) == (45, 5, 48)  # a-like stand-in
    capped = rep.a_split_counts("synthetic", synthetic_root, {"train": 10, "val": None,
                                                              "test": None})
    assert capped["ours_train"] == 10


# ------------------------------------------------------------------------------ mechanism


def test_lung_containment_hand_computed():
    lung = np.zeros((4, 4), bool)
    lung[:, :2] = True
    pred1 = np.zeros((4, 4), bool)
    pred1[0, :] = True  # 4 pixels, 2 inside
    pred2 = np.zeros((4, 4), bool)
    pred2[3, 0] = True  # 1 pixel, inside
    assert lung_containment([pred1, pred2], [lung, lung]) == pytest.approx(3 / 5)
    assert math.isnan(lung_containment([np.zeros((4, 4), bool)], [lung]))
    with pytest.raises(ValueError, match="image 0 has prediction shape"):
        lung_containment([pred1], [lung[:2]])
    with pytest.raises(ValueError, match="1 predictions and 2 lung masks"):
        lung_containment([pred1], [lung, lung])


def test_score_slices_reports_lung_containment():
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    pred = np.zeros((4, 4), bool)
    pred[1, 1] = pred[0, 3] = True
    lung = np.zeros((4, 4), bool)
    lung[1:3, 1:3] = True
    s = p2.score_slices([pred], [mask], [("a", 0)], [lung])
    assert s["lung_containment"] == pytest.approx(0.5) and s["lung_containment_truth"] == 1.0
    assert p2.score_slices([pred], [mask], [("a", 0)])["lung_containment"] is None


def _runs(values: dict[str, list[tuple[float, float, list[float]]]]) -> p2.TableRuns:
    """loss -> per seed (dice, lung containment, validation Dice curve)."""
    runs = []
    for loss, per_seed in values.items():
        for seed, (dice, lung, curve) in enumerate(per_seed):
            runs.append({"loss": loss, "seed": seed, "cached": False, "result": {
                "scores": {"dice": dice, "iou": 0.5, "ppv": 0.5, "sens": 0.5, "spec": 0.9,
                           "lung_containment": lung, "lung_containment_truth": 1.0},
                "history": [{"epoch": i + 1, "train_loss": 1.0 / (i + 1), "val_dice": v}
                            for i, v in enumerate(curve)],
                "best_epoch": int(np.argmax(curve)) + 1}})
    return p2.TableRuns("P2-T5", "ma20-slices", "mixed", True, "cpu", p2.settings("cpu"),
                        runs)


FLAT = [0.2, 0.5, 0.6, 0.6, 0.6, 0.6]
RISING = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def test_three_way_verdicts():
    # CB(Flip, Rot) below PL on Dice (claim fails); its masks are more inside the lungs
    tr = _runs({"fully": [(0.5, 0.9, FLAT)], "pl": [(0.3, 0.4, FLAT)],
                "cb_flip": [(0.4, 0.5, FLAT)], "cb_flip_rot": [(0.2, 0.6, FLAT)]})
    f = rep.summary_frame(tr)
    lungs = rep.lung_frame(tr)
    assert lungs.loc["cb_flip_rot", "inside_lung_mean"] == 0.6
    conv = rep.baseline_convergence(tr)
    assert conv.converged
    v = rep.claim_verdicts(f, tr, lungs, conv)
    # one seed per row: the run is too small to call either way (issue 14); the mechanism
    # is still reported
    assert [x.label for x in v] == ["inconclusive"] * 4
    assert v[0].text.startswith("inconclusive (run too small: one seed")
    assert "lung containment (CB inside the lungs more than PL) present" in v[0].text
    # two seeds, CB(Flip, Rot) below PL by more than the spread: not reproduced
    tr = _runs({"fully": [(0.5, 0.9, FLAT)] * 2, "pl": [(0.3, 0.4, FLAT), (0.31, 0.4, FLAT)],
                "cb_flip_rot": [(0.2, 0.6, FLAT), (0.21, 0.6, FLAT)]})
    v = rep.claim_verdicts(rep.summary_frame(tr), tr, rep.lung_frame(tr),
                           rep.baseline_convergence(tr))
    assert v[0].label == "not reproduced"
    assert "lung containment (CB inside the lungs more than PL) present" in v[0].text
    # the same numbers with a baseline still improving: inconclusive
    tr2 = _runs({"fully": [(0.5, 0.9, RISING)], "pl": [(0.3, 0.4, FLAT)],
                 "cb_flip_rot": [(0.2, 0.6, FLAT)]})
    conv2 = rep.baseline_convergence(tr2)
    assert not conv2.converged
    v2 = rep.claim_verdicts(rep.summary_frame(tr2), tr2, rep.lung_frame(tr2), conv2)
    assert v2[0].label == "inconclusive" and "not converged" in v2[0].text
    # one seed: no spread to compare with (never "by more than the seeds' spread")
    assert v2[0].text.endswith("the ordering is reversed (one seed, no spread to compare the "
                               "difference with).")
    # every seed's curve must have flattened: the second seed's still rises
    tr3 = _runs({"fully": [(0.5, 0.9, FLAT), (0.5, 0.9, RISING)]})
    conv3 = rep.baseline_convergence(tr3)
    assert not conv3.converged and conv3.reason.startswith("seed 1: still improving")
    conv4 = rep.baseline_convergence(_runs({"fully": [(0.5, 0.9, FLAT), (0.5, 0.9, FLAT)]}))
    assert conv4.converged and "seed 0: validation flat" in conv4.reason
    assert "; seed 1: validation flat" in conv4.reason


def _claim(values: dict[str, list[tuple[float, float, list[float]]]]):
    """The verdict of P2's claim "CB(Flip) + PL beats PL on Dice" for these runs."""
    tr = _runs(values)
    frame = rep.summary_frame(tr)
    (v,) = rep.claim_verdicts(frame, tr, rep.lung_frame(tr), rep.baseline_convergence(tr))
    return v


def test_too_small_runs_are_inconclusive():
    """Issue 14: one seed, or a difference of the means inside the seeds' spread, cannot
    decide a claim: "inconclusive (run too small)", even with a converged baseline and the
    means ordered as in the paper (the phantom tables ran one seed and said "reproduced")."""
    fully = [(0.5, 0.9, FLAT), (0.5, 0.9, FLAT)]
    # one seed each, CB(Flip) 0.4 > PL 0.3 as in the paper: not "reproduced"
    v = _claim({"fully": fully[:1], "pl": [(0.3, 0.4, FLAT)], "cb_flip": [(0.4, 0.5, FLAT)]})
    assert v.label == "inconclusive"
    assert v.text.startswith("inconclusive (run too small: one seed")
    # one seed, reversed: not "not reproduced" either
    v = _claim({"fully": fully[:1], "pl": [(0.4, 0.4, FLAT)], "cb_flip": [(0.3, 0.5, FLAT)]})
    assert v.label == "inconclusive" and "run too small: one seed" in v.text
    # the table's headline (scorecard) says why
    tr = _runs({"fully": fully[:1], "pl": [(0.3, 0.4, FLAT)], "cb_flip_rot": [(0.4, 0.5, FLAT)]})
    frame = rep.summary_frame(tr)
    report = rep.TableReport(tr, frame, [], {}, 0.0,
                             claims=rep.claim_verdicts(frame, tr, rep.lung_frame(tr)))
    assert report.headline() == (
        "inconclusive (run too small): 3/3 pairs ordered as in the paper by Dice; CB(Flip, "
        "Rot) + PL vs Point Loss (PL) on Dice: the ordering holds (one seed, no spread to "
        "compare the difference with)")
    # two seeds, means 0.41 vs 0.31, stds 0.0141 each: gap 0.1 > 0.028 -> reproduced
    v = _claim({"fully": fully, "pl": [(0.30, 0.4, FLAT), (0.32, 0.4, FLAT)],
                "cb_flip": [(0.40, 0.5, FLAT), (0.42, 0.5, FLAT)]})
    assert v.label == "reproduced"
    # two seeds, means 0.40 vs 0.31 but CB's seeds 0.2 and 0.6 (std 0.283): gap 0.09 inside
    # the spread 0.297 -> inconclusive, the numbers named
    v = _claim({"fully": fully, "pl": [(0.30, 0.4, FLAT), (0.32, 0.4, FLAT)],
                "cb_flip": [(0.20, 0.5, FLAT), (0.60, 0.5, FLAT)]})
    assert v.label == "inconclusive"
    assert v.text.startswith("inconclusive (run too small: the difference 0.090 is inside the "
                             "seeds' spread 0.297")
    # two seeds, reversed by more than the spread, converged baseline: a real finding
    v = _claim({"fully": fully, "pl": [(0.40, 0.4, FLAT), (0.42, 0.4, FLAT)],
                "cb_flip": [(0.30, 0.5, FLAT), (0.32, 0.5, FLAT)]})
    assert v.label == "not reproduced" and "converged baseline" in v.text


def test_baseline_curve_figure():
    import matplotlib

    matplotlib.use("Agg")
    tr = _runs({"fully": [(0.5, 0.9, FLAT), (0.5, 0.9, RISING)]})
    fig = rep.baseline_curves(tr)
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) == 4  # 2 curves + 2 kept-epoch marks


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def ma20(shared_data):
    if not (shared_data / "ma20-slices").is_dir():
        pytest.skip(f"real data not found at {shared_data / 'ma20-slices'}")
    return shared_data


def test_covid19_c_tables_use_ma20_slices(ma20):
    assert p2.resolve_data("P2-T5", "auto", ma20) == ("ma20-slices", "mixed", True)
    assert p2.resolve_data("P2-T6", "real", ma20) == ("ma20-slices", "sep", True)
    assert p2.resolve_data("P2-T8", "ma20-slices", ma20) == ("ma20-slices", "mixed", True)
    src = rep.data_sources(["P2-T6"], "auto", ma20, crop=0.75)
    row = src.loc["P2 Table 6"]
    assert row["data"] == "real 2-D derivative" and row["centre crop"] == "central 75%"
    assert "7 / 1 / 2 cases" in row["slices"]


def test_ma20_lungs_reach_the_scores(ma20):
    ds = open_dataset("ma20-slices", ma20)
    cases = {c.case_id: c for c in p2_data.prepared_cases(ds, 0.75)}
    refs = [("coronacases_001", 0), ("coronacases_010", 5)]
    lungs = p2_data.lung_views(cases, refs, 32)
    assert len(lungs) == 2 and lungs[0].shape == (32, 32) and 0 < lungs[0].mean() < 1
    truth = [p2_data.slice_views("ma20-slices", [r], 32, 0.75, ma20)[0][1] for r in refs]
    assert lung_containment(truth, lungs) > 0.9  # infection lies in the lungs


# ------------------------------------------------------------------------ public entry point


def test_train_once_score_two_test_sets(synthetic_root, tmp_path, monkeypatch):
    calls = []
    real_fit = p2.fit

    def counting_fit(*args, **kwargs):
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(p2, "fit", counting_fit)
    ck = tmp_path / "ck"
    trained = p2.train_p2(
        "synthetic", "sep", "cb_flip", overrides=TINY, seed=0, device="cpu",
        data_root=synthetic_root, checkpoint_dir=ck, progress=False,
        test_sets={"sep-test": "test",
                   "mixed-test": p2.TestSet(part="test", split="mixed")})
    assert len(calls) == 1  # one training for both test sets
    assert set(trained.scores) == {"sep-test", "mixed-test"}
    for sc in trained.scores.values():
        assert 0 <= sc["dice"] <= 1 and sc["n_slices"] == 6
        assert 0 <= sc["lung_containment_truth"] <= 1  # the phantom has lung masks
    assert trained.run.crop == 1.0 and trained.run.split == "sep"
    assert isinstance(trained.model, nn.Module) and trained.history[0]["epoch"] == 1
    assert any(ck.iterdir())  # the caller's checkpoints stay
    again = trained.score(p2.TestSet(part="test", split="mixed"), name="again")
    assert again == trained.scores["mixed-test"] and len(calls) == 1
    with pytest.raises(ValueError, match=r"TestSet\.part='nope'"):
        trained.score(p2.TestSet(part="nope"))
    # a split given as a spec works the same way
    spec = {"method": "by-case", "train": ["synth_000", "synth_001"], "val": ["synth_002"],
            "test": ["synth_003"]}
    t2 = p2.train_p2("synthetic", spec, "pl", overrides=TINY, device="cpu",
                     data_root=synthetic_root, progress=False)
    assert t2.run.split.startswith("spec-") and t2.scores["test"]["n_volumes"] == 1


def test_covidlib_train_cli(synthetic_root, tmp_path, capsys):
    import json

    from covidlib.cli import main

    out = tmp_path / "run"
    rc = main(["train", "synthetic", "sep", "pl", "--set", "size=32", "--set", "epochs=1",
               "--set", "model_kwargs={base_width: 4, depth: 2}", "--set",
               "max_slices={train: 6, val: 3, test: 6}", "--test", "own=test",
               "--test", "other=mixed:test", "--out", str(out), "--root", str(synthetic_root),
               "--device", "cpu"])
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["split"], config["loss"], config["size"]) == (
        "synthetic", "sep", "pl", 32)
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["scores"]) == {"own", "other"} and len(scores["history"]) == 1
    assert (out / "model.pt").is_file() and (out / "checkpoints").is_dir()
    assert "results in" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--set 'epochs': expected KEY=VALUE"):
        main(["train", "synthetic", "sep", "pl", "--set", "epochs", "--out", str(out)])


def test_stand_in_tables_run_the_profile_s_seed_count(synthetic_root, tmp_path):
    assert p2.settings("cpu").stand_in_seeds == 1
    assert p2.settings("paper").stand_in_seeds is None
    tr = p2.run_table("P2-T4", "synthetic", "cpu", TINY, seeds=[0, 1], losses=["pl"],
                      device="cpu", data_root=synthetic_root, results_dir=tmp_path,
                      progress=False)
    assert [r["seed"] for r in tr.runs] == [0]
    tr2 = p2.run_table("P2-T4", "synthetic", "cpu", {**TINY, "stand_in_seeds": None},
                       seeds=[0, 1], losses=["pl"], device="cpu", data_root=synthetic_root,
                       results_dir=tmp_path, progress=False)
    assert [r["seed"] for r in tr2.runs] == [0, 1] and tr2.runs[0]["cached"]
