"""The book reads well in a real browser (issue 17): the API reference lists every public
function of covidlib with its docstring, and a chapter shows its outputs and its two-line
opening without the plumbing code (scorecard rows, glue, provenance, timers)."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

from covidlib.report import book

from .conftest import serve

pytestmark = pytest.mark.timeout(300)

# code a reader must never see on a chapter page (covidlib.report.book.hide_plumbing)
PLUMBING = ("scorecard.record", "glue(", "provenance(", "perf_counter(", "notebook_timer(",
            "record_timings(")


def public_functions() -> dict[str, object]:
    """``module.function`` -> function for every public function of covidlib: defined in a
    public module (:func:`covidlib.report.book.public_modules`), no leading underscore, and
    listed in the module's ``__all__`` when it has one (what autodoc documents)."""
    out = {}
    for name in book.public_modules():
        module = importlib.import_module(name)
        listed = getattr(module, "__all__", None)
        for attr, obj in vars(module).items():
            if (inspect.isfunction(obj) and obj.__module__ == name and not attr.startswith("_")
                    and (listed is None or attr in listed)):
                out[f"{name}.{attr}"] = obj
    return out


def _words(text: str) -> str:
    """Docstring or page text without reST/HTML markup and with single spaces."""
    return re.sub(r"\s+", " ", re.sub(r"[`*\\]", "", text)).strip()


def test_api_page_lists_every_public_function_with_its_docstring(browser, book_html):
    html, _ = book_html
    with serve(html) as url:
        page = browser.new_page()
        page.goto(url + "api.html")
        ids = set(page.eval_on_selector_all("dt[id]", "els => els.map(e => e.id)"))
        functions = public_functions()
        assert len(functions) > 100, "covidlib has more public functions than that"
        missing = sorted(set(functions) - ids)
        assert not missing, f"{len(missing)} public functions not on the API page: {missing[:20]}"
        from covidlib.data import open_dataset
        from covidlib.metrics import lung_containment

        for fn in (open_dataset, lung_containment):
            key = f"{fn.__module__}.{fn.__name__}"
            body = page.eval_on_selector(f'dt[id="{key}"]',
                                         "dt => dt.nextElementSibling.innerText")
            first = _words(inspect.getdoc(fn).split("\n\n")[0])
            # the docstring's first paragraph, as rendered (the first 8 words: long lines wrap)
            assert " ".join(first.split()[:8]) in _words(body), (key, first, body[:300])
        page.close()


def test_a_chapter_shows_outputs_and_opening_but_no_plumbing(browser, book_html):
    html, _ = book_html
    with serve(html) as url:
        page = browser.new_page()
        page.goto(url + "_generated/label_your_own_synthetic.html")
        inputs = page.eval_on_selector_all("div.cell_input", "els => els.map(e => e.innerText)")
        assert inputs, "the chapter shows no code at all: is this a chapter page?"
        shown = [(p, code[:200]) for code in inputs for p in PLUMBING if p in code]
        assert not shown, f"plumbing code on the page: {shown}"
        assert page.locator("div.cell_output").count() >= 3
        assert page.locator("div.cell_output img").count() >= 1  # the figures
        # the two-line opening, its glued data and verdict resolved (no raw role left)
        text = page.inner_text("main")
        assert "In two lines." in text and "{glue" not in text
        verdict = re.search(r"Verdict:\s*(.+)", text)
        assert verdict and verdict.group(1).strip(" ."), text[:600]
        assert "synthetic (phantom)" in text
        page.close()
