"""Typed settings of the benchmark suite (covidlib.bench.settings): what a results file records
(the same keys and values as the dict settings it replaced) and the errors of bad settings."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from covidlib.bench import SECTIONS, run
from covidlib.bench.settings import FULL, FULL_CUDA, QUICK, DeterminismBench, McBench, TrainBench


def test_full_records_the_keys_that_are_set():
    rec = FULL.record(SECTIONS)
    assert list(rec) == list(SECTIONS)
    assert rec["mc"] == {"image_size": 352, "fc_channels": 4096, "batch": 1,
                         "samples": [5, 10, 20], "n_regions": 64, "seed": 0, "baal": True}
    # cpu_modes unset (None: every CPU mode) is left out, as the dict settings had no such key
    assert rec["train"]["compile_networks"] == ["unet2d"] and "cpu_modes" not in rec["train"]
    assert rec["determinism"] == {"seed": 0}
    assert rec["responsiveness"] == {"clicks": 20, "threads": 2, "seed": 0}


def test_quick_records_its_extras():
    rec = QUICK.record(["train", "determinism", "responsiveness"])
    assert rec["train"]["cpu_modes"] == ["fp32_eager", "fp32_channels_last"]
    assert "compile_networks" not in rec["train"]
    assert rec["determinism"] == {"seed": 0, "slices": 8, "size": 32, "epochs": 1, "steps": 2}
    assert QUICK.determinism.overrides() == {"slices": 8, "size": 32, "epochs": 1, "steps": 2}
    assert rec["responsiveness"]["overrides"] == {"pool": 8, "size": 32, "n_mc": 2, "epochs": 1}


def test_cuda_changes_only_the_full_run():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert run.suite_settings(True, gpu) is QUICK and run.suite_settings(False, cpu) is FULL
    assert run.suite_settings(False, gpu) is FULL_CUDA
    assert (FULL_CUDA.mc.batch, FULL_CUDA.train.batch_2d, FULL_CUDA.train.batch_3d) == (8, 8, 2)
    assert (FULL_CUDA.train.warmup, FULL_CUDA.train.steps) == (3, 10)
    assert FULL_CUDA.volume_scaling.volume_sizes == (32, 48, 64, 96, 128)
    assert FULL_CUDA.al_scaling == FULL.al_scaling and FULL.mc.batch == 1  # FULL unchanged


def test_settings_are_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FULL.mc.batch = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"McBench.batch=-1: must be >= 0"):
        McBench(image_size=32, fc_channels=8, batch=-1, samples=(2,), n_regions=4)
    with pytest.raises(ValueError, match=r"McBench.samples=\(2, -3\)"):
        McBench(image_size=32, fc_channels=8, batch=1, samples=(2, -3), n_regions=4)
    with pytest.raises(ValueError, match=r"TrainBench\.networks: must not be empty"):
        TrainBench(networks=(), image_size=8, volume_size=8, fc_channels=8, unet_width=2,
                   batch_2d=1, batch_3d=1, warmup=0, steps=1)
    with pytest.raises(ValueError, match="unknown section 'nope'"):
        FULL.section("nope")
    assert DeterminismBench().overrides() == {}
    listed = McBench(image_size=32, fc_channels=8, batch=1, samples=[2, 3], n_regions=4)
    assert listed.samples == (2, 3) and listed.record()["samples"] == [2, 3]
