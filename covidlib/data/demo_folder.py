"""A small "your own data" folder made from the phantom: PNG slices, 0/255 masks, a volume CSV.

What a user typically brings (issue 17): a folder of 8-bit axial CT slices, one PNG per
slice, an infection mask and a lung mask per slice stored as 0/255 PNGs, and a table that
says which volume (patient) each slice belongs to. :func:`write_demo_folder` writes exactly
that from a few small volumes of the synthetic phantom (:mod:`covidlib.data.phantom`), so the
"Use your own data" chapter, the README and the tests can walk through the whole path
(minimal manifest -> ``covidlib data check`` -> ``open_dataset`` -> a per-volume split -> a
P2 training) without any real data. Layout::

    <folder>/images/<slice>.png   8-bit slice (lung window of the phantom's HU)
    <folder>/masks/<slice>.png    infection mask, 0 = background, 255 = infection
    <folder>/lungs/<slice>.png    lung mask, 0 / 255
    <folder>/volumes.csv          columns slice,volume (one row per slice, in slice order)

The volumes come from two phantom "scanners" (site profiles with their own noise, gain and
blur): :attr:`DemoFolder.sites` says which, so a model trained on one scanner can be scored
on the held-out volumes of the same scanner and on the other scanner's volumes.
:func:`demo_manifest` is the minimal ``access: local`` manifest of such a folder.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from covidlib.data.phantom import PhantomConfig, generate_case
from covidlib.data.preprocess import hu_to_uint8

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DemoFolder", "demo_manifest", "demo_splits", "summary", "write_demo_folder"]

SUBDIRS = ("images", "masks", "lungs")
LESION_COUNT = (2, 6)
LESION_RADIUS_MM = (30.0, 70.0)
"""Fewer, larger lesions than the phantom's defaults: at 64 px a pixel is about 5 mm, and
the default 12 mm lesions would be 2-pixel specks that no small model learns in seconds."""


@dataclass(frozen=True)
class DemoFolder:
    """What :func:`write_demo_folder` wrote: the folder, each volume's slice ids (in slice
    order) and its scanner (``"A"`` or ``"B"``)."""

    folder: Path
    volumes: dict[str, tuple[str, ...]]
    sites: dict[str, str]

    @property
    def n_slices(self) -> int:
        return sum(len(s) for s in self.volumes.values())

    def site_volumes(self, site: str) -> list[str]:
        """Volume ids of scanner ``site``, in order."""
        return [v for v, s in self.sites.items() if s == site]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _pick(z_with_lung: np.ndarray, n: int) -> list[int]:
    """``n`` evenly spaced slice indices out of ``z_with_lung`` (all of them if fewer)."""
    if len(z_with_lung) <= n:
        return [int(z) for z in z_with_lung]
    at = np.linspace(0, len(z_with_lung) - 1, n).round().astype(int)
    return [int(z_with_lung[i]) for i in at]


def _check_args(n_volumes: int, slices_per_volume: int, size: int, per_site: int) -> None:
    limits = {"n_volumes": (n_volumes, 2), "slices_per_volume": (slices_per_volume, 1),
              "size": (size, 48), "volumes_per_site": (per_site, 1)}
    for name, (value, lo) in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"write_demo_folder: {name}={value!r}, expected an integer >= {lo}")
    if per_site >= n_volumes:
        raise ValueError(f"write_demo_folder: volumes_per_site={per_site} leaves no volume for "
                         f"scanner B (n_volumes={n_volumes})")


def write_demo_folder(folder: str | Path, n_volumes: int = 6, slices_per_volume: int = 8,
                      size: int = 64, volumes_per_site: int = 4, seed: int = 0) -> DemoFolder:
    """Write a small folder of PNG slices with 0/255 masks and a ``volumes.csv`` into
    ``folder`` (created; existing files of the same names are overwritten).

    ``n_volumes`` phantom volumes of ``size`` x ``size`` pixels (``volumes_per_site`` from
    scanner A, the rest from scanner B), each cut to ``slices_per_volume`` evenly spaced
    slices that show lung. Slice ids are global 4-digit numbers (``0000``, ``0001``, ...),
    volume ids ``patient01``, ``patient02``, ... Deterministic in the arguments.
    """
    _check_args(n_volumes, slices_per_volume, size, volumes_per_site)
    folder = Path(folder)
    for sub in SUBDIRS:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    cfg = PhantomConfig(n_cases=n_volumes, shape=(16, size, size), n_sites=2,
                        cases_per_site=volumes_per_site, p_clean_case=0.0, seed=seed,
                        lesion_count=LESION_COUNT, lesion_radius_mm=LESION_RADIUS_MM)
    volumes: dict[str, tuple[str, ...]] = {}
    sites: dict[str, str] = {}
    rows: list[tuple[str, str]] = []
    for i in range(n_volumes):
        case = generate_case(cfg, i)
        vid = f"patient{i + 1:02d}"
        assert case.mask is not None and case.lung is not None
        picked = _pick(np.flatnonzero(case.lung.any(axis=(1, 2))), slices_per_volume)
        image = hu_to_uint8(case.image)
        ids = []
        for z in picked:
            sid = f"{len(rows):04d}"
            (folder / "images" / f"{sid}.png").write_bytes(_png(image[z]))
            (folder / "masks" / f"{sid}.png").write_bytes(_png((case.mask[z] > 0) * 255))
            (folder / "lungs" / f"{sid}.png").write_bytes(_png((case.lung[z] > 0) * 255))
            rows.append((sid, vid))
            ids.append(sid)
        volumes[vid] = tuple(ids)
        sites[vid] = "AB"[min(cfg.site_of(i), 1)]
    with open(folder / "volumes.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["slice", "volume"])
        w.writerows(rows)
    return DemoFolder(folder, volumes, sites)


def summary(demo: DemoFolder) -> pd.DataFrame:
    """The folder as a user sees it, one row per volume of its ``volumes.csv``: the scanner,
    the CSV's slice count and how many of those slices have a PNG in ``images/``, ``masks/``
    and ``lungs/`` (the same number everywhere in a complete folder)."""
    import pandas as pd

    path = demo.folder / "volumes.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no volumes.csv (write the folder with "
                                "write_demo_folder first)")
    table = pd.read_csv(path, dtype=str)
    if not {"slice", "volume"} <= set(table.columns):
        raise ValueError(f"{path}: expected columns slice,volume, got {list(table.columns)}")
    rows = []
    for volume, group in table.groupby("volume", sort=True):
        ids = list(group["slice"])
        row: dict[str, object] = {"volume": volume, "scanner": demo.sites.get(volume, "?"),
                                  "slices": len(ids)}
        for sub in SUBDIRS:
            row[f"{sub}/"] = sum((demo.folder / sub / f"{i}.png").is_file() for i in ids)
        rows.append(row)
    return pd.DataFrame(rows).set_index("volume")


def demo_splits(demo: DemoFolder) -> dict[str, dict[str, list[str]]]:
    """Two per-volume splits of a demo folder that share their training volumes:
    ``by-volume`` (scanner A: all but the last two volumes train, the next validates, the last
    is the test) and ``other-scanner`` (same train / val, scanner B's volumes are the test)."""
    a, b = demo.site_volumes("A"), demo.site_volumes("B")
    if len(a) < 3 or not b:
        raise ValueError(f"demo_splits: need >= 3 scanner-A volumes and >= 1 scanner-B volume, "
                         f"got {len(a)} and {len(b)}")
    train, val = a[:-2], [a[-2]]
    return {"by-volume": {"train": train, "val": val, "test": [a[-1]]},
            "other-scanner": {"train": train, "val": val, "test": b}}


def _ids(ids: list[str]) -> str:
    return "[" + ", ".join(ids) + "]"


def demo_manifest(name: str, demo: DemoFolder | None = None) -> str:
    """The minimal ``access: local`` manifest (YAML text) of a demo folder named ``name``
    (the folder sits beside the manifest as ``<name>/``). Without ``demo`` it has no splits;
    with it, the two per-volume splits of :func:`demo_splits`."""
    text = (f"name: {name}\n"
            "access: local\n"
            "layout:\n"
            "  format: image-slices\n"
            "  groups:\n"
            "    - name: slices\n"
            '      image: "images/{case}.png"\n'
            '      mask: "masks/{case}.png"\n'
            '      lung: "lungs/{case}.png"\n'
            "      volumes: {csv: volumes.csv}\n"
            "label_map: {0: background, 1: infection}\n"
            "mask_scale: 255\n")
    if demo is None:
        return text
    text += "splits:\n"
    for split, parts in demo_splits(demo).items():
        text += f"  {split}:\n    method: by-case\n"
        text += "".join(f"    {p}: {_ids(ids)}\n" for p, ids in parts.items())
    return text
