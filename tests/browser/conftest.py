"""Fixtures of the real-browser tests: Debian's Chromium driven headless by Playwright.

Chromium comes from apt (``make test-browser`` installs ``chromium`` and ``chromium-driver``);
Playwright only drives it (``executable_path``), it never downloads a browser. Outside CI
the tests skip with a message when Chromium is absent; in CI (``CI=true``) they fail instead.

The book under test is ``$COVIDLIB_BOOK_HTML`` (e.g. ``book/_build/html`` after ``make book``;
its chapters are those of ``book/_toc.yml``, or of ``$COVIDLIB_BOOK_TOC``) or, by default, a
small book built here from the real configuration and intro with the "Label your own slices"
chapter (tiny settings), the API reference page (``covidlib.report.book.write_api_page``,
written by the build) and the scorecard page.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("COVIDLIB_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(os.environ.get("COVIDLIB_SCREENSHOTS", REPO / "build" / "browser"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# tiny settings of the widget chapter (covidlib.experiments.label_demo)
TINY = {"pool": 6, "eval": 4, "cycles": 1, "initial_images": 1, "epochs": 2, "n_mc": 2,
        "size": 32, "regions_per_cycle": 2, "warm_slices": 6, "warm_epochs": 1}


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a real headless Chromium")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)


def _require_chromium() -> None:
    if CHROMIUM.exists() and shutil.which("chromedriver"):
        return
    msg = (f"Chromium not found at {CHROMIUM} (or chromedriver missing): run `make test-browser`,"
           " which installs Debian's chromium and chromium-driver with apt-get")
    if IN_CI:
        pytest.fail(f"CI=true: {msg}")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session."""
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """``http://127.0.0.1:<port>/`` serving ``folder`` until the block ends."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _small_book(root: Path, data_root: Path) -> tuple[Path, Path]:
    """Build a book with the intro, the widget chapter (tiny), the API page and the
    scorecard."""
    from covidlib.report import book

    (root / "book").mkdir(parents=True)
    for name in ("_config.yml", "intro.md"):
        shutil.copy2(REPO / "book" / name, root / "book" / name)
    book.ensure_offline_assets(REPO, log=lambda s: None)
    shutil.copytree(REPO / "book" / "_assets", root / "book" / "_assets")
    (root / "notebooks").mkdir()
    for nb in ("label_your_own", "scorecard"):
        shutil.copy2(REPO / "notebooks" / f"{nb}.ipynb", root / "notebooks")
    (root / "book" / "plan.yml").write_text(
        "- {notebook: label_your_own, output: label_your_own_synthetic, title: Label,\n"
        f"   parameters: {{dataset: synthetic, device: cpu, data_root: '{data_root}',\n"
        "                seeds: [0], curves: false,\n"
        f"                overrides: {TINY!r}}}}}\n"
        "- {notebook: scorecard, output: scorecard, title: Scorecard, stage: 1}\n")
    (root / "book" / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nparts:\n"
        "  - caption: Label your own slices\n    chapters:\n"
        "      - file: _generated/label_your_own_synthetic\n"
        "  - caption: Reference\n    chapters:\n"
        "      - file: api\n"
        "  - caption: Reproduction scorecard\n    chapters:\n"
        "      - file: _generated/scorecard\n")
    outcomes = book.execute_plan(root, "cpu", root / "results", device="cpu", workers=1,
                                 log=lambda s: None)
    failed = [o for o in outcomes if o.status != "ok"]
    assert not failed, book.report(outcomes)
    return book.build_html(root, log=lambda s: None), root / "book" / "_toc.yml"


@pytest.fixture(scope="session")
def book_html(tmp_path_factory, synthetic_root) -> tuple[Path, Path]:
    """``(html folder, _toc.yml)`` of the book under test."""
    given = os.environ.get("COVIDLIB_BOOK_HTML")
    if given:
        html = Path(given).resolve()
        if not (html / "index.html").exists():
            pytest.fail(f"COVIDLIB_BOOK_HTML={given}: no index.html there (run make book)")
        return html, Path(os.environ.get("COVIDLIB_BOOK_TOC", REPO / "book" / "_toc.yml"))
    return _small_book(tmp_path_factory.mktemp("smallbook"), synthetic_root)
