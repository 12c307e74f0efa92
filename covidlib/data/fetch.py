"""Download, verify and unpack a dataset described by a manifest (pooch + zipfile/tarfile).

``fetch(name)`` makes ``<data_root>/<local_dir>`` complete and returns it:

* ``access: download`` -- each file of ``files:`` is downloaded with :func:`pooch.retrieve`
  (tqdm progress bar) into a hidden staging folder inside the dataset folder, its sha256 is
  checked, and only then is it moved into place (``os.replace``). Archives are unpacked
  into a temporary sibling folder which is moved into place once complete. On any failure
  the staging/temporary folders are removed, so nothing partial is left.
* Checksums: the manifest's ``sha256`` when known; otherwise the first download is trusted
  (trust on first use, logged as a warning) and its sha256 recorded in
  ``<data_root>/<local_dir>/.checksums.json``; later downloads are verified against it.
* Resuming: files already downloaded and unpacked (recorded in the lock file, all members
  present) are skipped without any network access; an archive already in the folder (e.g.
  placed by hand) is verified and unpacked instead of downloaded. An interrupted transfer of
  a single file restarts that file (pooch does not resume partial transfers).
* ``access: manual`` -- the folder is returned if complete, otherwise :class:`DataError`
  with the URLs, the manual instructions and the target folder.
* ``access: generated`` -- :func:`covidlib.data.phantom.ensure_synthetic` (given the data
  root) writes ``<data_root>/<local_dir>``.
"""

from __future__ import annotations

import ftplib
import inspect
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from covidlib.cache import atomic_write_text
from covidlib.data.errors import DataError
from covidlib.data.manifest import (
    FileSpec,
    Manifest,
    data_search_path,
    file_sha256,
    how_to_get,
    load_manifest,
    locate,
    missing_files,
)

__all__ = ["LOCK_NAME", "fetch", "read_lock"]

LOCK_NAME = ".checksums.json"
log = logging.getLogger(__name__)


def _network_errors() -> tuple[type[BaseException], ...]:
    import requests

    return (
        requests.exceptions.RequestException,
        urllib.error.URLError,
        ConnectionError,
        TimeoutError,
        ftplib.Error,
    )


# --------------------------------------------------------------------------- lock file
def read_lock(folder: str | Path) -> dict[str, Any]:
    """The ``.checksums.json`` of a dataset folder ({"format": 1, "files": {...}})."""
    p = Path(folder) / LOCK_NAME
    if not p.is_file():
        return {"format": 1, "files": {}}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(p, f"unreadable lock file ({e}); delete it to re-record") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise DataError(p, "not a covidlib lock file (no 'files' mapping); delete it")
    return data


def _write_lock(folder: Path, lock: dict[str, Any]) -> None:
    atomic_write_text(folder / LOCK_NAME, json.dumps(lock, indent=1, sort_keys=True))


# --------------------------------------------------------------------------- download
def _by_hand(m: Manifest, folder: Path) -> str:
    return how_to_get(m, folder) + f" Then run fetch({m.name!r}) again to verify and unpack."


def _download(m: Manifest, f: FileSpec, folder: Path, expected: str | None, progress: bool) -> str:
    """Download ``f`` into ``folder`` through a staging folder; return its sha256."""
    import pooch

    assert f.url is not None
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    try:
        try:
            pooch.retrieve(
                f.url,
                known_hash=None,
                fname=f.name,
                path=staging,
                downloader=pooch.downloaders.choose_downloader(f.url, progressbar=progress),
            )
        except _network_errors() as e:
            why = f"download of {f.name} failed ({type(e).__name__}: {e})."
            raise DataError(f.url, f"{why} {_by_hand(m, folder)}") from None
        got = staging / f.name
        actual = file_sha256(got)
        if expected is not None and actual != expected:
            raise DataError(
                folder / f.name,
                f"sha256 mismatch for the download from {f.url}: expected {expected}, "
                f"got {actual}; the downloaded file was deleted. If the source changed on "
                f"purpose, update the manifest (or delete {LOCK_NAME}).",
            )
        os.replace(got, folder / f.name)
        return actual
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- unpacking
def _safe_member(name: str, archive: Path) -> str:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise DataError(
            archive, f"unsafe member path {name!r} (absolute or '..'); not unpacked, deleted"
        )
    return p.as_posix()


def _extract(archive: Path, kind: str, dest: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    if kind == "zip":
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()
            for info in infos:
                _safe_member(info.filename, archive)
            bar = tqdm(infos, desc=f"unzip {archive.name}", unit="file", disable=not progress)
            for info in bar:
                z.extract(info, dest)
        return
    with tarfile.open(archive) as t:
        members = t.getmembers()
        for mem in members:
            _safe_member(mem.name, archive)
            if not (mem.isfile() or mem.isdir()):
                raise DataError(archive, f"member {mem.name!r} is a link or device; not unpacked")
        for mem in tqdm(members, desc=f"untar {archive.name}", unit="file", disable=not progress):
            t.extract(mem, dest, filter="data")


def _move_tree(src: Path, dst: Path) -> None:
    """Move the contents of ``src`` into ``dst`` (whole folders are renamed when new)."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and target.is_dir():
            _move_tree(entry, target)
        elif entry.is_dir() or not target.is_dir():
            os.replace(entry, target)
        else:
            raise DataError(target, f"is a folder but the archive has a file {entry.name!r}")


def _unpack(f: FileSpec, archive: Path, folder: Path, progress: bool) -> list[str]:
    """Unpack atomically into ``folder/extract_to``; return the members (relative paths)."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder))
    try:
        try:
            _extract(archive, f.unpack, tmp, progress)
        except DataError:  # unsafe member: do not keep the archive around
            archive.unlink(missing_ok=True)
            raise
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
            archive.unlink(missing_ok=True)
            raise DataError(
                archive, f"not a valid {f.unpack} archive ({e}); it was deleted, fetch again"
            ) from None
        root = tmp
        entries = list(tmp.iterdir())
        sub = PurePosixPath(f.extract_to).name
        # an archive that already holds the extract_to folder is not nested twice
        if f.extract_to != "." and len(entries) == 1 and entries[0].is_dir():
            if entries[0].name == sub:
                root = entries[0]
        members = sorted(
            (PurePosixPath(f.extract_to) / p.relative_to(root).as_posix()).as_posix()
            for p in root.rglob("*")
            if p.is_file()
        )
        if not members:
            raise DataError(archive, "archive holds no files")
        _move_tree(root, folder / f.extract_to)
        return members
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- one file
def _done(entry: dict[str, Any] | None, f: FileSpec, folder: Path) -> bool:
    if not entry or (f.sha256 is not None and entry.get("sha256") != f.sha256):
        return False
    members = entry.get("members") or []
    return bool(members) and all((folder / p).is_file() for p in members)


def _fetch_one(m: Manifest, f: FileSpec, folder: Path, lock: dict, progress: bool) -> None:
    entry = lock["files"].get(f.name)
    if _done(entry, f, folder):
        log.debug("%s: %s already present, skipped", m.name, f.name)
        return
    recorded = (entry or {}).get("sha256")
    expected = f.sha256 or recorded
    target = folder / f.name
    actual = None
    if target.is_file():
        actual = file_sha256(target)
        if expected is not None and actual != expected:
            log.warning(
                "%s: local %s has sha256 %s, expected %s; downloading it again (the local copy "
                "is replaced only once a verified download is complete)",
                m.name, target, actual, expected,
            )  # fmt: skip
            actual = None
    if actual is None:
        if f.url is None:
            raise DataError(target, f"missing and has no URL. {_by_hand(m, folder)}")
        actual = _download(m, f, folder, expected, progress)
    if expected is None:
        log.warning(
            "%s: the manifest %s has no sha256 for %s; trusting the first copy (trust on first "
            "use) and recording sha256 %s in %s; later fetches are verified against it",
            m.name, m.path, f.name, actual, folder / LOCK_NAME,
        )  # fmt: skip
    members = [f.name] if f.unpack == "none" else _unpack(f, target, folder, progress)
    lock["files"][f.name] = {
        "sha256": actual,
        "url": f.url,
        "trusted": "manifest" if f.sha256 else ("lock" if recorded else "first-use"),
        "unpack": f.unpack,
        "members": members,
    }
    _write_lock(folder, lock)


# --------------------------------------------------------------------------- public
def fetch(
    name_or_manifest: Manifest | str | os.PathLike,
    data_root: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Make the dataset complete under ``data_root`` (default: first entry of
    :func:`~covidlib.data.manifest.data_search_path`) and return its folder."""
    m = name_or_manifest if isinstance(name_or_manifest, Manifest) else load_manifest(
        name_or_manifest
    )
    root = Path(data_root).expanduser() if data_root is not None else data_search_path()[0]
    folder = root / m.local_dir
    if m.access == "local":
        return locate(m, data_root)  # local data: nothing to fetch, only to find
    if m.access == "manual":
        if folder.is_dir() and not missing_files(m, folder, limit=1):
            return folder
        if data_root is None:
            try:
                return locate(m)
            except DataError:
                pass
        miss = missing_files(m, folder, limit=3)
        raise DataError(
            m.name,
            f"cannot be downloaded automatically (access: manual; registration or a browser "
            f"download is needed); {folder} is missing {', '.join(miss)}. {how_to_get(m, folder)}",
        )
    if m.access == "generated":
        from covidlib.data.phantom import ensure_synthetic

        takes_progress = "progress" in inspect.signature(ensure_synthetic).parameters
        kw = {"progress": progress} if takes_progress else {}
        out = Path(ensure_synthetic(root, **kw))  # writes <root>/<local_dir>, returns it
        for cand in (folder, out):
            if cand.is_dir() and not missing_files(m, cand, limit=1):
                return cand
        miss = missing_files(m, folder, limit=3)
        raise DataError(folder, f"generated data lack {miss} required by manifest {m.path}")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        lock = read_lock(folder)
        for f in m.files:
            _fetch_one(m, f, folder, lock, progress)
    except BaseException:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    miss = missing_files(m, folder, limit=5)
    if miss:
        raise DataError(
            folder,
            f"all files of {m.name} were fetched but the layout of manifest {m.path} is "
            f"incomplete: missing {', '.join(miss)} (the archive layout differs from the manifest)",
        )
    return folder
