"""fetch(): real downloads from a local HTTP server on 127.0.0.1, checksums, unpacking, errors."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import socket
import sys
import tarfile
import threading
import types
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from covidlib.data.errors import DataError
from covidlib.data.fetch import LOCK_NAME, fetch, read_lock
from covidlib.data.manifest import load_manifest

ZIP_FILES = {"img/c1.nii.gz": b"image-one", "img/c2.nii.gz": b"image-two-bytes"}
TAR_FILES = {"c1.nii.gz": b"mask-one", "c2.nii.gz": b"mask-two"}
INSTRUCTIONS = "Copy imgs.zip and masks.tar.gz from the lab share into the dataset folder."


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def make_tar(files: dict[str, bytes], top: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Server:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> serving a folder; counts GETs."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "imgs.zip").write_bytes(make_zip(ZIP_FILES))
    (served / "masks.tar.gz").write_bytes(make_tar(TAR_FILES, top="masks"))
    s = Server(served)
    yield s
    s.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/imgs.zip"


def manifest(tmp_path: Path, base_url: str, zip_sha: str | None, tar_sha: str | None,
             name: str = "toy", files: list | None = None) -> Path:
    d = {
        "name": name, "title": "Toy", "homepage": "https://example.org/toy", "licence": "CC0",
        "citation": "Toy 2024", "access": "download", "local_dir": name,
        "files": files if files is not None else [
            {"name": "imgs.zip", "url": f"{base_url}/imgs.zip", "sha256": zip_sha, "unpack": "zip"},
            {"name": "masks.tar.gz", "url": f"{base_url}/masks.tar.gz", "sha256": tar_sha,
             "unpack": "tar", "extract_to": "masks"},
        ],
        "manual_instructions": INSTRUCTIONS, "intensity": "hu",
        "layout": {"format": "nifti-volumes", "groups": [
            {"name": "all", "image": "img/{case}.nii.gz", "mask": "masks/{case}.nii.gz",
             "cases": ["c1", "c2"]}]},
        "label_map": {0: "background", 1: "infection"}, "infection_labels": [1], "splits": {},
    }  # fmt: skip
    folder = tmp_path / "manifests"
    folder.mkdir(exist_ok=True)
    p = folder / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def all_files(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_good_archives_are_extracted_and_recorded(tmp_path, server, caplog):
    zip_bytes = (server.root / "imgs.zip").read_bytes()
    tar_bytes = (server.root / "masks.tar.gz").read_bytes()
    m = manifest(tmp_path, server.url, sha(zip_bytes), None)
    data = tmp_path / "data"
    with caplog.at_level(logging.WARNING, logger="covidlib.data.fetch"):
        out = fetch(m, data_root=data, progress=False)
    assert out == data / "toy"
    for rel, content in ZIP_FILES.items():
        assert (out / rel).read_bytes() == content
    for rel, content in TAR_FILES.items():  # "masks/" top folder of the tar is not doubled
        assert (out / "masks" / rel).read_bytes() == content
    assert all_files(out) == sorted(
        [LOCK_NAME, "imgs.zip", "masks.tar.gz", *ZIP_FILES, *(f"masks/{r}" for r in TAR_FILES)]
    )
    lock = read_lock(out)
    assert lock["files"]["imgs.zip"]["sha256"] == sha(zip_bytes)
    assert lock["files"]["imgs.zip"]["trusted"] == "manifest"
    assert lock["files"]["masks.tar.gz"] == {
        "sha256": sha(tar_bytes), "url": f"{server.url}/masks.tar.gz", "trusted": "first-use",
        "unpack": "tar", "members": ["masks/c1.nii.gz", "masks/c2.nii.gz"],
    }  # fmt: skip
    tofu = [r.getMessage() for r in caplog.records if "trust on first use" in r.getMessage()]
    assert len(tofu) == 1 and "masks.tar.gz" in tofu[0] and sha(tar_bytes) in tofu[0]
    assert sorted(server.requests) == ["/imgs.zip", "/masks.tar.gz"]


def test_refetch_with_everything_present_does_not_download(tmp_path, server):
    m = manifest(tmp_path, server.url, None, None)
    data = tmp_path / "data"
    fetch(m, data_root=data, progress=False)
    assert len(server.requests) == 2
    fetch(m, data_root=data, progress=False)
    assert len(server.requests) == 2  # nothing downloaded again
    # extracted files deleted but the archive kept: re-unpacked locally, still no download
    (data / "toy" / "masks" / "c2.nii.gz").unlink()
    fetch(m, data_root=data, progress=False)
    assert (data / "toy" / "masks" / "c2.nii.gz").read_bytes() == TAR_FILES["c2.nii.gz"]
    assert len(server.requests) == 2


def test_wrong_checksum_raises_and_leaves_nothing(tmp_path, server):
    zip_bytes = (server.root / "imgs.zip").read_bytes()
    wrong = "0" * 64
    m = manifest(tmp_path, server.url, wrong, None)
    data = tmp_path / "data"
    with pytest.raises(DataError) as e:
        fetch(m, data_root=data, progress=False)
    assert e.value.where == str(data / "toy" / "imgs.zip")
    assert wrong in e.value.reason and sha(zip_bytes) in e.value.reason
    assert "deleted" in e.value.reason
    assert all_files(data) == [] and not (data / "toy").exists()
    assert server.requests == ["/imgs.zip"]


def test_unreachable_url_names_url_and_manual_instructions(tmp_path):
    url = closed_port_url()
    files = [{"name": "imgs.zip", "url": url, "sha256": None, "unpack": "zip"}]
    m = manifest(tmp_path, "unused", None, None, files=files)
    data = tmp_path / "data"
    with pytest.raises(DataError) as e:
        fetch(m, data_root=data, progress=False)
    assert e.value.where == url
    assert INSTRUCTIONS in e.value.reason and str(data / "toy") in e.value.reason
    assert all_files(data) == []


def test_http_404_is_a_download_error(tmp_path, server):
    files = [{"name": "gone.zip", "url": f"{server.url}/gone.zip", "sha256": None, "unpack": "zip"}]
    m = manifest(tmp_path, server.url, None, None, files=files)
    with pytest.raises(DataError) as e:
        fetch(m, data_root=tmp_path / "data", progress=False)
    assert e.value.where == f"{server.url}/gone.zip" and "404" in e.value.reason
    assert all_files(tmp_path / "data") == []


def test_trust_on_first_use_then_tampered_source_is_refused(tmp_path, server):
    tar_bytes = (server.root / "masks.tar.gz").read_bytes()
    m = manifest(tmp_path, server.url, None, None)
    data = tmp_path / "data"
    folder = fetch(m, data_root=data, progress=False)
    recorded = json.loads((folder / LOCK_NAME).read_text())["files"]["masks.tar.gz"]["sha256"]
    assert recorded == sha(tar_bytes)
    for p in sorted(folder.rglob("*"), reverse=True):  # delete everything but the lock file
        if p.name != LOCK_NAME:
            p.unlink() if p.is_file() else p.rmdir()
    tampered = make_tar({"c1.nii.gz": b"EVIL", "c2.nii.gz": b"mask-two"}, top="masks")
    (server.root / "masks.tar.gz").write_bytes(tampered)
    with pytest.raises(DataError) as e:
        fetch(m, data_root=data, progress=False)
    assert e.value.where == str(folder / "masks.tar.gz")
    assert recorded in e.value.reason and sha(tampered) in e.value.reason
    # imgs.zip (unchanged) was fetched and unpacked again; nothing of the tampered tar is left
    assert all_files(folder) == sorted([LOCK_NAME, "imgs.zip", *ZIP_FILES])


def test_archive_placed_by_hand_is_unpacked_without_network(tmp_path):
    data = tmp_path / "data"
    (data / "toy").mkdir(parents=True)
    (data / "toy" / "imgs.zip").write_bytes(make_zip(ZIP_FILES))
    (data / "toy" / "masks.tar.gz").write_bytes(make_tar(TAR_FILES))  # flat tar this time
    m = manifest(tmp_path, closed_port_url().rsplit("/", 1)[0], None, None)
    out = fetch(m, data_root=data, progress=False)
    assert (out / "masks" / "c1.nii.gz").read_bytes() == TAR_FILES["c1.nii.gz"]
    assert read_lock(out)["files"]["imgs.zip"]["trusted"] == "first-use"


def test_corrupt_or_unsafe_archives_leave_nothing(tmp_path, server):
    (server.root / "bad.zip").write_bytes(b"this is not a zip file")
    (server.root / "evil.zip").write_bytes(make_zip({"../escape.txt": b"x"}))
    data = tmp_path / "data"
    for name, why in (("bad.zip", "not a valid zip archive"), ("evil.zip", "unsafe member path")):
        files = [{"name": name, "url": f"{server.url}/{name}", "sha256": None, "unpack": "zip"}]
        m = manifest(tmp_path, server.url, None, None, files=files)
        with pytest.raises(DataError) as e:
            fetch(m, data_root=data, progress=False)
        assert why in e.value.reason
    assert not (tmp_path / "escape.txt").exists() and not (data / "escape.txt").exists()
    assert all_files(data) == []


def test_archive_without_the_manifest_layout_is_reported(tmp_path, server):
    (server.root / "other.zip").write_bytes(make_zip({"elsewhere/c1.nii.gz": b"x"}))
    url = f"{server.url}/other.zip"
    files = [{"name": "other.zip", "url": url, "sha256": None, "unpack": "zip"}]
    m = manifest(tmp_path, server.url, None, None, files=files)
    with pytest.raises(DataError) as e:
        fetch(m, data_root=tmp_path / "data", progress=False)
    assert "img/c1.nii.gz" in e.value.reason and "layout" in e.value.reason


def test_manual_access_explains_or_returns_folder(tmp_path):
    m = load_manifest("covid19-20")
    with pytest.raises(DataError) as e:
        fetch(m, data_root=tmp_path, progress=False)
    msg = str(e.value)
    assert "access: manual" in msg and "https://covid-segmentation.grand-challenge.org/" in msg
    assert "COVID-19-20_v2/Train" in msg and str(tmp_path / "covid19-20") in msg
    d = tmp_path / "covid19-20" / "COVID-19-20_v2" / "Train"
    d.mkdir(parents=True)
    for i in range(199):
        (d / f"volume-covid19-A-{i:04d}_ct.nii.gz").write_bytes(b"")
        (d / f"volume-covid19-A-{i:04d}_seg.nii.gz").write_bytes(b"")
    assert fetch(m, data_root=tmp_path, progress=False) == tmp_path / "covid19-20"


def test_generated_access_calls_the_phantom(tmp_path, monkeypatch):
    calls = []

    def ensure_synthetic(root, cfg=None):
        calls.append(Path(root))
        folder = Path(root) / "synthetic"
        for sub in ("COVID-19-CT-Seg_20cases", "Infection_Mask", "Lung_Mask", "Organ_Mask"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            for i in range(20):
                (folder / sub / f"synth_{i:03d}.nii.gz").write_bytes(b"")
        return folder

    fake = types.ModuleType("covidlib.data.phantom")
    fake.ensure_synthetic = ensure_synthetic
    monkeypatch.setitem(sys.modules, "covidlib.data.phantom", fake)
    assert fetch("synthetic", data_root=tmp_path, progress=False) == tmp_path / "synthetic"
    assert calls == [tmp_path]


@pytest.mark.parametrize("name, nested", [("ma-20", False), ("medseg-9", True)])
def test_shipped_download_manifest_end_to_end(tmp_path, server, name, nested):
    """The real manifest's files/extract_to/layout, served locally (flat or foldered zips)."""
    real = load_manifest(name)
    text = real.path.read_text()
    for f in real.files:  # point the URLs at the local server; our stand-in zips differ
        text = text.replace(f.url, f"{server.url}/{f.name}")
        if f.sha256:
            text = text.replace(f.sha256, "null")
        top = f.extract_to if nested else None
        cases = real.case_ids()
        content = {(f"{top}/" if top else "") + f"{c}.nii.gz": c.encode() for c in cases}
        (server.root / f.name).write_bytes(make_zip(content))
    p = tmp_path / "manifests" / f"{name}.yaml"
    p.parent.mkdir()
    p.write_text(text)
    out = fetch(p, data_root=tmp_path / "data", progress=False)
    m = load_manifest(p)
    assert out == tmp_path / "data" / name
    for g in m.groups:
        for c in g.cases:
            for tpl in (g.image, g.mask, g.lung):
                assert (out / tpl.format(case=c)).read_bytes() == c.encode()
    assert len(server.requests) == len(real.files)


def test_corrupt_local_copy_is_replaced_by_a_verified_download(tmp_path, server):
    zip_bytes = (server.root / "imgs.zip").read_bytes()
    tar_bytes = (server.root / "masks.tar.gz").read_bytes()
    m = manifest(tmp_path, server.url, sha(zip_bytes), sha(tar_bytes))
    folder = tmp_path / "data" / "toy"
    folder.mkdir(parents=True)
    (folder / "imgs.zip").write_bytes(b"truncated")
    fetch(m, data_root=tmp_path / "data", progress=False)
    assert (folder / "imgs.zip").read_bytes() == zip_bytes
    assert sorted(server.requests) == ["/imgs.zip", "/masks.tar.gz"]
