"""covidlib.report.projection: FLOPs, memory and projected times of the gpu / paper profiles."""

from __future__ import annotations

import math

import pytest
from torch import nn

from covidlib.report.projection import (
    ASSUMED_GPU_TFLOPS,
    StepSpec,
    book_networks,
    measure_rate,
    projection_table,
    step_flops,
    train_memory_bytes,
)

SMALL = StepSpec("small", "unet2d", {"base_width": 4, "depth": 2, "out_channels": 2},
                 (3, 32, 32), 2, steps_per_run=10)


def test_flops_of_a_linear_step_are_hand_computed():
    # forward x @ W.T: 2 * 4 * 3 * 2 = 48; backward: dW only (x needs no grad) = 48
    assert step_flops(nn.Linear(3, 2, bias=False), (4, 3)) == 96


def test_flops_of_a_convolution_step_are_hand_computed():
    # forward: 2 FLOPs x (2 out channels x 8 x 8 outputs) x (1 in channel x 3 x 3) = 2304;
    # backward: the weight gradient only, as many again
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    assert step_flops(conv, (1, 1, 8, 8)) == 2 * 2304


def test_flops_scale_with_the_batch():
    double = StepSpec("x2", SMALL.model, SMALL.kwargs, SMALL.sample_shape, 4)
    assert step_flops(double) == 2 * step_flops(SMALL)


def test_memory_counts_weights_gradients_and_adam_moments():
    from covidlib.models import build_model

    n = sum(p.numel() for p in build_model("unet2d", **SMALL.kwargs).parameters())
    mem = train_memory_bytes(SMALL)
    assert mem["params"] == 16 * n  # 4 fp32 copies: weights, gradients, two Adam moments
    # at least the network's output (2 x 2 x 32 x 32 fp32) is kept for the backward pass
    assert mem["activations"] >= 2 * 2 * 32 * 32 * 4
    assert mem["total"] == mem["params"] + mem["activations"]


def test_measured_rate_is_flops_over_the_clocked_seconds():
    ticks = iter([10.0, 16.0])  # started after the warm-up step, 3 steps in 6 s
    out = measure_rate(SMALL, steps=3, warmup=1, clock=lambda: next(ticks))
    assert out["seconds_per_step"] == 2.0
    assert out["flops_per_step"] == step_flops(SMALL)
    assert out["flops_per_second"] == step_flops(SMALL) / 2.0
    with pytest.raises(ValueError, match="steps=0"):
        measure_rate(SMALL, steps=0)


def test_bad_step_specs_are_named():
    with pytest.raises(ValueError, match="sample_shape"):
        StepSpec("bad", "unet2d", sample_shape=(32, 32))
    with pytest.raises(ValueError, match="batch_size=0"):
        StepSpec("bad", "unet2d", batch_size=0)


def test_book_networks_read_the_profiles():
    from covidlib.experiments import p2, p4

    def get(s, key):  # profiles are mappings or typed settings dataclasses
        return s[key] if isinstance(s, dict) else getattr(s, key)

    specs = {s.name: s for s in book_networks(("gpu",), ("P2", "P4"))}
    s2, s4 = p2.settings("gpu"), p4.settings("gpu")
    size = get(s2, "size")
    assert specs["P2 gpu"].model == get(s2, "model")
    assert specs["P2 gpu"].sample_shape == (3, size, size)
    assert specs["P2 gpu"].steps_per_run == get(s2, "epochs") * math.ceil(
        get(get(s2, "max_slices"), "train") / get(s2, "batch_size"))
    assert specs["P4 gpu"].steps_per_run == get(s4, "teacher_steps") + get(s4, "student_steps")
    assert specs["P4 gpu"].batch_size == get(s4, "batch")
    assert book_networks(("no-such-profile",), ("P2",)) == []
    with pytest.raises(ValueError, match="P9"):
        book_networks(papers=("P9",))


def test_projection_table_divides_flops_by_the_rates():
    flops = step_flops(SMALL)
    table = projection_table([SMALL], cpu_flops_per_second=flops / 2.0, gpu_tflops=1.0)
    row = table.loc["small"]
    assert row["CPU s/step"] == pytest.approx(2.0)
    assert row["CPU min/run"] == pytest.approx(10 * 2.0 / 60)
    assert row["GPU s/step (assumed)"] == pytest.approx(flops / 1e12)
    assert row["memory GiB"] == pytest.approx(train_memory_bytes(SMALL)["total"] / 2**30)
    assert ASSUMED_GPU_TFLOPS > 0
    with pytest.raises(ValueError, match="rates must be > 0"):
        projection_table([SMALL], cpu_flops_per_second=0.0)


@pytest.mark.slow
def test_the_gpu_chapter_runs_and_shows_every_paper(tmp_path):
    from pathlib import Path

    import nbformat
    import papermill

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu.ipynb"
    papermill.execute_notebook(
        str(repo / "notebooks" / "gpu.ipynb"), str(out), kernel_name="python3",
        cwd=str(repo / "notebooks"), progress_bar=False,
        parameters={"profile": "cpu", "device": "cpu", "results_dir": str(tmp_path)})
    nb = nbformat.read(out, as_version=4)
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells
                   if c.cell_type == "code" for o in c.outputs)
    for row in ("P1 gpu", "P2 gpu", "P3 gpu", "P4 gpu", "P2 paper", "P4 paper"):
        assert row in html
    assert "GPU s/step (assumed)" in html and "memory GiB" in html
