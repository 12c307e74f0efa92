"""The book's pages: plumbing cells hidden, unresolved glue found, the API page and the HTML build.

See the "Plumbing" paragraph of :mod:`covidlib.report.book`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from covidlib.cache import atomic_write_text
from covidlib.report.book_cache import _sha, source_digest
from covidlib.report.book_plan import BookError

PLUMBING_TAG = "plumbing"
_PLUMBING_CALL = re.compile(
    r"\bglue\(|\bscorecard\.record\w*\(|\brecord_scorecard\w*\(|\bprovenance\.provenance\("
    r"|\bperf_counter\(|\brecord_timings\(|\bnotebook_timer\(|\bwrite_csv\(")
_IMPORT = re.compile(r"^(from\s+\S+\s+import\s|import\s)")


def plumbing_kind(cell: Mapping[str, Any]) -> str | None:
    """``"remove-cell"``, ``"remove-input"`` or ``None`` for one notebook cell (see the module
    docstring)."""
    if cell.get("cell_type") != "code":
        return None
    tags = set(cell.get("metadata", {}).get("tags", []))
    source = cell.get("source", "")
    source = "".join(source) if isinstance(source, list) else str(source)
    lines = [ln.strip() for ln in source.splitlines() if ln.strip()]
    if (PLUMBING_TAG in tags or tags & {"parameters", "injected-parameters"}
            or (lines and lines[0].lower().startswith("# plumbing"))):
        return "remove-cell"
    found, rest, depth, inside = False, 0, 0, False
    for ln in (ln for ln in lines if not ln.startswith("#")):
        if depth <= 0:  # a new statement
            inside = bool(_PLUMBING_CALL.search(ln))
            found = found or inside
            rest += not (inside or _IMPORT.match(ln))
        # the arguments of a call spread over several lines belong to its statement
        depth += sum(ln.count(c) for c in "([{") - sum(ln.count(c) for c in ")]}")
    if not found:
        return None
    return "remove-cell" if not rest else "remove-input"


_GLUE_ROLE = re.compile(r"\{glue(?::\w+)?\}`([^`:]+)|^[`:]{3,}\{glue(?::\w+)?\}\s+(\S+)",
                        re.MULTILINE)


def unresolved_glue(nb: Any) -> list[str]:
    """The glue keys that markdown cells of executed notebook ``nb`` cite (``{glue:text}`key```,
    ``{glue}`` roles and directives) but no code cell's output glued (``myst_nb.glue``): the
    references Jupyter Book would leave empty on the page. Sorted, empty when all resolve."""
    glued = {o.get("metadata", {}).get("scrapbook", {}).get("name")
             for c in nb.cells if c.get("cell_type") == "code" for o in c.get("outputs", [])}
    cited = set()
    for cell in nb.cells:
        if cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else str(source)
            cited |= {a or b for a, b in _GLUE_ROLE.findall(source)}
    return sorted(cited - glued)


def hide_plumbing(nb: Any) -> int:
    """Tag the plumbing cells of notebook ``nb`` (in place) so that Jupyter Book leaves their
    code (and, for pure plumbing, their output) off the page; returns how many were tagged."""
    n = 0
    for cell in nb.cells:
        kind = plumbing_kind(cell)
        if kind is None:
            continue
        tags = list(cell.metadata.get("tags", []))
        if kind not in tags:
            cell.metadata["tags"] = [*tags, kind]
            n += 1
    return n


def ensure_offline_assets(repo: Path, log: Callable[[str], None] = print) -> Path:
    """``book/_assets/vendor`` (the JavaScript pages load), copied from ``node_modules``."""
    from covidlib.report import offline

    dest = repo / "book" / "_assets" / "vendor"
    if offline.assets_ready(dest):
        return dest
    node_modules = repo / "node_modules"
    if not node_modules.is_dir():
        raise BookError(f"{dest}: the book's JavaScript is not installed; run `npm ci` in "
                        f"{repo} (make book does) so the pages need no network")
    try:
        offline.install_assets(node_modules, dest)
    except offline.AssetError as exc:
        raise BookError(str(exc)) from exc
    log(f"[book] offline assets copied to {dest}")
    return dest


API_PAGE = "api.md"


def public_modules() -> list[str]:
    """Every public module of the ``covidlib`` package (no ``_private`` part, no
    ``__main__``), sorted."""
    import pkgutil

    import covidlib

    names = ["covidlib"] + [m.name for m in pkgutil.walk_packages(covidlib.__path__,
                                                                    "covidlib.")]
    return sorted(n for n in names if not any(p.startswith("_") for p in n.split(".")))


def api_page_text(modules: list[str] | None = None) -> str:
    """``book/api.md``: one section per public module, its functions and classes with their
    docstrings (Sphinx autodoc, offline: it imports the installed package)."""
    parts = ["# API reference\n",
             "Every public module of `covidlib` with its classes and functions, as their "
             "docstrings describe them. This page is generated by `covidlib book` "
             "(`covidlib.report.book.api_page_text`) from the installed sources.\n"]
    import importlib.util

    for name in modules if modules is not None else public_modules():
        spec = importlib.util.find_spec(name)
        # a package re-exports its modules' names: documented there, not indexed twice; what
        # the package defines itself is indexed here (autofunction / autoclass)
        package = spec is not None and spec.submodule_search_locations is not None
        own = package_own_members(name) if package else []
        parts.append(f"## `{name}`\n\n```{{eval-rst}}\n.. automodule:: {name}\n"
                     "   :members:\n   :undoc-members:\n   :show-inheritance:\n"
                     + ("   :no-index:\n" if package else "")
                     + (f"   :exclude-members: {', '.join(n for n, _ in own)}\n" if own else "")
                     + "".join(f"\n.. auto{kind}:: {name}.{n}\n" + (
                         "   :members:\n   :undoc-members:\n   :show-inheritance:\n"
                         if kind == "class" else "") for n, kind in own)
                     + "```\n")
    return "\n".join(parts)


def package_own_members(name: str) -> list[tuple[str, str]]:
    """``(name, "function" | "class")`` of the public functions and classes package ``name``
    defines itself (in its ``__init__``; in ``__all__`` when it has one), not re-exported."""
    import importlib
    import inspect

    module = importlib.import_module(name)
    listed = getattr(module, "__all__", None)
    out = []
    for attr in listed if listed is not None else sorted(vars(module)):
        obj = getattr(module, attr, None)
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            out.append((attr, "function" if inspect.isfunction(obj) else "class"))
    return out


def write_api_page(repo: Path) -> Path:
    """Write ``book/api.md`` when its text changed (an unchanged page keeps Sphinx's
    incremental build incremental)."""
    path = Path(repo) / "book" / API_PAGE
    text = api_page_text()
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)
    return path


def _html_fresh(book: Path, stamp: Path) -> bool:
    """Whether no source of the book (pages, executed copies, assets, configuration) is newer
    than the last successful HTML build (its ``stamp``)."""
    built = stamp.stat().st_mtime_ns
    for folder, dirs, files in os.walk(book):
        dirs[:] = [d for d in dirs if d not in ("_build",) and not d.startswith(".")]
        for name in files:
            if os.stat(os.path.join(folder, name)).st_mtime_ns > built:
                return False
    return True


def _jupyter_book() -> str | None:
    return shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which(
        "jupyter-book")


def _layout(repo: Path) -> tuple[str, bool]:
    """The digest of what makes every page stale (navigation, configuration, the covidlib
    sources: the API page's docstrings) and whether the last HTML build had another one."""
    html = repo / "book" / "_build" / "html"
    stamp = repo / "book" / "_build" / ".covidlib-layout"
    layout = hashlib.sha256("".join(
        [*(_sha(repo / "book" / n) or "" for n in ("_toc.yml", "_config.yml")),
         source_digest()]).encode()).hexdigest()
    same_layout = stamp.exists() and stamp.read_text() == layout
    return layout, not (html / "index.html").exists() or not same_layout


class HtmlPrebuild:
    """A whole HTML build run in the background while the notebooks execute (see
    :func:`start_html_prebuild`); :meth:`finish` waits for it."""

    def __init__(self, proc: subprocess.Popen, layout: str, started_ns: int, log_path: Path):
        self.proc, self.layout, self.started_ns, self.log_path = proc, layout, started_ns, log_path

    def finish(self, repo: Path, log: Callable[[str], None] = print) -> bool:
        """Wait for the build. On success, record its layout (the final :func:`build_html` is
        then incremental) and mark every executed copy written since the prebuild started as
        changed, so Sphinx reads it again even if it replaced a page while Sphinx read it."""
        code = self.proc.wait()
        if code != 0:
            log(f"[book] background HTML build failed (exit {code}, see {self.log_path}); "
                "the HTML is built in full after the notebooks")
            return False
        stamp = repo / "book" / "_build" / ".covidlib-layout"
        atomic_write_text(stamp, self.layout)
        now = max(time.time(), stamp.stat().st_mtime + 0.01)  # newer than the stamp
        for nb in (repo / "book" / "_generated").glob("*.ipynb"):
            if nb.stat().st_mtime_ns >= self.started_ns:
                os.utime(nb, (now, now))
        return True


def start_html_prebuild(repo: Path, log: Callable[[str], None] = print) -> HtmlPrebuild | None:
    """Start the whole HTML build now, in the background, when the next one would be a full
    build (the covidlib sources, the navigation or the configuration changed); else None.

    The full build's cost is the API page (autodoc of every module: most of it, on one core);
    done while the notebooks execute, the build after them reads only the chapters that
    changed (:func:`build_html`). Pages of chapters not yet executed are built from their
    last executed copy, or left out with a warning when there is none.
    """
    exe = _jupyter_book()
    if exe is None:
        return None
    try:
        ensure_offline_assets(repo, log)
    except BookError:
        return None  # build_html reports it
    write_api_page(repo)
    layout, full = _layout(repo)
    if not full:
        return None
    build = repo / "book" / "_build"
    build.mkdir(parents=True, exist_ok=True)
    log_path = build / ".prebuild.log"
    started_ns = time.time_ns()
    with open(log_path, "w") as out:
        proc = subprocess.Popen([exe, "build", "--all", str(repo / "book"), "--builder", "html"],
                                cwd=repo, stdout=out, stderr=subprocess.STDOUT)
    log(f"[book] HTML build started in the background (log: {log_path})")
    return HtmlPrebuild(proc, layout, started_ns, log_path)


def build_html(repo: Path, log: Callable[[str], None] = print) -> Path:
    """``jupyter-book build book`` (Sphinx, offline); returns the HTML folder.

    Fails (``BookError``) when a page would fetch anything from another host.
    """
    from covidlib.report.offline import external_references

    exe = _jupyter_book()
    if exe is None:
        raise BookError("jupyter-book is not installed: run `make book` (installs the book extra)")
    ensure_offline_assets(repo, log)
    write_api_page(repo)
    # --all when the navigation, the configuration or the covidlib sources (the API page's
    # docstrings) changed (an incremental Sphinx build
    # keeps stale navigation when only book/_toc.yml changed); otherwise Sphinx rewrites only
    # the pages whose executed copy changed
    html = repo / "book" / "_build" / "html"
    stamp = repo / "book" / "_build" / ".covidlib-layout"
    layout, full = _layout(repo)
    if not full and _html_fresh(repo / "book", stamp):
        log("[book] HTML up to date: no page changed since the last build")
        return html
    cmd = [exe, "build", *(["--all"] if full else []), str(repo / "book"), "--builder", "html"]
    log(f"[book] {' '.join(cmd)}")
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BookError(f"jupyter-book build failed (exit {proc.returncode}):\n"
                        f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    atomic_write_text(stamp, layout)
    external = external_references(html)
    if external:
        listing = "\n".join(f"  {page}: {', '.join(urls[:5])}" for page, urls in external.items())
        raise BookError(f"{html}: pages reference other hosts (the book must work offline):\n"
                        f"{listing}")
    return html
