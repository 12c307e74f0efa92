"""The book's JavaScript is copied from node_modules, and pages that would fetch from another
host are found."""

from pathlib import Path

import pytest

from covidlib.report import offline
from covidlib.report.book import BookError, ensure_offline_assets

REPO = Path(__file__).resolve().parents[1]


def _fake_node_modules(root: Path) -> Path:
    nm = root / "node_modules"
    for rel in ("requirejs/require.js", "anywidget/dist/index.js",
                "@jupyter-widgets/html-manager/dist/embed-amd.js",
                "@jupyter-widgets/html-manager/dist/embed-amd.js.map",
                "@jupyter-widgets/html-manager/dist/embed.js",
                "@jupyter-widgets/html-manager/dist/abc.woff2",
                "mathjax/es5/tex-chtml.js", "mathjax/es5/tex-svg.js",
                "mathjax/es5/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff"):
        (nm / rel).parent.mkdir(parents=True, exist_ok=True)
        (nm / rel).write_text(f"// {rel}\n")
    return nm


def test_install_copies_what_the_config_names_and_skips_the_rest(tmp_path):
    nm = _fake_node_modules(tmp_path)
    dest = tmp_path / "book" / "_assets" / "vendor"
    offline.install_assets(nm, dest)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == [".installed", "anywidget/index.js", "html-manager/abc.woff2",
                     "html-manager/embed-amd.js", "mathjax/output/chtml/fonts/woff-v2/"
                     "MathJax_Main-Regular.woff", "mathjax/tex-chtml.js", "require.js"]
    assert offline.assets_ready(dest)
    # book/_config.yml names exactly these files
    config = (REPO / "book" / "_config.yml").read_text()
    for rel in ("vendor/require.js", "vendor/html-manager/embed-amd.js",
                "vendor/mathjax/tex-chtml.js"):
        assert rel in config
        assert (dest / rel.removeprefix("vendor/")).exists()
    assert (REPO / "book" / "_assets" / "widgets-offline.js").exists()


def test_missing_packages_name_the_folder_and_the_fix(tmp_path):
    with pytest.raises(offline.AssetError, match=r"missing \['requirejs/require.js'.*npm ci"):
        offline.install_assets(tmp_path / "node_modules", tmp_path / "vendor")
    (tmp_path / "book").mkdir()
    with pytest.raises(BookError, match="run `npm ci`"):
        ensure_offline_assets(tmp_path, log=lambda s: None)
    _fake_node_modules(tmp_path)
    assert ensure_offline_assets(tmp_path, log=lambda s: None) == (
        tmp_path / "book" / "_assets" / "vendor")


def test_external_references_by_hand(tmp_path):
    (tmp_path / "_static").mkdir()
    (tmp_path / "ok.html").write_text(
        '<html><head><script src="_static/a.js"></script>'
        '<link rel="stylesheet" href="_static/b.css">'
        '<link rel="canonical" href="https://example.org/ok.html">'
        '<script>const x = "https://unpkg.com/thebe";</script></head>'
        '<body><a href="https://github.com/x">a link is not a fetch</a>'
        '<img src="data:image/png;base64,AAAA"></body></html>')
    (tmp_path / "bad.html").write_text(
        '<html><head><script src="https://cdn.jsdelivr.net/npm/x.js"></script>'
        '<link href="//fonts.example.com/f.css" rel="stylesheet">'
        '<style>body { background: url("https://example.org/bg.png") }</style></head>'
        '<body><img srcset="a.png 1x, https://example.org/b.png 2x"></body></html>')
    (tmp_path / "_static" / "c.css").write_text("@font-face { src: url(https://x.org/f.woff) }")
    assert offline.external_references(tmp_path) == {
        "bad.html": ["<script src=https://cdn.jsdelivr.net/npm/x.js>",
                     "<link href=//fonts.example.com/f.css>",
                     "<style> url(https://example.org/bg.png)",
                     "<img srcset=https://example.org/b.png>"],
        "_static/c.css": ["url(https://x.org/f.woff)"],
    }
