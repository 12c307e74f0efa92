"""The MC-dropout speed-up's limit on the Performance page (covidlib.bench.mc.ratio_limit,
covidlib.bench.report.mc_limit), and the page's imports: hand-computed, nothing timed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from covidlib.bench import report
from covidlib.bench.mc import count_flops, ratio_limit


def test_ratio_limit_hand_computed():
    # naive: I (b + h); head-only: b + I h  ->  20 * 104 / (100 + 80)
    assert ratio_limit(100.0, 4.0, 20) == pytest.approx(2080 / 180)
    # the I heads batched cost 0.5 s together instead of 10 x 0.1 s
    assert ratio_limit(1.0, 0.1, 10, heads=0.5) == pytest.approx(11 / 1.5)
    assert ratio_limit(1.0, 0.0, 1) == pytest.approx(1.0)


def test_count_flops_of_a_matrix_product():
    import torch

    a, b = torch.ones(3, 4), torch.ones(4, 5)
    assert count_flops(lambda: a @ b) == 2 * 3 * 4 * 5


def test_the_limit_is_stated_in_words_and_in_the_goals_table():
    split = {"I": 20, "total_s": 2.0, "backbone_s": 1.0, "heads_s": 0.8, "bernoulli_s": 0.2,
             "rest_s": 0.2, "head_one_s": 0.05, "flops": {"backbone": 100e9, "head": 4e9},
             "limit_flops": 11.555, "limit_times": 11.666,
             "fractions": {"backbone": 0.5, "heads": 0.4, "bernoulli": 0.1, "rest": 0.1}}
    text = report.mc_limit(split)
    assert "100 GFLOP (b)" in text and "4 GFLOP" in text
    assert "11.6x at I = 20" in text and "it is 11.7x" in text
    assert report.mc_limit({k: v for k, v in split.items() if k != "flops"}) == ""
    res = {"mc": {"settings": {"samples": [5, 20]}, "identical_selections": True,
                  "speedup": {"naive_over_head_only": {"5": 4.0, "20": 9.5}},
                  "breakdown": split},
           "total_seconds": 300.0, "machine": {"gpu": None}}
    goals = report.goals_table(res, None, None)
    row = goals.loc["MC dropout: head-only >= 10x naive at I=20, same selections up to ties"]
    assert row["measured"] == "9.5x, identical: True (limit from FLOPs at I=20: 11.6x)"
    assert row["verdict"] == "NOT met"


def test_the_performance_page_imports_no_torch():
    code = ("import sys; import covidlib.bench.report, covidlib.bench.endtoend; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_machine_line_says_what_was_not_found():
    m = {"hostname": "h", "cpu": "x86_64", "cores": 2, "torch_threads": 2, "gpu": None,
         "torch": "2", "python": "3.11", "date": "2026-12-03"}
    text = report.machine_markdown({"machine": m, "total_seconds": 60.0})
    assert "no CUDA device was found on this machine" in text and "no GPU" not in text


def test_compile_modes_run_on_the_cpu_only_for_the_named_networks():
    import torch

    from covidlib.bench.settings import TrainBench
    from covidlib.bench.train import bench_train

    settings = TrainBench(networks=("unet2d",), image_size=32, volume_size=8, fc_channels=8,
                          unet_width=2, batch_2d=2, batch_3d=1, warmup=0, steps=1, seed=0,
                          cpu_modes=("fp32_eager", "fp32_compile"), compile_networks=())
    tr = bench_train(settings, torch.device("cpu"))
    eager, compiled = tr["rows"]
    assert eager["mode"] == "fp32_eager" and eager["images_per_s"] > 0
    assert compiled["mode"] == "fp32_compile" and "images_per_s" not in compiled
    assert compiled["skipped"].startswith("torch.compile is measured on the CPU for")
    assert tr["speedup"] == {}  # nothing to compare with
    table = report.train_table({"train": tr})
    assert table.loc[("unet2d", "fp32_compile"), "note"] == compiled["skipped"]
