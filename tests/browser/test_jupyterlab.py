"""The widget in a live JupyterLab: a click lands at the right image pixel, "b" tags the
region background, both are in the annotations file at once, a click given while a cycle
trains in the background is on disk at once and kept, and after the kernel is killed and the
notebook reopened the labels are restored."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from .conftest import REPO, TINY, free_port

pytestmark = pytest.mark.timeout(420)

MINE = ".covidlib-label[data-name='mine']"
CANVAS = f"{MINE} canvas"


def _wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:  # 127.0.0.1 only
        return json.loads(r.read())


@pytest.fixture
def lab(tmp_path, synthetic_root):
    """JupyterLab on 127.0.0.1 (no token) with the widget chapter, tiny settings injected."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    root = tmp_path / "lab"
    root.mkdir()
    mine = root / "my-labels.jsonl"
    nb = load_notebook_node(str(REPO / "notebooks" / "label_your_own.ipynb"))
    nb = parameterize_notebook(nb, {"profile": "cpu", "dataset": "synthetic", "device": "cpu",
                                    "data_root": str(synthetic_root),
                                    "results_dir": str(root / "results"),
                                    # long enough cycles to click while one trains
                                    "overrides": {**TINY, "epochs": 150}, "seeds": [0],
                                    "curves": False, "my_annotations": str(mine)})
    nbformat.write(nb, root / "label.ipynb")
    port = free_port()
    home = tmp_path / "jupyter"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_CONFIG_DIR": str(home / "config")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           "--IdentityProvider.token=", "--ServerApp.password=",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           f"--LabApp.workspaces_dir={home / 'workspaces'}",
           f"--LabApp.user_settings_dir={home / 'settings'}", "--ServerApp.terminals_enabled=False"]
    if os.geteuid() == 0:  # CI runs as root
        cmd.append("--allow-root")
    log = (tmp_path / "jupyterlab.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}/"

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"JupyterLab exited: {(tmp_path / 'jupyterlab.log').read_text()}")
        with contextlib.suppress(OSError):
            return _get(base + "api/status") is not None
        return False

    try:
        _wait(up, 90, "JupyterLab to start")
        yield base, mine
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _started(page) -> bool:
    """Some cell shows ``[*]`` or an execution count."""
    return bool(page.evaluate("""() => [...document.querySelectorAll(
        '.jp-CodeCell .jp-InputArea-prompt')].some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"""))


def _run_all(page, base: str):
    """Run > Run All Cells once the kernel is connected and idle; again if nothing started
    (on a busy machine the first request can come before the kernel is wired up)."""
    _wait(lambda: any(k["execution_state"] == "idle" and k["connections"] > 0
                      for k in _get(base + "api/kernels")), 90, "an idle, connected kernel")
    for _ in range(3):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if _started(page):
                return
            page.wait_for_timeout(250)
    raise AssertionError("Run All Cells did not start the notebook")


def _open_and_run(context, base: str, screenshots: Path, name: str):
    page = context.new_page()
    page.goto(base + "lab/tree/label.ipynb", wait_until="load")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                           timeout=90_000)
    _run_all(page, base)
    try:
        page.wait_for_selector(CANVAS, state="visible", timeout=240_000)
        page.wait_for_function(f"() => document.querySelector(\"{CANVAS}\").dataset.view",
                               timeout=60_000)
    except Exception:
        page.screenshot(path=str(screenshots / f"jupyterlab-{name}-failed.png"), full_page=True)
        errors = page.locator(".jp-OutputArea-output[data-mime-type*='error'], "
                              ".jp-RenderedText[data-mime-type*='stderr']").all_inner_texts()
        raise AssertionError(f"the widget did not appear ({name}); notebook errors: "
                             f"{[e[-2000:] for e in errors]}") from None
    page.locator(MINE).scroll_into_view_if_needed()
    return page


def _labels(path: Path) -> list[dict]:
    """The labels in force: the append-only log's lines, less the ones undone."""
    from covidlib.widgets import Annotation

    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:] if line.strip()]
    undone = {o["id"] for o in lines if o.get("kind") == "undo"}
    return [o for o in lines if o.get("kind") != "undo"
            and Annotation.from_json(o, str(path)).id not in undone]


def _kernel_pids(base: str) -> list[int]:
    ids = [k["id"] for k in _get(base + "api/kernels")]
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
                if any(f"kernel-{kid}.json" in cmd for kid in ids):
                    pids.append(int(proc.name))
    return pids


def test_click_background_kill_reopen(browser, lab, screenshots):
    base, mine = lab
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = _open_and_run(context, base, screenshots, "first")
    canvas = page.locator(CANVAS)
    view = json.loads(canvas.get_attribute("data-view"))
    box = json.loads(canvas.get_attribute("data-box"))
    vy0, vy1, vx0, vx1 = view
    # a known image pixel inside the region asked about, clicked at its centre
    y, x = box[0] + 2, box[2] + 3
    bb = canvas.bounding_box()
    page.mouse.click(bb["x"] + (x + 0.5 - vx0) * bb["width"] / (vx1 - vx0),
                     bb["y"] + (y + 0.5 - vy0) * bb["height"] / (vy1 - vy0))
    labels = _wait(lambda: len(_labels(mine)) == 1 and _labels(mine), 30, "the click on disk")
    assert (labels[0]["kind"], labels[0]["y"], labels[0]["x"]) == ("point", y, x)
    assert labels[0]["box"] == box
    page.wait_for_function(f"() => document.querySelector(\"{CANVAS}\").dataset.labels === '1'")
    second = json.loads(canvas.get_attribute("data-box"))
    page.keyboard.press("b")  # the widget has the focus since the click
    labels = _wait(lambda: len(_labels(mine)) == 2 and _labels(mine), 30, "background on disk")
    assert labels[1]["kind"] == "background" and labels[1]["box"] == second
    page.wait_for_function(f"() => document.querySelector(\"{CANVAS}\").dataset.labels === '2'")
    page.locator(MINE).screenshot(path=str(screenshots / "widget-jupyterlab.png"))
    # zoomed on the next region, a click still lands on its pixel; then undo it
    third = json.loads(canvas.get_attribute("data-box"))
    page.keyboard.press("z")
    page.wait_for_function(f"() => document.querySelector(\"{CANVAS}\").dataset.view !== "
                           f"'{json.dumps(view, separators=(',', ':'))}'")
    zoomed = json.loads(canvas.get_attribute("data-view"))
    assert zoomed != view and zoomed[0] <= third[0] and third[3] <= zoomed[3]
    zy, zx = third[1] - 1, third[2]  # the region's bottom-left pixel
    bb = canvas.bounding_box()
    page.mouse.click(bb["x"] + (zx + 0.5 - zoomed[2]) * bb["width"] / (zoomed[3] - zoomed[2]),
                     bb["y"] + (zy + 0.5 - zoomed[0]) * bb["height"] / (zoomed[1] - zoomed[0]))
    labels = _wait(lambda: len(_labels(mine)) == 3 and _labels(mine), 30, "the zoomed click")
    assert (labels[2]["y"], labels[2]["x"], labels[2]["box"]) == (zy, zx, third)
    page.locator(MINE).screenshot(path=str(screenshots / "widget-jupyterlab-zoomed.png"))
    page.keyboard.press("u")
    _wait(lambda: len(_labels(mine)) == 2, 30, "the undo on disk")
    page.wait_for_function(f"() => document.querySelector(\"{CANVAS}\").dataset.labels === '2'")
    # "train a cycle" retrains in a background thread: the widget stays live, a click given
    # meanwhile is on disk at once, and the cycle (trained on the 2 labels it started with)
    # keeps it
    page.keyboard.press("t")
    page.wait_for_selector(f"{MINE}.covidlib-busy", timeout=30_000)
    page.wait_for_selector(f"{MINE} progress.covidlib-label-progress", state="visible")
    box = json.loads(canvas.get_attribute("data-box"))
    view = json.loads(canvas.get_attribute("data-view"))
    vy0, vy1, vx0, vx1 = view
    y, x = box[0] + 1, box[2] + 1
    bb = canvas.bounding_box()
    page.mouse.click(bb["x"] + (x + 0.5 - vx0) * bb["width"] / (vx1 - vx0),
                     bb["y"] + (y + 0.5 - vy0) * bb["height"] / (vy1 - vy0))
    labels = _wait(lambda: len(_labels(mine)) == 3 and _labels(mine), 30,
                   "the click given while training, on disk")
    assert (labels[2]["y"], labels[2]["x"], labels[2]["box"]) == (y, x, box)
    assert page.locator(f"{MINE}.covidlib-busy").count() == 1, "the cycle ended too soon"
    page.locator(MINE).screenshot(path=str(screenshots / "widget-jupyterlab-training.png"))
    page.wait_for_function(f"() => document.querySelector(\"{MINE} .covidlib-label-status\")"
                           ".textContent.includes('cycle 1: trained on 2 labels')",
                           timeout=180_000)
    assert len(_labels(mine)) == 3
    saved = mine.read_text()
    # a dead kernel and a closed tab
    pids = _kernel_pids(base)
    assert pids, "no kernel process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    page.close()
    context.close()
    assert mine.read_text() == saved
    # reopen: the labels come back
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = _open_and_run(context, base, screenshots, "reopened")
    page.wait_for_function(f"() => document.querySelector(\"{CANVAS}\").dataset.labels === '3'",
                           timeout=60_000)
    assert "restored 3 labels" in page.inner_text(f"{MINE} .covidlib-label-status")
    assert mine.read_text() == saved
    context.close()
