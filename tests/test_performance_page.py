"""The book's Performance page (notebooks/performance.ipynb) renders a results file, a partial
one, or none at all without failing."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import matplotlib
import pytest

from covidlib.bench import report, run

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "performance.ipynb"


def _outputs_text(nb: dict) -> tuple[str, int]:
    text, images = [], 0
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            images += "image/png" in data
            for key in ("text/markdown", "text/plain", "text/html"):
                value = data.get(key, "")
                text.append(value if isinstance(value, str) else "".join(value))
            text.append("".join(out.get("text", "")))
    return "\n".join(text), images


@pytest.mark.slow
def test_page_renders_a_partial_results_file(tmp_path):
    papermill = pytest.importorskip("papermill")
    bench = tmp_path / "bench.json"
    run.run_suite(bench, quick=True, device="cpu", progress=False,
                  sections=["al_scaling", "volume_scaling"])
    (tmp_path / "book_timings_cpu.json").write_text(json.dumps({
        "00_datasets_synthetic": {"status": "ok", "seconds": 12.5, "worker": "local"},
        "p2_consistency": {"status": "ok", "seconds": 200.0, "worker": "local"}}))
    out = tmp_path / "performance.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), cwd=str(NOTEBOOK.parent),
                               parameters={"bench_file": str(bench),
                                           "results_dir": str(tmp_path)},
                               kernel_name="python3", progress_bar=False)
    text, images = _outputs_text(json.loads(out.read_text()))
    assert "This is a `--quick` run" in text
    assert "GPU figures were not measured: no CUDA device was found" in text
    assert "The `mc` benchmark is not in this results file" in text
    assert "The `train` benchmark is not in this results file" in text
    assert "Widget responsiveness: **not measured yet: run `make bench`**" in text
    assert "AL cycle vs pool size" in text and "3D scoring vs volume size" in text
    assert "p2_consistency" in text and "not measured (the book was not run with it)" in text
    assert images == 2  # the scaling plot and the per-chapter bars


def _run_cells(bench_file, results_dir) -> tuple[list, dict]:
    """Execute the page's code cells in this process on ``bench_file``: (the value each cell
    shows, the namespace)."""
    matplotlib.use("Agg")
    pytest.importorskip("IPython")
    nb = json.loads(NOTEBOOK.read_text())
    code = [("".join(c["source"]), c["metadata"].get("tags", [])) for c in nb["cells"]
            if c["cell_type"] == "code"]
    assert "parameters" in code[0][1]
    ns: dict = {}
    exec(code[0][0], ns)  # the parameters cell
    ns.update(bench_file=str(bench_file), results_dir=str(results_dir))
    shown = []
    for source, _tags in code[1:]:
        tree = ast.parse(source)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<cell>", "exec"), ns)
        if last is not None:
            shown.append(eval(compile(ast.Expression(last.value), "<cell>", "eval"), ns))
    return shown, ns


def _text(shown: list) -> str:
    return "\n".join(getattr(v, "data", None) or (v.to_string() if hasattr(v, "to_string")
                                                  else "") for v in shown if v is not None)


def test_page_cells_run_without_a_results_file(tmp_path):
    """Every cell must run with no results file and the first one must say how to produce
    it; the widget's section says it was not measured yet."""
    shown, ns = _run_cells(tmp_path / "bench.json", tmp_path)
    first = shown[0]
    assert "No benchmark results were found" in first.data and "make bench" in first.data
    assert ns["res"] is None and ns["cpu_book"] is None
    text = _text(shown)
    assert "Widget responsiveness: **not measured yet: run `make bench`**" in text
    assert "not measured yet: run make bench" in text  # the two goal rows


RESPONSIVE = {  # a hand-written results file with the widget's section only
    "schema": run.SCHEMA, "quick": False, "total_seconds": 30.0, "checks": {},
    "settings": {"responsiveness": {"clicks": 20, "threads": 2, "seed": 0}},
    "machine": {"hostname": "box", "cpu": "Some CPU", "cores": 2, "torch_threads": 2,
                "gpu": None, "device": "cpu", "torch": "2", "python": "3.11",
                "date": "2026-12-03T17:00:00+00:00", "load_average_start": [0.5, 0.5, 0.5]},
    "responsiveness": {"click_saved_ms": 12.3, "click_saved_p95_ms": 61.0, "click_ms": 20.5,
                       "click_p95_ms": 30.0, "click_during_training_ms": 25.0,
                       "click_during_training_p95_ms": 40.0, "clicks": 20,
                       "clicks_during_training": 14, "cycle_s": 12.5, "cycle_cpu_s": 8.25,
                       "cycle_labels": 6, "threads": 2, "torch_threads": 2,
                       "through": "LabelWidget", "click_goal_ms": 50.0, "cycle_goal_s": 10.0,
                       "device": "cpu", "section_seconds": 20.0}}


def test_page_shows_the_widget_responsiveness(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(RESPONSIVE))
    shown, ns = _run_cells(bench, tmp_path)
    words = next(v.data for v in shown if "click was on disk" in getattr(v, "data", "") or "")
    assert ("On **box** (Some CPU, 2 cores; the widget trains on CPU with 2 torch thread(s), "
            "through the LabelWidget), a click was on disk 12.3 ms after it was given "
            "(median of 20; 95th percentile 61 ms); goal < 50 ms: **met** (95th percentile: "
            "NOT met)") in words
    assert "14 clicks took 25 ms (median; 95th percentile 40 ms)" in words
    assert ("took 12.5 s of wall time and 8.25 s of CPU time; goal < 10 s on 2 cores: "
            "**NOT met**") in words
    assert "shared" not in words  # quiet machine: no load warning
    table = next(v for v in shown if getattr(v, "index", None) is not None
                 and v.index.name == "what")
    assert table.loc["click saved to disk, median"].tolist() == ["12.3 ms", "< 50 ms", "met"]
    assert table.loc["click saved to disk, 95th percentile", "verdict"] == "NOT met"
    assert table.loc["click while a cycle trains, median", "measured"] == "25 ms"
    cycle = "one training cycle (fit + re-scoring the pool), wall time"
    assert table.loc[cycle].tolist() == ["12.5 s", "< 10 s", "NOT met"]
    goals = report.goals_table(ns["res"], None, None)
    assert goals.loc["widget: click saved to disk < 50 ms", "verdict"] == "met"
    assert goals.loc["widget: training cycle < 10 s (2 cores)"].tolist() == [
        "12.5 s wall, 8.25 s CPU", "NOT met"]
    assert "The `mc` benchmark is not in this results file" in _text(shown)
