"""P4's public entry point (issue 17): one training of a P4 method, scored on two test sets;
the chapters' path goes through it; ``covidlib train`` runs P4's methods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from covidlib import checkpoint
from covidlib.cli import main
from covidlib.data.phantom import PhantomConfig, write_dataset
from covidlib.experiments import p4
from covidlib.experiments.p4_method import P4TestSet, parse_test_set, summarize

# 16 x 8 x 8 mm voxels, 16^3 patches, two steps per network: seconds on one core
TINY = {"spacing": [16.0, 8.0, 8.0], "patch": [16, 16, 16], "teacher_steps": 2,
        "student_steps": 2, "pool_size": 2, "pool_shape": [16, 48, 48], "figure_cases": 1}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("p4entry")
    write_dataset(PhantomConfig(shape=(16, 64, 64)), root / "synthetic", progress=False,
                  workers=1)
    return root


def test_parse_test_set():
    assert parse_test_set("test") == P4TestSet("test")
    assert parse_test_set("test@2") == P4TestSet("test", None, 2)
    assert parse_test_set("covid-semiseg:val@1") == P4TestSet("val", "covid-semiseg", 1)
    with pytest.raises(ValueError, match=r"part='train': choose one of \('test', 'val'\)"):
        parse_test_set("train")
    with pytest.raises(ValueError, match="the fold after '@' must be an integer"):
        parse_test_set("test@x")


def test_summarize_hand_computed():
    rows = [{"dice": 0.5, "hd": 10.0, "empty_truth": False},
            {"dice": 0.7, "hd": None, "empty_truth": False},  # empty prediction: no HD
            {"dice": 1.0, "hd": 0.0, "empty_truth": True}]  # clean case: left out
    sc = summarize(rows)
    assert sc["dice"] == pytest.approx(0.6) and sc["dice_sd"] == pytest.approx(0.1414213562)
    assert sc["hd"] == 10.0 and sc["hd_sd"] is None
    assert (sc["n_cases"], sc["n_infected"], sc["n_hd_undefined"]) == (3, 2, 1)


def test_one_training_two_test_sets_and_the_chapter_path(phantom, tmp_path):
    trained = p4.train_p4("synthetic", "rgsm_al", fold=0, profile="cpu", overrides=TINY,
                          test_sets={"own": "test", "next": P4TestSet(fold=1)},
                          data_root=phantom, results_dir=tmp_path, device="cpu",
                          progress=False)
    assert isinstance(trained.model, nn.Module) and set(trained.scores) == {"own", "next"}
    own = [r["case_id"] for r in trained.results["own"]["cases"]]
    nxt = [r["case_id"] for r in trained.results["next"]["cases"]]
    assert len(own) == len(nxt) == 4 and not set(own) & set(nxt)  # P4's 4 test volumes
    assert trained.history["step"] == [0, 1] and len(trained.history["w_star"]) == 2
    for name in ("own", "next"):  # the summary is the mean over the infected cases
        rows = [r for r in trained.results[name]["cases"] if not r["empty_truth"]]
        assert trained.scores[name]["dice"] == pytest.approx(
            sum(r["dice"] for r in rows) / len(rows))
    # a third test set later, without training: the same scores as in the first call
    again = trained.score("test", "again")
    assert again == trained.scores["own"]
    # the chapter (p4.run, cached) trains through the same path: identical scores
    res = p4.run("synthetic", ("rgsm_al",), profile="cpu", overrides=TINY,
                 data_root=phantom, results_dir=tmp_path, device="cpu", progress=False,
                 diagnostics=p4.Diagnostics(curve_points=0, curve_items=0, probe_batches=0))
    assert res.runs[("rgsm_al", 0, 0)]["cases"] == trained.results["own"]["cases"]
    assert len(list((tmp_path / "p4_teacher").glob("*.json"))) == 1  # one teacher, shared


def test_entry_point_errors_name_the_value(phantom):
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['rgx'\]"):
        p4.train_p4("synthetic", "rgx", data_root=phantom)
    with pytest.raises(ValueError, match="fold=-1: a fold index >= 0"):
        p4.train_p4("synthetic", "rgs", fold=-1, data_root=phantom)


def test_cli_trains_a_p4_method_and_writes_results_next_to_the_config(phantom, tmp_path,
                                                                        capsys):
    out = tmp_path / "run"
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    assert main(["train", "synthetic", "p4-cv4", "rgs_al", *sets, "--root", str(phantom),
                 "--test", "own=test", "--test", "next=test@1", "--out", str(out),
                 "--device", "cpu"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["paper"], config["method"], config["fold"]) == ("p4", "rgs_al", 0)
    assert config["settings"]["student_steps"] == 2
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["scores"]) == set(scores["cases"]) == {"own", "next"}
    weights = checkpoint.load(out / "model.pt")  # verified on load
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    printed = capsys.readouterr().out
    assert "own: Dice " in printed and "next: Dice " in printed and str(out) in printed
    with pytest.raises(SystemExit, match=r"uses split 'p4-cv4'.*not 'mixed'"):
        main(["train", "synthetic", "mixed", "rgs", "--root", str(phantom)])
