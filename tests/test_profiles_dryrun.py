"""The gpu and paper profiles dry-run on a CPU: every chapter x {gpu, paper}.

For each chapter the test builds the settings that profile would run (the experiment
module's ``settings(profile)``), then runs the chapter's own entry point (data pipeline,
model, loss, optimiser, checkpointing, MC sampling, evaluation) on a tiny fixture of the
right layout and dimensionality, under the code path a GPU takes: bf16 autocast and
channels_last / channels_last_3d, forced on the CPU by :func:`covidlib.engine.acceleration`.
A crash, a dtype error or a shape error fails the test.

What is shrunk, and only that (so that each case takes seconds on one CPU core):
* spatial size (352 px -> 32 px; 96^3 / 48x96x96 patches -> 16^3; P3's grid -> 16x32x32;
  P4's voxel spacing -> the cpu profile's 8 x 4 x 4 mm; the widget's slices -> 64 px);
* batch size and the number of slices, volumes, folds, pool items, MC draws kept as they are
  wherever they do not scale the time (n_samples, regions, losses stay the profile's);
* training length: one epoch of one step, one cycle / iteration, one fold, one seed.
The VGG16 ImageNet weights (``weights="imagenet"``) are replaced by random weights of the
same shapes, loaded through the same code (this machine may have no copy of them).
"""

from __future__ import annotations

import functools
import math
import os

import pytest
import torch

from covidlib import engine

PROFILES = ("gpu", "paper")
pytestmark = pytest.mark.slow


@functools.cache
def _vgg16_shapes() -> dict[str, torch.Size]:
    from torchvision.models import vgg16

    with torch.device("meta"):
        return {k: v.shape for k, v in vgg16(weights=None).state_dict().items()}


def _random_vgg16(progress: bool = True) -> dict[str, torch.Tensor]:
    """Stands in for torchvision's VGG16 ImageNet weights: same names and shapes."""
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=gen) * 0.01 for k, shape in _vgg16_shapes().items()}


@pytest.fixture(autouse=True)
def _gpu_code_path(monkeypatch, synthetic_root):
    """bf16 autocast + channels_last on the CPU, random "ImageNet" VGG16 weights, the phantom
    on the data path."""
    from covidlib.models import fcn8

    shared = os.environ.get("COVIDLIB_SHARED_DATA", "")
    monkeypatch.setenv("COVIDLIB_DATA_PATH", os.pathsep.join(p for p in (str(synthetic_root),
                                                                         shared) if p))

    monkeypatch.setattr(fcn8, "load_vgg16_imagenet_state_dict", _random_vgg16)
    torch.set_num_threads(1)
    with engine.acceleration(amp="bf16", channels_last=True):
        yield


def _finite(value) -> bool:
    return value is None or (isinstance(value, float | int) and math.isfinite(value))


# ------------------------------------------------------------------------------- the switch
def test_the_switch_forces_the_gpu_code_path_on_a_cpu():
    assert engine.amp_settings("cpu", 2) == (torch.bfloat16, torch.channels_last)
    assert engine.amp_settings("cpu", 3) == (torch.bfloat16, torch.channels_last_3d)
    with engine.acceleration(amp="fp32", channels_last=None):
        assert engine.amp_settings("cpu", 2) == (None, torch.contiguous_format)
        assert engine.amp_settings("cuda", 3) == (None, torch.channels_last_3d)
    with pytest.raises(ValueError, match=r"Acceleration\.amp='fp16'"):
        engine.Acceleration(amp="fp16")


def test_the_environment_sets_the_process_default(monkeypatch):
    monkeypatch.setenv("COVIDLIB_ACCELERATION", "channels_last, compile")
    assert engine._env_acceleration() == engine.Acceleration("default", True, True)
    monkeypatch.setenv("COVIDLIB_ACCELERATION", "fast")
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['fast'\]"):
        engine._env_acceleration()


# ------------------------------------------------------------------------------------- P1
@pytest.mark.parametrize("profile", PROFILES)
def test_p1_region_active_learning(profile):
    from covidlib.active import run_active_learning
    from covidlib.experiments import p1

    s = p1.settings(profile, {
        "size": 32,  # 352 px -> 32 px (FCN8's five poolings need a multiple of 32)
        "batch_size": 1, "score_batch_size": 2,
        "max_slices": {"train": 4, "val": 1, "test": 1},
        "epochs": 1, "epoch_items": 1, "cycles": 1, "initial_images": 1, "full_epochs": 1,
    })
    assert s.model == "fcn8_vgg16" and s.n_samples == 20  # the profile's network and I
    cfg = p1.al_config("synthetic", "mixed", s, heuristic="entropy")
    # no checkpoint folder: a 134 M-parameter FCN8 checkpoint costs seconds per epoch to
    # write on a CPU; the P2 cases below exercise the engine's checkpointing of that network
    res = run_active_learning(cfg, progress=False, device="cpu")
    assert res["records"], "no cycle recorded"
    last = res["records"][-1]
    assert all(_finite(v) for v in last.values() if isinstance(v, float | int))


# ------------------------------------------------------------------------------------- P2
@pytest.mark.parametrize(("profile", "loss", "task"), [("gpu", "cb_flip_rot", "segmentation"),
                                                       ("paper", "cb_lcfcn", "counting")])
def test_p2_point_supervision(profile, loss, task, tmp_path):
    """One loss family per profile (both profiles build the same FCN8 class, in its two
    layouts): the consistency loss (two forward passes) and LCFCN (blob analysis)."""
    from covidlib.data import open_dataset
    from covidlib.experiments import p2

    s = p2.settings(profile, {"size": 32, "batch_size": 2, "epochs": 1,  # 352 px -> 32 px
                              "max_slices": {"train": 2, "val": 1, "test": 2}})
    assert s.model == "fcn8_vgg16"
    ds = open_dataset("synthetic")
    run = p2.make_run(ds.name, "mixed", loss, 0, s, task)
    trained = p2.train_run(run, ds, split="mixed", device="cpu",
                           checkpoint_dir=tmp_path / "ck" if s.checkpoints else None)
    assert trained.epochs_completed == 1
    assert (tmp_path / "ck" / engine.CHECKPOINT_NAME).exists() == s.checkpoints
    scores = trained.scores["test"]
    assert scores and all(_finite(v) for v in scores.values() if isinstance(v, float))


# ------------------------------------------------------------------------------------- P3
@pytest.mark.parametrize("profile", PROFILES)
def test_p3_volume_active_learning(profile, tmp_path):
    from covidlib.data import open_dataset
    from covidlib.experiments import p3

    s = p3.settings(profile, {
        "grid": [16, 32, 32], "patch": [16, 16, 16],  # 48x160x160 / 48x96x96 -> 16x32x32 / 16^3
        "batch_size": 1, "epochs": 1, "warm_epochs": 1, "iterations": 1,
        "patches_per_volume": 1, "reference_seeds": 0,
    })
    ds = open_dataset("synthetic")
    res = p3.run(ds, s, tasks=["heart"], seeds=[0], strategies=("variance",),
                 results_dir=tmp_path, device="cpu", progress=False)
    records = res.runs[("heart", "variance", 0)]
    assert records and all(_finite(r.get("dice")) for r in records if isinstance(r, dict))


# ------------------------------------------------------------------------------------- P4
@pytest.mark.parametrize("profile", PROFILES)
def test_p4_reweighting_3d(profile, tmp_path):
    from covidlib.experiments import p4

    overrides = {"patch": [16, 16, 16],  # 96^3 -> 16^3
                 "spacing": [8.0, 4.0, 4.0],  # P4's 1.6 x 1.6 x 3.2 mm -> the cpu profile's
                 "teacher_steps": 1, "student_steps": 1, "folds": [0], "pool_size": 2,
                 "pool_shape": [16, 48, 48], "checkpoint_every": 1, "figure_cases": 1}
    if p4.settings(profile).infer_roi:
        overrides["infer_roi"] = [16, 16, 16]  # the paper's sliding windows, 16^3
    res = p4.run("synthetic", ("rgsm_al",), profile=profile, overrides=overrides,
                 results_dir=tmp_path, device="cpu", progress=False,
                 diagnostics=p4.Diagnostics(curve_points=1, curve_items=1, probe_batches=1))
    assert res.dims == 3 and len(res.frame)
    assert res.frame.select_dtypes("number").notna().any().any()


# ---------------------------------------------------------------------------------- widget
@pytest.mark.parametrize("profile", PROFILES)
def test_label_your_own_widget(profile, tmp_path):
    from covidlib.data import open_dataset
    from covidlib.experiments import label_demo

    s = label_demo.settings(profile)
    run = label_demo.demo(open_dataset("synthetic"), profile, {
        "size": 64, "batch_size": 2, "pool": 4, "eval": 2,  # 128 / 352 px -> 64 px
        "cycles": 1, "epochs": 1, "initial_images": 1}, tmp_path / "results",
        tmp_path / "annotations.jsonl", device="cpu")
    assert run.history and not run.cached
    assert run.config["settings"]["n_regions"] == s.n_regions
