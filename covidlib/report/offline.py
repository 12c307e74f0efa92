"""The book works without a network: every script, style and font comes from its ``_static``.

The JavaScript a page may load (the Jupyter widget HTML manager and RequireJS for widget
views, the anywidget front end, MathJax for equations) is installed from the npm registry
by ``make book`` (``npm ci`` on the committed ``package.json`` / ``package-lock.json``) and
copied by :func:`install_assets` into ``book/_assets/vendor/`` (published as
``_static/vendor/``); ``book/_config.yml`` points
myst-nb (``nb_ipywidgets_js``) and Sphinx (``mathjax_path``) at those copies, and
``book/_assets/widgets-offline.js`` tells the widget manager to load widget modules (and its
fonts) from there too. The folder is not called ``_static``: Jupyter Book adds every ``.js``
and ``.css`` file under ``book/_static`` to every page, which would load all of MathJax
everywhere. After the build, :func:`external_references` lists every ``http(s)://`` URL a
page would fetch (``src``/``href`` of script, link, img, iframe, source tags, and CSS
``url(...)``): the build fails when there is one.

Run as ``python -m covidlib.report.offline NODE_MODULES DEST``.
"""

from __future__ import annotations

import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

__all__ = ["ASSETS", "AssetError", "external_references", "install_assets"]

ASSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    # destination under vendor/ : (source under node_modules/, glob patterns to skip)
    "require.js": ("requirejs/require.js", ()),
    "html-manager": ("@jupyter-widgets/html-manager/dist",
                     ("*.map", "embed.js", "embed.js.LICENSE.txt")),
    "anywidget/index.js": ("anywidget/dist/index.js", ()),
    "mathjax": ("mathjax/es5", ("mml-*.js", "tex-svg*.js", "tex-mml-*.js", "tex-chtml-full*.js",
                                "node-main.js")),
}
"""What :func:`install_assets` copies (the keys are the paths the book's config names)."""

STAMP = ".installed"


class AssetError(RuntimeError):
    """An asset is missing; the message names it and how to get it."""


def install_assets(node_modules: str | Path, dest: str | Path) -> list[Path]:
    """Copy :data:`ASSETS` from ``node_modules`` into ``dest`` (replaced whole, then a stamp
    file is written last, so an interrupted copy is redone next time)."""
    node_modules, dest = Path(node_modules), Path(dest)
    missing = [src for src, _ in ASSETS.values() if not (node_modules / src).exists()]
    if missing:
        raise AssetError(f"{node_modules}: missing {missing}; run `npm ci` in the repository "
                         "root (make book does) to install package-lock.json")
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    out = []
    for target, (src, skip) in ASSETS.items():
        source, to = node_modules / src, tmp / target
        to.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, to, ignore=shutil.ignore_patterns(*skip))
        else:
            shutil.copy2(source, to)
        out.append(dest / target)
    (tmp / STAMP).write_text("\n".join(sorted(ASSETS)) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return out


def assets_ready(dest: str | Path) -> bool:
    """True when :func:`install_assets` completed into ``dest``."""
    return (Path(dest) / STAMP).exists()


_EXTERNAL = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
_CSS_URL = re.compile(r"url\(\s*['\"]?((?:https?:)?//[^'\")\s]+)", re.IGNORECASE)
_LOADS = {"script": ("src",), "link": ("href",), "img": ("src", "srcset"),
          "iframe": ("src",), "source": ("src", "srcset"), "video": ("src", "poster"),
          "audio": ("src",), "embed": ("src",), "object": ("data",)}


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        wanted = _LOADS.get(tag, ())
        values = dict(attrs)
        if tag == "link" and (values.get("rel") or "") in ("canonical", "alternate"):
            return  # not fetched by the browser
        for name in wanted:
            for part in (values.get(name) or "").split(","):
                url = part.strip().split(" ")[0]
                if url and _EXTERNAL.match(url):
                    self.urls.append(f"<{tag} {name}={url}>")
        style = values.get("style") or ""
        self.urls += [f"<{tag} style url({u})>" for u in _CSS_URL.findall(style)]

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.urls += [f"<style> url({u})" for u in _CSS_URL.findall(data)]


def external_references(html_dir: str | Path) -> dict[str, list[str]]:
    """``{page: [what it would fetch from another host]}`` for every HTML and CSS file."""
    html_dir = Path(html_dir)
    found: dict[str, list[str]] = {}
    for page in sorted(html_dir.rglob("*.html")):
        parser = _Refs()
        parser.feed(page.read_text(errors="replace"))
        if parser.urls:
            found[str(page.relative_to(html_dir))] = parser.urls
    for css in sorted(html_dir.rglob("*.css")):
        urls = [f"url({u})" for u in _CSS_URL.findall(css.read_text(errors="replace"))]
        if urls:
            found[str(css.relative_to(html_dir))] = urls
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m covidlib.report.offline NODE_MODULES DEST", file=sys.stderr)
        return 2
    try:
        paths = install_assets(args[0], args[1])
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"offline book assets in {args[1]}: {', '.join(p.name for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
