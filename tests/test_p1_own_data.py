"""P1's public entry point on your own data (issue 17): the region AL loop trained through
:func:`covidlib.experiments.p1.train_p1` on a temporary folder of PNG slices with 0/255 masks
and a volume CSV (the minimal ``access: local`` manifest, given by its path), scored on two
test sets from one training; and ``covidlib train-p1`` on the same folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from covidlib.data.demo_folder import demo_manifest, write_demo_folder
from covidlib.experiments import p1

torch.set_num_threads(1)

SLICES = 3
TINY = {
    "size": 32, "max_slices": {"train": None, "val": None, "test": None}, "cycles": 1,
    "epochs": 1, "epoch_items": None, "n_samples": 2, "batch_size": 4, "per_cycle": 2,
    "model_kwargs": {"base_width": 4, "depth": 2, "dropout": 0.5}, "figure_slices": 1,
}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``my-slices.yaml`` beside its folder: 6 volumes of 3 slices, splits ``by-volume``
    (train patient01-02, val 03, test 04) and ``other-scanner`` (test 05-06)."""
    root = tmp_path_factory.mktemp("p1-own")
    demo = write_demo_folder(root / "my-slices", n_volumes=6, slices_per_volume=SLICES,
                             size=48, volumes_per_site=4, seed=0)
    path = root / "my-slices.yaml"
    path.write_text(demo_manifest("my-slices", demo), encoding="utf-8")
    return str(path)


def test_one_training_on_a_manifest_path_scores_two_test_sets(manifest: str):
    run = p1.train_p1(manifest, "by-volume", heuristic="random", profile="cpu",
                      overrides=TINY, n_regions=16, device="cpu",
                      test_sets={"same": "test", "other": (manifest, "other-scanner")})
    assert isinstance(run.model, torch.nn.Module) and run.config.dataset == manifest
    assert list(run.scores) == ["same", "other"]
    assert run.scores["same"]["n_volumes"] == 1.0 and run.scores["other"]["n_volumes"] == 2.0
    for sc in run.scores.values():
        for k in ("dice", "iou", "ppv", "sens", "spec"):
            assert sc[k] is None or 0.0 <= sc[k] <= 1.0
    # the run's own test part, scored again with the returned network: the loop's numbers
    last = run.result["records"][-1]["test"]
    assert run.scores["same"]["dice"] == pytest.approx(last["dice"], abs=1e-9)


_CLI_SETS = ["size=32", "batch_size=4", "figure_slices=1",
             "max_slices={train: null, val: null, test: null}",
             "model_kwargs={base_width: 4, depth: 2, dropout: 0.5}"]


def _train_p1_cli(manifest: str, out: Path, options: list[str], sets: list[str]) -> dict:
    """Run ``covidlib train-p1`` on ``manifest``'s by-volume split, scored on two test sets;
    the scores file it wrote (checked to name both sets)."""
    from covidlib.cli import main

    argv = ["train-p1", manifest, "by-volume", *options, "--device", "cpu", "--out", str(out),
            "--test", "same=test", "--test", "other=other-scanner:test"]
    for item in _CLI_SETS + sets:
        argv += ["--set", item]
    assert main(argv) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert list(scores["scores"]) == ["same", "other"]
    assert scores["scores"]["other"]["n_volumes"] == 2.0
    return scores


def test_cli_train_p1_on_a_manifest_path(manifest: str, tmp_path: Path):
    out = tmp_path / "out"
    _train_p1_cli(manifest, out, ["--heuristic", "random"],
                  ["cycles=1", "epochs=1", "epoch_items=null", "n_samples=2", "per_cycle=2",
                   "n_regions=16"])
    assert (out / "config.json").exists() and (out / "model.pt").exists()


FULL = {**{k: v for k, v in TINY.items() if k not in ("cycles", "epochs", "epoch_items",
                                                       "n_samples", "per_cycle")},
        "full_epochs": 2, "full_patience": 2}


def test_fully_supervised_baseline_on_a_manifest_path_scores_two_test_sets(manifest: str):
    """``supervision="full"``: P1's fully supervised baseline through the same entry point,
    the network back and its scores on two test sets from one training."""
    run = p1.train_p1(manifest, "by-volume", supervision="full", profile="cpu",
                      overrides=FULL, device="cpu",
                      test_sets={"same": "test", "other": (manifest, "other-scanner")})
    assert isinstance(run.model, torch.nn.Module) and run.config.patience == 2
    assert list(run.scores) == ["same", "other"]
    assert run.scores["same"]["n_volumes"] == 1.0 and run.scores["other"]["n_volumes"] == 2.0
    # 2 training volumes of 3 slices, every one with its full mask (96 s each, P1 Sec. 5.3)
    assert run.result["n_train"] == 2 * SLICES and run.result["epochs"] == 2
    assert run.result["full_effort_seconds"] == 2 * SLICES * 96
    for k in ("dice", "iou", "ppv", "sens", "spec"):  # the returned network: same numbers
        assert run.scores["same"][k] == pytest.approx(run.result["test"][k], abs=1e-9)


def test_fully_supervised_baseline_names_run_fields_it_does_not_read(manifest: str):
    with pytest.raises(ValueError, match="does not read the run field\\(s\\) \\['cycles'\\]"):
        p1.train_p1(manifest, "by-volume", supervision="full", overrides=FULL, cycles=2)
    with pytest.raises(ValueError, match="supervision='boxes' is not one of"):
        p1.train_p1(manifest, "by-volume", supervision="boxes", overrides=FULL)


def test_cli_train_p1_full_on_a_manifest_path(manifest: str, tmp_path: Path):
    out = tmp_path / "out"
    scores = _train_p1_cli(manifest, out, ["--supervision", "full"],
                           ["full_epochs=2", "full_patience=2"])
    assert scores["n_train"] == 2 * SLICES and scores["epochs"] == 2
    assert scores["scores"]["same"]["dice"] == pytest.approx(scores["test"]["dice"], abs=1e-9)
    assert json.loads((out / "config.json").read_text())["patience"] == 2
    assert (out / "model.pt").exists() and len(list((out / "p1_full").glob("*.json"))) == 1
