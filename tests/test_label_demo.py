"""The "Label your own slices" chapter: profiles, cached runs that restore exactly, and the
chapter and scorecard notebooks under papermill with tiny settings."""

from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from covidlib.data.api import open_dataset
from covidlib.experiments import label_demo

REPO = Path(__file__).resolve().parents[1]
TINY = {"pool": 6, "eval": 4, "cycles": 1, "initial_images": 1, "epochs": 2, "n_mc": 2,
        "size": 32, "regions_per_cycle": 2}


def test_settings_refuse_unknown_profiles_and_keys():
    assert label_demo.settings("cpu", {"cycles": 2})["cycles"] == 2
    assert label_demo.settings("paper")["n_regions"] == 64  # P1: K = 64
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        label_demo.settings("fast")
    with pytest.raises(ValueError, match=r"unknown override key\(s\) \['colour'\]"):
        label_demo.settings("cpu", {"colour": 1})


def test_a_cached_run_restores_the_same_model_and_proposals(tmp_path, synthetic_root):
    ds = open_dataset("synthetic", synthetic_root)
    first = label_demo.demo(ds, "cpu", TINY, tmp_path / "r", tmp_path / "a.jsonl")
    assert not first.cached and [h["cycle"] for h in first.history] == [1, 2]
    assert first.history[0]["labels"] == 16 and first.history[1]["labels"] == 18
    saved = (tmp_path / "a.jsonl").read_text()
    again = label_demo.demo(ds, "cpu", TINY, tmp_path / "r", tmp_path / "a.jsonl")
    assert again.cached
    pd.testing.assert_frame_equal(pd.DataFrame(again.history)[list(first.history[0])],
                                  pd.DataFrame(first.history))  # NaN-aware
    assert (tmp_path / "a.jsonl").read_text() == saved
    assert [(q.ref, q.box) for q in again.session.queue] == [
        (q.ref, q.box) for q in first.session.queue]
    for ref in first.session.refs:
        np.testing.assert_array_equal(again.session.scores[ref], first.session.scores[ref])
    mine = label_demo.own_session(ds, first, tmp_path / "mine.jsonl")
    assert mine.refs == first.session.refs and mine.restored == 0
    frame = label_demo.history_frame(first.history)
    assert list(frame.columns)[:3] == ["cycle", "labels", "points"]


@pytest.mark.slow
def test_the_chapter_and_the_scorecard_run_under_papermill(tmp_path, synthetic_root):
    import papermill

    results = tmp_path / "results"
    out = tmp_path / "label.ipynb"
    papermill.execute_notebook(
        str(REPO / "notebooks" / "label_your_own.ipynb"), str(out), kernel_name="python3",
        cwd=str(REPO / "notebooks"), progress_bar=False,
        parameters={"dataset": "synthetic", "data_root": str(synthetic_root), "device": "cpu",
                    "results_dir": str(results), "overrides": TINY})
    nb = nbformat.read(out, as_version=4)
    mimes = [m for c in nb.cells if c.cell_type == "code" for o in c.outputs
             for m in o.get("data", {})]
    assert mimes.count("image/png") == 2  # the history plot and the query figure
    assert mimes.count("application/vnd.jupyter.widget-view+json") >= 2  # demo and mine
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    names = [m["state"].get("name") for m in state.values()
             if m["model_name"] == "AnyModel" or "_esm" in m["state"]]
    assert {"demo", "mine"} <= set(names)
    table = next(o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 if "label_demo.history_frame" in c.source and "text/html" in o.get("data", {}))
    for column in ("annotator seconds", "test Dice", "background tags"):
        assert column in table["data"]["text/html"]
    assert (results / "label_demo" / "synthetic-mine.jsonl").exists()
    card = tmp_path / "card.ipynb"
    papermill.execute_notebook(str(REPO / "notebooks" / "scorecard.ipynb"), str(card),
                               kernel_name="python3", cwd=str(REPO / "notebooks"),
                               progress_bar=False, parameters={"results_dir": str(results)})
    html = nbformat.read(card, as_version=4).cells[-1].outputs[0]["data"]["text/html"]
    assert html.count("not run") >= 40 and "P2-T2" in html and "P4-F3" in html
