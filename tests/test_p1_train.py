"""P1's public entry point (issue 17): one training of the region AL loop on any dataset and
split, the trained network back, scores on several test sets from that one training, and the
chapters' runs going through it (same cache entries)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from covidlib.experiments import p1

torch.set_num_threads(1)

TINY = {
    "size": 32, "max_slices": {"train": 8, "val": 3, "test": 4}, "cycles": 1, "epochs": 1,
    "epoch_items": None, "n_samples": 2, "batch_size": 4, "per_cycle": 2,
    "model_kwargs": {"base_width": 4, "depth": 2, "dropout": 0.5}, "figure_slices": 1,
}


def test_one_training_scored_on_two_test_sets(synthetic_root: Path, tmp_path: Path) -> None:
    kw = {"profile": "cpu", "overrides": TINY, "n_regions": 16, "data_root": synthetic_root,
          "device": "cpu"}
    ids = [p1.load_data("synthetic", "mixed", p1.settings("cpu", TINY),
                        synthetic_root).test.refs[0][0]]  # a test volume of the mixed split
    run = p1.train_p1("synthetic", "mixed", heuristic="random",
                      test_sets=[("synthetic", "mixed"), ("synthetic", "sep", "val"),
                                 ("synthetic", ids)],
                      results_dir=tmp_path, **kw)
    assert isinstance(run.model, torch.nn.Module) and run.config.heuristic == "random"
    assert list(run.scores) == ["synthetic/mixed/test", "synthetic/sep/val",
                                "synthetic/1 cases"]
    # the run's own test split, scored again with the returned network: the same numbers
    last = run.result["records"][-1]["test"]
    for k in ("dice", "iou", "ppv", "sens", "spec"):
        assert run.scores["synthetic/mixed/test"][k] == pytest.approx(last[k], abs=1e-9)
    assert all(0.0 <= (s["spec"] or 0.0) <= 1.0 for s in run.scores.values())
    weights = p1.model_path(tmp_path, run.config, synthetic_root)
    assert weights.exists()
    # read back: no training, the same result and weights
    again = p1.train_p1("synthetic", "mixed", heuristic="random", results_dir=tmp_path, **kw)
    assert json.dumps(again.result, sort_keys=True) == json.dumps(run.result, sort_keys=True)
    assert again.model is not None and all(
        torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                          run.model.state_dict().values(), strict=True))
    lean = p1.train_p1("synthetic", "mixed", heuristic="random", keep_model=False,
                       results_dir=tmp_path, **kw)
    assert lean.model is None and lean.scores == {} and lean.result["records"] == \
        run.result["records"]


def test_the_chapters_use_the_entry_points_cache_entries(synthetic_root: Path,
                                                         tmp_path: Path) -> None:
    """A chapter run and a train_p1 call of the same settings are one cache entry."""
    runs = p1.entropy_vs_random("synthetic", ["mixed"], profile="cpu", overrides=TINY,
                                seeds=[0], heuristics=["random"], n_regions=16,
                                data_root=synthetic_root, results_dir=tmp_path, device="cpu",
                                progress=False)
    assert len(list((tmp_path / "p1_al").glob("*.json"))) == 1
    run = p1.train_p1("synthetic", "mixed", heuristic="random", profile="cpu", overrides=TINY,
                      n_regions=16, keep_model=False, data_root=synthetic_root,
                      results_dir=tmp_path, device="cpu")
    assert run.result == runs.items[0][1]
    assert len(list((tmp_path / "p1_al").glob("*.json"))) == 1


def test_the_chapters_fully_supervised_baseline_is_the_entry_points(synthetic_root: Path,
                                                                    tmp_path: Path) -> None:
    """``p1.baseline`` runs through ``train_p1(supervision="full")``: one cache entry; the
    network asked for later (the chapter kept none) is trained once more, same numbers."""
    full = {**TINY, "full_epochs": 1, "full_patience": 1}
    runs = p1.Runs("cpu", "synthetic", p1.settings("cpu", full), full)
    p1.baseline(runs, ["mixed"], 0, data_root=synthetic_root, results_dir=tmp_path,
                device="cpu")
    assert len(list((tmp_path / "p1_full").glob("*.json"))) == 1
    run = p1.train_p1("synthetic", "mixed", supervision="full", profile="cpu", overrides=full,
                      data_root=synthetic_root, results_dir=tmp_path, device="cpu",
                      test_sets=[("synthetic", "mixed")])
    assert run.result == runs.full[0][1] and run.model is not None
    assert len(list((tmp_path / "p1_full").glob("*.json"))) == 1
    assert run.scores["synthetic/mixed/test"]["dice"] == pytest.approx(
        run.result["test"]["dice"], abs=1e-9)
    wrong = p1.Runs("cpu", "synthetic", p1.settings("cpu", full))  # overrides not given
    with pytest.raises(ValueError, match="runs\\.settings differ"):
        p1.baseline(wrong, ["mixed"], 0, data_root=synthetic_root, results_dir=tmp_path)


def test_bad_test_sets_are_named(synthetic_root: Path) -> None:
    cfg = p1.al_config("synthetic", "mixed", p1.settings("cpu", TINY), n_regions=16)
    with pytest.raises(ValueError, match="give \\(dataset, split\\)"):
        p1.load_test_set(("synthetic",), cfg, synthetic_root)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="part 'tests' is not"):
        p1.load_test_set(("synthetic", "mixed", "tests"), cfg, synthetic_root)
    with pytest.raises(ValueError, match="unknown case id\\(s\\) \\['nope'\\]"):
        p1.load_test_set(("synthetic", ["nope"]), cfg, synthetic_root)


def test_cli_train_p1_writes_config_scores_and_model(synthetic_root: Path,
                                                      tmp_path: Path) -> None:
    from covidlib.cli import main

    sets = ["size=32", "max_slices={train: 8, val: 3, test: 4}", "cycles=1", "epochs=1",
            "epoch_items=null", "n_samples=2", "batch_size=4", "per_cycle=2", "n_regions=16",
            "model_kwargs={base_width: 4, depth: 2, dropout: 0.5}", "figure_slices=1"]
    argv = ["train-p1", "synthetic", "mixed", "--heuristic", "random", "--device", "cpu",
            "--root", str(synthetic_root), "--out", str(tmp_path / "out"),
            "--test", "own=test", "--test", "other=sep:val"]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0
    out = tmp_path / "out"
    config = json.loads((out / "config.json").read_text())
    assert config["heuristic"] == "random" and config["n_regions"] == 16
    scores = json.loads((out / "scores.json").read_text())
    assert list(scores["scores"]) == ["own", "other"]
    assert scores["scores"]["own"]["dice"] == pytest.approx(
        scores["records"][-1]["test"]["dice"], abs=1e-9)
    assert (out / "model.pt").exists()
    with pytest.raises(SystemExit, match="heuristic"):
        main(["train-p1", "synthetic", "mixed", "--heuristic", "nope", "--root",
              str(synthetic_root), "--out", str(tmp_path / "bad")])
