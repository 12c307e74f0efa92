"""The HTML build started in the background while the notebooks run (covidlib.report.book_pages
start_html_prebuild / HtmlPrebuild): when it starts, what it records, how it fails. A fake
``jupyter-book`` stands in for Sphinx; nothing is timed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from covidlib.report import book_pages


def _fake_jupyter_book(tmp_path: Path, code: int) -> str:
    exe = tmp_path / f"fake-jupyter-book-{code}"
    exe.write_text(f"#!/bin/sh\necho \"$@\" > \"{tmp_path}/args.txt\"\nexit {code}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A book with two executed chapters; assets and the API page left alone."""
    root = tmp_path / "repo"
    (root / "book" / "_generated").mkdir(parents=True)
    for name in ("_toc.yml", "_config.yml"):
        (root / "book" / name).write_text(name)
    for name in ("a", "b"):
        (root / "book" / "_generated" / f"{name}.ipynb").write_text("{}")
    monkeypatch.setattr(book_pages, "ensure_offline_assets", lambda repo, log=print: None)
    monkeypatch.setattr(book_pages, "write_api_page", lambda repo: None)
    return root


def test_a_prebuild_starts_only_when_the_next_build_would_be_full(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(book_pages, "_jupyter_book", lambda: _fake_jupyter_book(tmp_path, 0))
    pre = book_pages.start_html_prebuild(repo, log=lambda s: None)
    assert pre is not None  # no HTML yet: a full build
    old = repo / "book" / "_generated" / "a.ipynb"
    os.utime(old, ns=(pre.started_ns - 10**9,) * 2)  # written before the prebuild started
    new = repo / "book" / "_generated" / "b.ipynb"
    new.write_text("{ }")  # a chapter executed while the prebuild ran
    os.utime(new, ns=(pre.started_ns + 1,) * 2)
    assert pre.finish(repo, log=lambda s: None)
    assert (tmp_path / "args.txt").read_text().split()[:2] == ["build", "--all"]
    stamp = repo / "book" / "_build" / ".covidlib-layout"
    layout, _ = book_pages._layout(repo)
    assert stamp.read_text() == layout
    # the chapter written meanwhile is newer than the stamp (read again), the old one is not
    assert new.stat().st_mtime > stamp.stat().st_mtime > old.stat().st_mtime
    assert not book_pages._html_fresh(repo / "book", stamp)
    # same layout and an HTML index: the next build is incremental, so no prebuild
    (repo / "book" / "_build" / "html").mkdir(parents=True)
    (repo / "book" / "_build" / "html" / "index.html").write_text("")
    assert book_pages.start_html_prebuild(repo, log=lambda s: None) is None


def test_a_failed_prebuild_records_nothing(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(book_pages, "_jupyter_book", lambda: _fake_jupyter_book(tmp_path, 3))
    said: list[str] = []
    pre = book_pages.start_html_prebuild(repo, log=said.append)
    assert pre is not None and not pre.finish(repo, log=said.append)
    assert not (repo / "book" / "_build" / ".covidlib-layout").exists()
    assert "exit 3" in said[-1] and "built in full after the notebooks" in said[-1]


def test_no_prebuild_without_jupyter_book(repo, monkeypatch):
    monkeypatch.setattr(book_pages, "_jupyter_book", lambda: None)
    assert book_pages.start_html_prebuild(repo, log=lambda s: None) is None
