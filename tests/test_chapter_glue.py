"""The values the P2/P4/label/own-data/Performance/GPU chapters glue into their prose, and the
small helpers that took logic out of those notebooks (expected values worked out by hand)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from covidlib.experiments import label_demo_glue, p2_report_glue, p4_glue
from covidlib.experiments.label_demo_settings import PROFILES as LABEL_PROFILES
from covidlib.experiments.p2_settings import PROFILES as P2_PROFILES
from covidlib.report import chapter_glue, opening, page_values, reference, tables


@pytest.fixture
def no_reference(monkeypatch):
    """reference.paragraph / label_demo_paragraph replaced by a recorder of their arguments."""
    calls: list = []
    monkeypatch.setattr(reference, "paragraph", lambda ids: calls.append(ids) or f"REF {ids}")
    monkeypatch.setattr(reference, "label_demo_paragraph",
                        lambda ds: calls.append(ds) or f"REF {ds}")
    return calls


def test_reports_opening_glues_the_four_values_of_two_tables(no_reference):
    reports = [SimpleNamespace(artifact="P2-T2", provenance={"dataset": "synthetic"},
                               headline=lambda: "reproduced: CB above PL"),
               SimpleNamespace(artifact="P2-T4", provenance={"dataset": "synthetic"},
                               headline=lambda: "inconclusive: too short")]
    out = chapter_glue.reports_opening("p2_seg", reports)
    assert list(out) == ["p2_seg_artifacts", "p2_seg_data", "p2_seg_verdict",
                         "p2_seg_reference"]
    assert out["p2_seg_artifacts"] == "P2-T2, P2-T4"
    assert out["p2_seg_data"] == "synthetic (phantom)"  # one dataset: named once
    assert out["p2_seg_verdict"] == ("P2-T2: reproduced: CB above PL; "
                                     "P2-T4: inconclusive: too short")
    assert out["p2_seg_reference"].data == "REF ['P2-T2', 'P2-T4']"
    assert no_reference == [["P2-T2", "P2-T4"]]


def test_opening_values_of_one_run_has_no_artifacts_line(no_reference):
    out = chapter_glue.opening_values("p4_benchmark", {"": {"dataset": "synthetic"}},
                                      {"P4-T3": "**reproduced**", "P4-T4": "not run"},
                                      ["P4-T1", "P4-T3"])
    assert list(out) == ["p4_benchmark_data", "p4_benchmark_verdict", "p4_benchmark_reference"]
    assert out["p4_benchmark_verdict"] == "P4-T3: reproduced; P4-T4: not run"
    assert out["p4_benchmark_reference"].data == "REF ['P4-T1', 'P4-T3']"


@pytest.mark.parametrize(("prefix", "refs", "match"), [
    ("", ["P4-T1"], "prefix"), ("p4", [], "no artifact")])
def test_opening_values_refuses_what_it_cannot_glue(prefix, refs, match):
    with pytest.raises(opening.OpeningError, match=match):
        chapter_glue.opening_values(prefix, {"": {"dataset": "synthetic"}}, {"": "x"}, refs)
    with pytest.raises(opening.OpeningError, match="no report"):
        chapter_glue.reports_opening("p2_seg", [])


@pytest.mark.parametrize(("lr", "text"), [(1e-4, "1e-4"), (2e-3, "0.002"), (0.01, "0.01"),
                                          (2.5e-5, "2.5e-5")])
def test_learning_rate_reads_as_the_papers_print_it(lr, text):
    assert p2_report_glue.learning_rate_text(lr) == text
    with pytest.raises(ValueError, match="positive"):
        p2_report_glue.learning_rate_text(0.0)


def test_p2_prose_values_come_from_p2_yaml_and_the_profiles():
    v = p2_report_glue.prose_values()
    # P2 Sec. 4.2: batch 8, 100 epochs, Adam 1e-4, 352 x 352; Sec. 4.1.1: C-Sep 15 / 1 / 4
    assert (v["p2_paper_batch_size"], v["p2_paper_epochs"], v["p2_paper_learning_rate"],
            v["p2_paper_image_size"]) == ("8", "100", "1e-4", "352 x 352")
    assert (v["p2_paper_c_sep"], v["p2_paper_c_volumes"]) == ("15 / 1 / 4", "20")
    assert [v[f"p2_paper_mixed_{p}"] for p in ("train", "val", "test")] == ["45%", "5%", "50%"]
    assert (v["p2_cpu_image_size"], v["p2_cpu_channels"]) == ("64 x 64", "8")
    # Sec. 4.4: GAME(L = 4) sums over 4^4 = 256 cells; Eq. 1's consistency weight 1
    assert (v["p2_paper_game_level"], v["p2_paper_game_cells"], v["p2_cpu_lambda"]) == \
        ("4", "256", "1")
    # the authors' 384 of 512 px centre crop (0.75); ma20-slices.yaml: sep 7 / 1 / 2 of 10
    assert (v["p2_paper_profile_crop"], v["p2_data_c_sep"], v["p2_data_c_volumes"]) == \
        ("75%", "7 / 1 / 2", "10")
    # the profiles are read, not typed: a cpu profile at 48 px with 16 channels says so
    cpu = replace(P2_PROFILES["cpu"], size=48, model_kwargs={"base_width": 16, "depth": 3},
                  lam=0.5)
    v = p2_report_glue.prose_values({**P2_PROFILES, "cpu": cpu})
    assert (v["p2_cpu_image_size"], v["p2_cpu_channels"], v["p2_cpu_lambda"]) == \
        ("48 x 48", "16", "0.5")


def test_scores_table_keeps_the_columns_and_rounds():
    scores = {"a": {"n_volumes": 1, "n_slices": 12, "dice": 0.123456, "iou": 0.5,
                    "sens": 0.25, "spec": 0.9999, "lung_containment": 1.0, "seconds": 3.0}}
    frame = p2_report_glue.scores_table(scores)
    assert list(frame.columns) == list(p2_report_glue.SCORE_COLUMNS)  # "seconds" dropped
    assert frame.loc["a"].tolist() == [1.0, 12.0, 0.123, 0.5, 0.25, 1.0, 1.0]
    with pytest.raises(KeyError, match="lung_containment"):
        p2_report_glue.scores_table({"a": {k: 0 for k in ("n_volumes", "n_slices", "dice",
                                                          "iou", "sens", "spec")}})
    with pytest.raises(ValueError, match="no test set"):
        p2_report_glue.scores_table({})


def test_p4_prose_values_come_from_p4_yaml():
    # Table 1's stated total; P4 Sec. 4: 500 epochs, C_v = C_p = 4, lambda = 0.5; RGS+AL
    # weighs by RGS alone (covidlib.reweight.MODES["rgs_al"]: lambda 1)
    assert p4_glue.prose_values() == {"p4_trainable_parameters": "4,806,481",
                                      "p4_paper_epochs": "500", "p4_paper_batch": "4",
                                      "p4_paper_lambda": "0.5", "p4_rgs_al_lambda": "1",
                                      "p4_input_size": "96³"}  # P4_INPUT_SHAPE 1x1x96x96x96


def test_label_demo_device_is_pinned_to_the_cpu():
    assert label_demo_glue.widget_device("cpu") == "cpu"
    assert label_demo_glue.widget_device("auto") == "cpu"
    with pytest.raises(ValueError, match=r"device='cuda'.*'auto' or 'cpu'"):
        label_demo_glue.widget_device("cuda")


def test_label_demo_glues_measured_values_twice_and_the_settings(no_reference):
    out = label_demo_glue.chapter_values({"labels": 10, "verdict": "v"}, "synthetic", 3)
    assert out["label_demo_labels"] == out["label_demo_synthetic_labels"] == 10
    assert out["label_demo_seed"] == out["label_demo_synthetic_seed"] == 3
    assert out["label_demo_reference"].data == "REF synthetic"
    # the cpu profile: 64 px, 5 answers a cycle; the widget's U-Net: 8 channels, 3 levels;
    # the target is 90 % of the best final Dice; P1: 3 s per answer, 100 cycles
    assert {k: out[k] for k in label_demo_glue.prose_values()} == {
        "label_demo_cpu_size": "64", "label_demo_cpu_channels": "8",
        "label_demo_cpu_levels": "3", "label_demo_target_share": "90 %",
        "label_demo_seconds_per_answer": "3 s", "label_demo_p1_cycles": "100",
        "label_demo_cpu_per_cycle": "5"}
    small = replace(LABEL_PROFILES["cpu"], size=32, regions_per_cycle=2)
    v = label_demo_glue.prose_values({"cpu": small})
    assert (v["label_demo_cpu_size"], v["label_demo_cpu_per_cycle"]) == ("32", "2")


@pytest.mark.parametrize(("values", "text"), [([100, 400, 1600], "100, 400 and 1600"),
                                              ([4, 8], "4 and 8"), ([7], "7"),
                                              ([0.5, 2.0], "0.5 and 2")])
def test_number_list(values, text):
    assert page_values.number_list(values) == text


def test_performance_values_come_from_the_suite_and_the_widget_goals():
    assert page_values.performance_values() == {
        "perf_mc_regions": "64", "perf_train_image_size": "352 x 352",
        "perf_train_volume_size": "96³", "perf_al_pools": "100, 400 and 1600",
        "perf_memory_interval": "2 ms",  # PeakMemory(interval_s=0.002)
        "perf_click_goal": "50 ms", "perf_cycle_goal": "10 s"}


def test_gpu_memory_values_take_the_peak_per_profile():
    table = pd.DataFrame({"memory GiB": [4.2, 2.66, 7.28, 0.86]},
                         index=["P1 gpu", "P1 paper", "P2 paper", "P4 gpu"])
    assert page_values.gpu_memory_values(table) == {
        "gpu_memory_gb": "80 GB", "gpu_peak_gpu_gib": "4.2 GiB",
        "gpu_peak_paper_gib": "7.3 GiB", "gpu_memory_fit": "every step fits"}
    # 75 GiB = 80.5 GB > 80 GB
    big = pd.DataFrame({"memory GiB": [75.0, 1.0]}, index=["P2 gpu", "P2 paper"])
    assert page_values.gpu_memory_values(big)["gpu_memory_fit"] == "not every step fits"
    with pytest.raises(KeyError, match="paper"):
        page_values.gpu_memory_values(big.iloc[:1])
    with pytest.raises(KeyError, match="memory GiB"):
        page_values.gpu_memory_values(pd.DataFrame({"x": [1]}))


def test_table1_verdict_names_the_statistics_that_differ():
    agree = pd.DataFrame({"agrees": ["yes", "no (+2.0%)", "yes", "not measurable"]},
                         index=["cases", "slices", "slices_with_infection", "infected_regions"])
    assert tables.table1_verdict(agree) == ("slices: no (+2.0%); "
                                            "infected_regions: not measurable")
    assert tables.table1_verdict(agree.assign(agrees="yes")) == "all four statistics agree"


def test_record_table1_writes_an_entry_per_paper_that_has_the_dataset(tmp_path, monkeypatch):
    frame = pd.DataFrame({"paper": [20, 100], "ours": [20, 98],
                          "agrees": ["yes", "no (-2.0%)"]}, index=["cases", "slices"])
    monkeypatch.setattr(tables, "table1_agreement",
                        lambda paper, dataset, stats: frame if paper == "P2" else None)
    run = {"profile": "cpu", "dataset": "covid-semiseg", "hardware": "box", "date": "today"}
    written = tables.record_table1(tmp_path, "covid-semiseg", {}, run)
    assert [p.name for p in written] == ["P2-T1.json"]
    import json

    entry = json.loads(written[0].read_text())
    assert entry["paper"] == {"cases": 20, "slices": 100}
    assert entry["ours"] == {"cases": 20, "slices": 98}
    assert entry["verdict"] == "slices: no (-2.0%)"


def test_demo_folder_summary_counts_slices_and_pngs(tmp_path: Path):
    from covidlib.data.demo_folder import DemoFolder, summary

    for sub in ("images", "masks", "lungs"):
        (tmp_path / sub).mkdir()
        for sid in ("0000", "0001", "0002"):
            (tmp_path / sub / f"{sid}.png").write_bytes(b"")
    (tmp_path / "lungs" / "0002.png").unlink()  # one lung mask missing
    (tmp_path / "volumes.csv").write_text("slice,volume\n0000,p01\n0001,p01\n0002,p02\n")
    demo = DemoFolder(tmp_path, {"p01": ("0000", "0001"), "p02": ("0002",)},
                      {"p01": "A", "p02": "B"})
    frame = summary(demo)
    assert frame.to_dict("index") == {
        "p01": {"scanner": "A", "slices": 2, "images/": 2, "masks/": 2, "lungs/": 2},
        "p02": {"scanner": "B", "slices": 1, "images/": 1, "masks/": 1, "lungs/": 0}}
    (tmp_path / "volumes.csv").write_text("slice,patient\n0000,p01\n")
    with pytest.raises(ValueError, match="slice,volume"):
        summary(demo)
    (tmp_path / "volumes.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"volumes\.csv"):
        summary(demo)
