"""The built book in a real browser: every chapter and figure loads, nothing leaves 127.0.0.1,
the widget view renders from the saved widget state."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from .conftest import serve

pytestmark = pytest.mark.timeout(300)


def toc_pages(toc: Path) -> list[str]:
    """HTML paths of the root and every chapter listed in a Jupyter Book ``_toc.yml``."""
    doc = yaml.safe_load(toc.read_text())
    files = [doc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk({k: v for k, v in doc.items() if k != "root"})
    return [re.sub(r"\.(md|ipynb)$", "", f) + ".html" for f in files]


def test_toc_pages_by_hand(tmp_path):
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: intro\nparts:\n  - caption: A\n    chapters:\n"
                   "      - file: _generated/a\n      - file: b.md\n        sections:\n"
                   "          - file: _generated/c\n")
    assert toc_pages(toc) == ["intro.html", "_generated/a.html", "b.html", "_generated/c.html"]


class _Watch:
    """Every request of a browser context: foreign ones are recorded and aborted."""

    def __init__(self, context):
        self.foreign: list[str] = []
        self.failed: list[str] = []
        self.errors: list[str] = []
        context.route("**/*", self._route)

    def _route(self, route):
        url = route.request.url
        if urlparse(url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort()

    def attach(self, page):
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        page.on("response", lambda r: r.status >= 400 and self.failed.append(
            f"{r.status} {r.url} (page {page.url})"))
        return page


def _pixels(page, selector: str) -> dict:
    """Mean and standard deviation of the RGB values of a canvas."""
    return page.eval_on_selector(selector, """c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = 0, s2 = 0, n = 0;
        for (let i = 0; i < d.length; i += 4) for (let k = 0; k < 3; k++) {
            s += d[i + k]; s2 += d[i + k] * d[i + k]; n++; }
        const m = s / n; return {mean: m, std: Math.sqrt(s2 / n - m * m), w: c.width};
    }""")


MAX_SHOT_HEIGHT = 12000  # px


def test_every_chapter_and_figure_loads_offline(browser, book_html, screenshots):
    html, toc = book_html
    pages = toc_pages(toc)
    assert len(pages) >= 3
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    watch = _Watch(context)
    images = 0
    with serve(html) as base:
        page = watch.attach(context.new_page())
        for rel in pages:
            response = page.goto(base + rel, wait_until="load")
            assert response is not None and response.ok, f"{rel}: {response and response.status}"
            page.wait_for_load_state("networkidle")
            assert page.locator("article, main").first.inner_text().strip(), f"{rel}: empty"
            state = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.currentSrc || e.src, e.complete, e.naturalWidth])")
            broken = [src for src, complete, width in state if not (complete and width > 0)]
            assert not broken, f"{rel}: images that did not load: {broken}"
            images += len(state)
            name = rel.replace("/", "_").removesuffix(".html")
            # Chromium cannot capture a page taller than its texture limit (the API reference
            # is tens of thousands of pixels): those pages get a viewport screenshot.
            tall = page.evaluate("document.documentElement.scrollHeight") > MAX_SHOT_HEIGHT
            page.screenshot(path=str(screenshots / f"book-{name}.png"), full_page=not tall)
    context.close()
    assert images > 0, "no figure in the whole book"
    assert not watch.foreign, f"requests left 127.0.0.1: {watch.foreign}"
    assert not watch.failed, f"failed requests: {watch.failed}"
    assert not watch.errors, f"JavaScript errors: {watch.errors}"


def test_widget_view_renders_from_the_static_state(browser, book_html, screenshots):
    html, toc = book_html
    chapter = next(p for p in toc_pages(toc) if "label_your_own" in p)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    watch = _Watch(context)
    with serve(html) as base:
        page = watch.attach(context.new_page())
        page.goto(base + chapter, wait_until="load")
        demo = ".covidlib-label[data-name='demo']"
        canvas = f"{demo} canvas"
        page.wait_for_selector(canvas, state="visible", timeout=60_000)
        page.wait_for_function(
            f"() => {{ const c = document.querySelector(\"{canvas}\"); return c && c.dataset.view"
            " && c.width > 0; }", timeout=30_000)
        page.wait_for_timeout(500)  # the images are data URLs: decoded within a frame or two
        shown = _pixels(page, canvas)
        assert shown["std"] > 10, f"the canvas is blank: {shown}"
        view = json.loads(page.get_attribute(canvas, "data-view"))
        box = json.loads(page.get_attribute(canvas, "data-box"))
        assert len(view) == 4 and len(box) == 4
        title = page.inner_text(f"{demo} .covidlib-label-title")
        assert f"rows {box[0]}-{box[1] - 1}" in title
        # the heat-map toggle needs no kernel
        button = f"{demo} button[data-action='heatmap']"
        assert page.get_attribute(button, "aria-pressed") == "true"
        page.click(button)
        page.wait_for_function(
            f"() => document.querySelector(\"{button}\").getAttribute('aria-pressed') === 'false'")
        assert _pixels(page, canvas) != shown, "the heat-map toggle did not redraw"
        page.click(button)
        page.locator(demo).screenshot(path=str(screenshots / "widget-static.png"))
        # the scorecard page has one row per artifact
        card = next(p for p in toc_pages(toc) if p.endswith("scorecard.html"))
        page.goto(base + card, wait_until="networkidle")
        rows = page.locator("table.covidlib-scorecard tbody tr")
        from covidlib.report.scorecard import EXPECTED_ARTIFACTS

        assert rows.count() >= len(EXPECTED_ARTIFACTS) - 1
        page.locator("table.covidlib-scorecard").screenshot(
            path=str(screenshots / "scorecard-table.png"))
    context.close()
    assert not watch.foreign, f"requests left 127.0.0.1: {watch.foreign}"
    assert not watch.errors, f"JavaScript errors: {watch.errors}"
