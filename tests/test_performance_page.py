"""The book's Performance page (notebooks/performance.ipynb) renders a results file, a partial
one, or none at all without failing."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import matplotlib
import pytest

from covidlib.bench import run

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
    assert "AL cycle vs pool size" in text and "3D scoring vs volume size" in text
    assert "p2_consistency" in text and "not measured (the book was not run with it)" in text
    assert images == 2  # the scaling plot and the per-chapter bars


def test_page_cells_run_without_a_results_file(tmp_path, monkeypatch):
    """Execute the page's code in this process with no results file: every cell must run and
    the first one must say how to produce the file."""
    matplotlib.use("Agg")
    pytest.importorskip("IPython")
    nb = json.loads(NOTEBOOK.read_text())
    code = [("".join(c["source"]), c["metadata"].get("tags", [])) for c in nb["cells"]
            if c["cell_type"] == "code"]
    assert "parameters" in code[0][1]
    ns: dict = {}
    exec(code[0][0], ns)  # the parameters cell
    ns.update(bench_file=str(tmp_path / "bench.json"), results_dir=str(tmp_path))
    shown = []
    for source, _tags in code[1:]:
        tree = ast.parse(source)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<cell>", "exec"), ns)
        if last is not None:
            shown.append(eval(compile(ast.Expression(last.value), "<cell>", "eval"), ns))
    first = shown[0]
    assert "No benchmark results were found" in first.data and "make bench" in first.data
    assert ns["res"] is None and ns["cpu_book"] is None
