"""Benchmark suite (covidlib.bench): schema, ratios from measured times, hand-computed helpers,
and the determinism check. No timing is asserted: only how figures are derived."""

from __future__ import annotations

import copy
import hashlib
import json
import mmap
import time

import pytest
import torch

from covidlib.bench import determinism, endtoend, report, responsive, run
from covidlib.bench.mc import speedups
from covidlib.bench.measure import PeakMemory, summarize, time_runs
from covidlib.bench.scaling import fit_exponent
from covidlib.bench.train import train_speedups

# baal 2.1 imports structlog.threadlocal, which structlog deprecates
pytestmark = pytest.mark.filterwarnings("ignore:.*structlog.threadlocal.*:DeprecationWarning")
SECTIONS = [s for s in run.SECTIONS if s != "determinism"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``--quick`` run of every section on CPU: (results dict, results file)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    # determinism has its own test below (same experiment, same code path)
    res = run.run_suite(out, quick=True, device="cpu", progress=False, sections=SECTIONS)
    return res, out


# ----------------------------------------------------------------------------- the suite


def test_results_file_schema(quick):
    res, out = quick
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["schema"] == run.SCHEMA and res["quick"] is True
    assert set(SECTIONS) <= set(res) and list(res["settings"]) == SECTIONS
    m = res["machine"]
    for key in ("hostname", "cpu", "cores", "torch_threads", "device", "gpu", "torch", "date"):
        assert key in m
    assert m["device"] == "cpu" and m["gpu"] is None
    assert res["checks"] == {"mc_identical_selections": True}
    assert res["total_seconds"] >= sum(res[s]["section_seconds"] for s in SECTIONS)
    assert report.missing_section(res, "determinism").startswith("The `determinism` benchmark")
    r = res["responsiveness"]  # the widget's section: one measured run, tiny in --quick
    assert r["settings"] == run.QUICK.responsiveness.record() and r["clicks"] == 3
    for key in ("click_saved_ms", "click_saved_p95_ms", "click_ms", "click_p95_ms",
                "click_during_training_ms", "click_during_training_p95_ms", "cycle_s",
                "cycle_cpu_s", "click_goal_ms", "cycle_goal_s", "clicks_during_training"):
        assert key in r, key
    assert r["click_saved_ms"] <= r["click_saved_p95_ms"] and r["cycle_s"] > 0
    assert r["met"] == responsive.verdicts(r) and set(r["met"]) == {k for k, *_ in
                                                                     responsive.FIGURES}
    assert "widget click saved" in run.summary(res)


def test_responsiveness_verdicts_hand_computed():
    r = {"click_goal_ms": 50.0, "cycle_goal_s": 10.0, "click_saved_ms": 12.0,
         "click_saved_p95_ms": 50.0, "click_ms": 49.9, "click_p95_ms": 80.0,
         "click_during_training_ms": float("nan"), "cycle_s": 9.5}
    assert responsive.verdicts(r) == {
        "click_saved_ms": True, "click_saved_p95_ms": False, "click_ms": True,
        "click_p95_ms": False, "click_during_training_ms": None,
        "click_during_training_p95_ms": None, "cycle_s": True}


def test_checks_read_the_sections():
    assert run.checks({"mc": {"identical_selections": False},
                       "determinism": {"identical": True}}) == {
        "mc_identical_selections": False, "determinism_identical": True}
    assert run.checks({}) == {}


def test_mc_ratios_are_computed_from_measured_seconds(quick):
    mc = quick[0]["mc"]
    samples = run.QUICK.mc.samples
    assert mc["methods"] == ["head_only", "naive", "baal"]  # baal is in the dev extra
    by = {(r["method"], r["I"]): r for r in mc["rows"]}
    assert set(by) == {(m, n) for m in mc["methods"] for n in samples}
    for r in mc["rows"]:
        assert r["seconds"] > 0 and r["images_per_s"] == pytest.approx(r["batch"] / r["seconds"])
        assert r["peak_rss_mb"] >= r["rss_start_mb"] > 0 and r["cuda_max_allocated_mb"] is None
    for n in samples:
        head = by[("head_only", n)]["seconds"]
        assert mc["speedup"]["naive_over_head_only"][str(n)] == pytest.approx(
            by[("naive", n)]["seconds"] / head, rel=1e-12)
        assert mc["speedup"]["baal_over_head_only"][str(n)] == pytest.approx(
            by[("baal", n)]["seconds"] / head, rel=1e-12)
    table = report.mc_table(quick[0])
    assert table.loc[samples[-1], "speed-up vs naive"] == round(
        mc["speedup"]["naive_over_head_only"][str(samples[-1])], 2)


def test_mc_head_only_and_naive_select_the_same_regions(quick):
    mc = quick[0]["mc"]
    assert [c["I"] for c in mc["selection"]] == list(run.QUICK.mc.samples)
    for c in mc["selection"]:
        assert c["identical_selection"] and c["identical_region_scores"]
        assert c["selection_head_only"] == c["selection_naive"]
        assert len(c["selection_head_only"]) == run.QUICK.mc.batch
        assert c["max_abs_score_diff"] == 0.0
    assert mc["identical_selections"] is True
    # where head-only scoring spends its time at the largest I (Performance page)
    split = mc["breakdown"]
    assert split["I"] == max(run.QUICK.mc.samples)
    assert split["total_s"] == next(r["seconds"] for r in mc["rows"]
                                    if r["method"] == "head_only" and r["I"] == split["I"])
    assert set(split["fractions"]) == {"backbone", "heads", "bernoulli", "rest"}
    assert split["backbone_s"] > 0 and split["heads_s"] > 0 and split["bernoulli_s"] > 0
    assert split["fractions"]["backbone"] == pytest.approx(split["backbone_s"] / split["total_s"])
    assert "dropout heads" in report.mc_breakdown(quick[0])
    assert report.mc_breakdown(None) == ""


def test_train_rows_on_cpu_are_fp32_only(quick):
    tr = quick[0]["train"]
    assert tr["modes"] == ["fp32_eager", "fp32_channels_last"] and tr["cuda_measured"] is False
    assert tr["torch_threads"] == torch.get_num_threads()
    assert [r["network"] for r in tr["rows"]][::2] == list(run.QUICK.train.networks)
    for r in tr["rows"]:
        assert r["images_per_s"] == pytest.approx(r["steps"] * r["batch"] / r["seconds"])
        assert r["first_step_s"] > 0
    # channels_last on the CPU, as a ratio to fp32 eager of the same run
    assert set(tr["speedup"]) == set(run.QUICK.train.networks)
    for net, ratios in tr["speedup"].items():
        fast = next(r for r in tr["rows"] if r["network"] == net
                    and r["mode"] == "fp32_channels_last")
        base = next(r for r in tr["rows"] if r["network"] == net and r["mode"] == "fp32_eager")
        assert ratios == {"fp32_channels_last": pytest.approx(
            fast["images_per_s"] / base["images_per_s"])}
    table = report.train_table(quick[0])
    assert table.loc[("unet2d", "bf16_channels_last"), "images/s"] == report.NOT_MEASURED
    goals = report.goals_table(quick[0], None, None)
    assert goals.loc["training: bf16 + channels_last >= 2.5x fp32 on CUDA", "verdict"] == \
        "no CUDA device was found"


def test_gpu_rows_render_with_their_ratios(quick):
    """How a GPU run's training rows show up (hand-made rows: no GPU here)."""
    res = copy.deepcopy(quick[0])
    res["machine"].update(gpu="NVIDIA H100 80GB HBM3", date="2026-01-02T03:04:05+00:00")
    rows = [{"network": "unet2d", "mode": "fp32_eager", "input": [3, 352, 352], "batch": 8,
             "images_per_s": 40.0, "peak_rss_mb": 900.0, "rss_start_mb": 800.0,
             "cuda_max_allocated_mb": 5000.0},
            {"network": "unet2d", "mode": "bf16_channels_last", "input": [3, 352, 352],
             "batch": 8, "images_per_s": 120.0, "peak_rss_mb": 900.0, "rss_start_mb": 800.0,
             "cuda_max_allocated_mb": 2600.0},
            {"network": "unet2d", "mode": "bf16_channels_last_compile", "error": "no triton"}]
    res["train"].update(rows=rows, cuda_measured=True, speedup=train_speedups(rows),
                        settings={**res["train"]["settings"], "networks": ["unet2d"]})
    table = report.train_table(res)
    assert table.loc[("unet2d", "bf16_channels_last"), "speed-up vs fp32"] == 3.0
    assert table.loc[("unet2d", "bf16_channels_last"), "CUDA max allocated (MB)"] == 2600.0
    assert table.loc[("unet2d", "bf16_channels_last_compile"), "note"] == "no triton"
    goals = report.goals_table(res, None, None)
    assert goals.loc["training: bf16 + channels_last >= 2.5x fp32 on CUDA", "verdict"] == "met"
    assert goals.loc["whole book, gpu profile <= 20 min", "verdict"] == "not run"
    assert "measured on NVIDIA H100 80GB HBM3 on 2026-01-02" in report.gpu_statement(res, None)


def test_scaling_fits_match_their_rows(quick):
    al, vol = quick[0]["al_scaling"], quick[0]["volume_scaling"]
    settings = run.QUICK.al_scaling
    assert [r["pool"] for r in al["pool"]["rows"]] == list(settings.pools)
    assert [r["K"] for r in al["regions"]["rows"]] == list(settings.regions)
    for r in al["pool"]["rows"] + al["regions"]["rows"]:
        assert r["acquisition_seconds"] == pytest.approx(r["score_seconds"] + r["select_seconds"])
        assert r["seconds"] == pytest.approx(r["train_seconds"] + r["acquisition_seconds"])
        assert r["selected"] == min(settings.al_select, r["pool"])
    for key, x in (("pool", "pool"), ("regions", "K")):
        rows = al[key]["rows"]
        assert al[key]["fit"]["cycle"] == pytest.approx(
            fit_exponent([r[x] for r in rows], [r["seconds"] for r in rows]))
        assert al[key]["fit"]["acquisition"] == pytest.approx(
            fit_exponent([r[x] for r in rows], [r["acquisition_seconds"] for r in rows]))
    sizes = run.QUICK.volume_scaling.volume_sizes
    assert [r["voxels"] for r in vol["rows"]] == [d**3 for d in sizes]
    assert vol["fit"] == pytest.approx(
        fit_exponent([r["voxels"] for r in vol["rows"]], [r["seconds"] for r in vol["rows"]]))
    table = report.scaling_table(quick[0])
    assert table.loc["3D scoring vs volume size: P3 volume score", "exponent b"] == round(
        vol["fit"]["exponent"], 2)


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(ValueError, match="nope"):
        run.run_suite(tmp_path / "b.json", quick=True, device="cpu", sections=["nope"])
    with pytest.raises(SystemExit):
        run.main(["--sections", "nope", "--out", str(tmp_path / "b.json")])
    assert not (tmp_path / "b.json").exists()


# ----------------------------------------------------------------------------- helpers


def test_fit_exponent_hand_computed():
    # exact power law t = 2 n^1.5
    fit = fit_exponent([1, 2, 4, 8], [2 * n**1.5 for n in (1, 2, 4, 8)])
    assert fit["exponent"] == pytest.approx(1.5) and fit["prefactor"] == pytest.approx(2.0)
    assert fit["r2"] == pytest.approx(1.0)
    # log10 points (0,0), (1,1), (2,3): slope 3/2, intercept 4/3 - 3/2 = -1/6,
    # residuals 1/6, -1/3, 1/6 -> SS_res 1/6; SS_tot 14/3 -> R^2 = 1 - 1/28
    fit = fit_exponent([1, 10, 100], [1, 10, 1000])
    assert fit["exponent"] == pytest.approx(1.5)
    assert fit["prefactor"] == pytest.approx(10 ** (-1 / 6))
    assert fit["r2"] == pytest.approx(27 / 28)


@pytest.mark.parametrize("sizes, seconds", [([4, 4], [1, 2]), ([1, 2], [0, 1]), ([1], [1]),
                                            ([1, 2], [1, 2, 3])])
def test_fit_exponent_rejects_bad_input(sizes, seconds):
    with pytest.raises(ValueError, match="fit_exponent"):
        fit_exponent(sizes, seconds)


def test_speedup_helpers_divide_measured_seconds():
    rows = [{"method": "head_only", "I": 5, "seconds": 2.0},
            {"method": "naive", "I": 5, "seconds": 9.0},
            {"method": "head_only", "I": 20, "seconds": 4.0},
            {"method": "naive", "I": 20, "seconds": 36.0}]
    assert speedups(rows) == {"naive_over_head_only": {"5": 4.5, "20": 9.0}}
    trows = [{"network": "unet2d", "mode": "fp32_eager", "images_per_s": 10.0},
             {"network": "unet2d", "mode": "bf16_channels_last", "images_per_s": 25.0},
             {"network": "unet2d", "mode": "bf16_channels_last_compile", "error": "x"}]
    assert train_speedups(trows) == {"unet2d": {"bf16_channels_last": 2.5}}


def test_time_runs_and_peak_memory():
    calls = []
    times = time_runs(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)
    assert summarize([3.0, 1.0, 2.0]) == {"seconds": 2.0, "seconds_min": 1.0,
                                          "seconds_max": 3.0, "repeats": 3}
    with pytest.raises(ValueError, match="repeats"):
        time_runs(lambda: None, repeats=0)
    with PeakMemory("cpu") as mem:
        # 64 MiB of fresh anonymous pages, each touched (a torch/numpy buffer could reuse
        # memory the allocator kept from earlier tests and leave the RSS unchanged)
        block = mmap.mmap(-1, 64 * 2**20)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
        time.sleep(0.05)
        block.close()
    rec = mem.record()
    if rec["rss_method"] == "proc-statm-sampling":
        assert rec["peak_rss_mb"] - rec["rss_start_mb"] >= 48
    assert rec["cuda_max_allocated_mb"] is None


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_results(tmp_path):
    tiny = {"epochs": 1, "steps": 2, "size": 32}
    check = determinism.check_determinism(0, tmp_path, **tiny)  # two runs in fresh folders
    assert check["identical"] and check["sha256"][0] == check["sha256"][1]
    a, b = (determinism.seeded_experiment(tmp_path / r, 0, **tiny) for r in "ab")  # cached
    assert determinism.result_bytes(a) == determinism.result_bytes(b)
    assert hashlib.sha256(determinism.result_bytes(a)).hexdigest() == check["sha256"][0]
    record = json.loads(a.read_text())
    assert record["config"] == check["config"] and record["config"]["seed"] == 0
    assert len(record["result"]["weights_sha256"]) == 64
    assert [h["epoch"] for h in record["result"]["history"]] == [1]
    assert "seconds" not in record["result"]["history"][0]
    # another seed trains another network
    c = determinism.seeded_experiment(tmp_path / "c", 1, **tiny)
    assert json.loads(c.read_text())["result"]["weights_sha256"] != \
        record["result"]["weights_sha256"]
    with pytest.raises(ValueError, match="fresh folders"):
        determinism.check_determinism(0, tmp_path, **tiny)
    with pytest.raises(ValueError, match="unknown settings"):
        determinism.experiment_config(0, lr=1.0)


# ----------------------------------------------------------------------------- page helpers


def test_book_timings(tmp_path):
    assert endtoend.book_timings(tmp_path, "cpu") is None
    (tmp_path / "book_timings_cpu.json").write_text(json.dumps({
        "a": {"status": "ok", "seconds": 100.0, "worker": "w1"},
        "b": {"status": "failed", "seconds": 30.5}}))
    t = endtoend.book_timings(tmp_path, "cpu")
    assert t["sum_seconds"] == 130.5 and t["max_seconds"] == 100.0
    assert t["wall_seconds"] is None and t["goal_seconds"] == 480 and t["all_ok"] is False
    summary = report.end_to_end_summary(t, "cpu")
    assert "between the longest chapter (1.7 min) and the sum of all chapters (2.2 min)" in summary
    assert "goal <= 8 min: met" in summary
    # a whole-book run records its wall time, workers and the HTML build
    (tmp_path / "book_timings_cpu.json").write_text(json.dumps({
        "a": {"status": "ok", "seconds": 400.0}, "b": {"status": "ok", "seconds": 300.0},
        "wall_seconds": 420.0, "workers": 2, "html_seconds": 60.0}))
    t = endtoend.book_timings(tmp_path, "cpu")
    assert (t["wall_seconds"], t["html_seconds"], t["workers"]) == (420.0, 60.0, 2)
    summary = report.end_to_end_summary(t, "cpu")
    assert ("wall time 8.0 min (7.0 min of notebooks on 2 workers + 60 s of HTML build); "
            "goal <= 8 min: met") in summary
    (tmp_path / "book_timings_cpu.json").write_text(json.dumps({
        "a": {"status": "ok", "seconds": 650.0}, "wall_seconds": 660.0, "workers": 1}))
    assert "wall time 11.0 min (notebooks on 1 worker); goal <= 8 min: NOT met" in \
        report.end_to_end_summary(endtoend.book_timings(tmp_path, "cpu"), "cpu")
    # an incremental rebuild is reported beside the whole build, which stays
    (tmp_path / "book_timings_cpu.json").write_text(json.dumps({
        "a": {"status": "ok", "seconds": 400.0}, "wall_seconds": 420.0, "workers": 2,
        "last_incremental": {"wall_seconds": 3.5, "executed": 0, "reused": 19,
                             "date": "2026-12-03T17:00:00+0000"}}))
    t = endtoend.book_timings(tmp_path, "cpu")
    assert t["wall_seconds"] == 420.0 and t["incremental"]["reused"] == 19
    assert ("The last rebuild: 19 chapters reused, 0 executed, 3.5 s of notebooks"
            in report.end_to_end_summary(t, "cpu"))
    goals = report.goals_table(None, t, None)
    assert goals.loc["book rebuild with nothing changed, cpu profile <= 20 s",
                     "verdict"] == "met"
    (tmp_path / "book_timings_gpu.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"book_timings_gpu\.json"):
        endtoend.book_timings(tmp_path, "gpu")


def test_config_times_sum_the_cache_records(tmp_path):
    def put(kind, name, profile, seconds):
        meta = {"finished": "x"} if seconds is None else {"finished": "x", "seconds": seconds}
        (tmp_path / kind).mkdir(exist_ok=True)
        (tmp_path / kind / name).write_text(json.dumps(
            {"kind": kind, "config": {"profile": profile}, "result": {}, "meta": meta}))

    assert endtoend.config_times(tmp_path / "absent") == []
    put("p2", "a.json", "cpu", 1.5)
    put("p2", "b.json", "cpu", 2.5)
    put("p2", "c.json", "cpu", None)
    put("p2", "d.json", "gpu", 7.0)
    (tmp_path / "scorecard").mkdir()
    (tmp_path / "scorecard" / "P2-T2.json").write_text(json.dumps({"artifact": "P2-T2"}))
    assert endtoend.config_times(tmp_path) == [
        {"kind": "p2", "profile": "cpu", "configs": 3, "timed": 2, "total_seconds": 4.0,
         "max_seconds": 2.5},
        {"kind": "p2", "profile": "gpu", "configs": 1, "timed": 1, "total_seconds": 7.0,
         "max_seconds": 7.0}]
    (tmp_path / "p2" / "e.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"e\.json"):
        endtoend.config_times(tmp_path)


def test_load_results_and_missing_file(tmp_path):
    assert report.load_results(tmp_path / "none.json") is None
    assert "make bench" in report.machine_markdown(None, tmp_path / "none.json")
    (tmp_path / "old.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError, match=r"old\.json"):
        report.load_results(tmp_path / "old.json")
    assert "not measured: no CUDA device was found" in report.gpu_statement(
        None, None).replace("**", "")
    assert report.mc_table(None) is None and report.scaling_figure(None) is None
    goals = report.goals_table(None, None, None)
    assert list(goals["measured"]) == [report.NOT_MEASURED] * 4  # 2 books, 2 widget goals
    assert list(goals["verdict"])[2:] == ["not measured yet: run make bench"] * 2


def test_mc_selections_agree_up_to_ties_only():
    """Head-only and naive MC sampling sum in another order: two regions whose scores tie to
    within float error may swap; a real difference in the chosen region must still count."""
    import numpy as np

    from covidlib.bench.mc import selections_agree

    scores = np.array([[0.5, 0.9, 0.9 + 2.5e-9, 0.1],
                       [0.2, 0.3, 0.8, 0.7]])
    assert selections_agree([(0, 1), (1, 2)], [(0, 1), (1, 2)], scores)
    assert selections_agree([(0, 1), (1, 2)], [(0, 2), (1, 2)], scores)      # a tie swapped
    assert not selections_agree([(0, 1), (1, 2)], [(0, 1), (1, 3)], scores)  # 0.8 vs 0.7
    assert not selections_agree([(0, 1)], [(0, 1), (1, 2)], scores)
