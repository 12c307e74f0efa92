"""Tests of the synthetic thorax CT phantom (covidlib.data.phantom)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covidlib.data.errors import DataError
from covidlib.data.phantom import (
    GENERATOR_VERSION,
    IMAGE_DIR,
    INFECTION_DIR,
    LUNG_DIR,
    META_NAME,
    ORGAN_DIR,
    ORGAN_LABELS,
    PhantomConfig,
    SiteProfile,
    case_id,
    default_sites,
    ensure_synthetic,
    generate_case,
    write_dataset,
)

TINY = PhantomConfig(n_cases=3, shape=(12, 64, 64), cases_per_site=1, seed=7)
DIRS = (IMAGE_DIR, INFECTION_DIR, LUNG_DIR, ORGAN_DIR)


@pytest.fixture(scope="module")
def tiny_cases():
    return [generate_case(TINY, i) for i in range(TINY.n_cases)]


def _read_back(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.dtype]:
    """Read like covidlib.data.readers: canonical orientation, (x, y, z) -> (z, y, x)."""
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asanyarray(img.dataobj)
    return data.transpose(2, 1, 0), tuple(float(v) for v in img.header.get_zooms()), data.dtype


def _air_region(case) -> np.ndarray:
    """(H, W) mask of pure air: > 150 mm anterior of the grid centre, inside the FOV circle."""
    h, w = case.image.shape[1:]
    hh, ww = np.mgrid[0:h, 0:w]
    y_mm = (hh - (h - 1) / 2) * case.spacing[1]
    in_fov = (hh - (h - 1) / 2) ** 2 + (ww - (w - 1) / 2) ** 2 < (w / 2 - 1) ** 2
    return (y_mm > 150.0) & in_fov


# --------------------------------------------------------------------------- generation
def test_deterministic_by_seed_and_independent_of_n_cases(tiny_cases):
    again = generate_case(TINY, 1)
    for key in ("image", "mask", "lung", "organs"):
        np.testing.assert_array_equal(getattr(again, key), getattr(tiny_cases[1], key))
    assert again.spacing == tiny_cases[1].spacing
    # case 1 does not depend on how many cases the set has
    bigger = generate_case(replace(TINY, n_cases=5), 1)
    np.testing.assert_array_equal(bigger.image, tiny_cases[1].image)
    np.testing.assert_array_equal(bigger.mask, tiny_cases[1].mask)
    other = generate_case(replace(TINY, seed=8), 1)
    assert not np.array_equal(other.image, tiny_cases[1].image)


def test_case_fields(tiny_cases):
    for i, c in enumerate(tiny_cases):
        assert c.case_id == f"synth_{i:03d}" == case_id(i)
        assert c.intensity == "hu"
        assert c.site == f"site{i}"  # cases_per_site=1
        assert c.image.shape == c.mask.shape == c.lung.shape == c.organs.shape == (12, 64, 64)
        assert c.image.dtype == np.float32
        assert c.mask.dtype == c.lung.dtype == c.organs.dtype == np.uint8
        assert c.meta["infected_slices"] == int((c.mask > 0).any(axis=(1, 2)).sum())
    with pytest.raises(ValueError, match="index = 3"):
        generate_case(TINY, 3)


def test_hu_ranges(tiny_cases):
    for c in tiny_cases:
        im = c.image
        assert np.isfinite(im).all()
        assert im.min() >= -1024 and im.max() <= 3071
        np.testing.assert_array_equal(im, np.rint(im))  # integer HU, as stored in int16
        lung = (c.lung > 0) & (c.mask == 0)
        assert -900 < im[lung].mean() < -600
        assert np.percentile(im[c.organs == 7], 90) > 300  # vertebrae
        assert np.percentile(im[c.organs == 8], 90) > 300  # ribs
        assert -60 < np.median(im[c.organs == 3]) < 100  # heart: blood / muscle
    # site0 of the defaults: gain 1, offset 0, noise 12 HU -> air reads -1000 +- 12
    air = tiny_cases[0].image[:, _air_region(tiny_cases[0])]
    assert air.size > 500
    assert abs(air.mean() + 1000) < 3


def test_labels(tiny_cases):
    for c in tiny_cases:
        assert set(np.unique(c.mask)) <= {0, 1, 2}
        assert set(np.unique(c.lung)) <= {0, 1}
        assert set(np.unique(c.organs)) <= set(ORGAN_LABELS)
        assert not ((c.mask > 0) & (c.lung == 0)).any()  # lesions lie inside the lungs
        np.testing.assert_array_equal(c.lung, np.isin(c.organs, (1, 2)))
        for label in (1, 2, 3, 4, 7, 8, 9, 11):  # lungs, heart, airways, spine, ribs, aorta, liver
            assert (c.organs == label).any(), ORGAN_LABELS[label]
        # patient's left lung (label 1) lies at smaller x than the right lung (RAS+ arrays)
        xs = np.nonzero(c.organs == 1)[2].mean(), np.nonzero(c.organs == 2)[2].mean()
        assert xs[0] < xs[1]


def test_organ_label_map_is_stable():
    assert ORGAN_LABELS == {
        0: "background", 1: "left lung", 2: "right lung", 3: "heart", 4: "airways",
        5: "esophagus", 6: "spinal cord", 7: "spine", 8: "ribs", 9: "aorta", 10: "sternum",
        11: "liver", 12: "soft tissue", 13: "other bone",
    }


def test_some_slices_clean_some_infected():
    cfg = PhantomConfig(n_cases=4, shape=(16, 64, 64), seed=3)
    per_slice = np.concatenate(
        [(generate_case(cfg, i).mask > 0).any(axis=(1, 2)) for i in range(4)]
    )
    assert 0.25 < per_slice.mean() < 0.75
    clean = generate_case(replace(cfg, n_cases=1, p_clean_case=1.0), 0)
    assert clean.mask.max() == 0 and clean.meta["n_lesions"] == 0


def test_site_assignment_gives_sep_split_a_site_shift():
    cfg = PhantomConfig()
    sites = [cfg.site_of(i) for i in range(20)]
    assert sites == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    train, test = set(sites[:15]), set(sites[16:])
    assert test == {3} and not (train & test)


def test_site_noise_and_spacing():
    sites = (
        SiteProfile(noise_hu=5.0, gain=1.0, offset_hu=100.0, blur_mm=0.5, fov_mm=380.0,
                    slice_thickness=1.0),
        SiteProfile(noise_hu=40.0, gain=0.9, offset_hu=100.0, blur_mm=1.5, fov_mm=420.0,
                    slice_thickness=2.0),
    )
    cfg = PhantomConfig(n_cases=2, shape=(12, 64, 64), n_sites=2, sites=sites,
                        cases_per_site=1, seed=1)
    a, b = generate_case(cfg, 0), generate_case(cfg, 1)
    assert (a.site, b.site) == ("site0", "site1")
    # in-plane spacing = FOV / W
    assert a.spacing[1:] == (380.0 / 64, 380.0 / 64)
    assert b.spacing[1:] == (420.0 / 64, 420.0 / 64)
    # air: -1000 + gain * 0 + offset = -900, noise sd = gain * noise_hu (no clipping there)
    for c, sd in ((a, 5.0), (b, 0.9 * 40.0)):
        air = c.image[:, _air_region(c)]
        assert abs(air.mean() + 900.0) < 0.15 * sd + 1.0
        assert abs(air.std() - sd) < 0.12 * sd + 0.5


def test_default_sites():
    s = default_sites(4)
    assert [x.noise_hu for x in s] == [12.0, 23.0, 34.0, 45.0]
    assert [x.fov_mm for x in s] == [380.0, 400.0, 420.0, 440.0]
    assert PhantomConfig().site_profiles() == s


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_cases": 0}, "n_cases"),
        ({"shape": (4, 64, 64)}, "shape"),
        ({"shape": (12, 64)}, "shape"),
        ({"n_sites": 0}, "n_sites"),
        ({"seed": -1}, "seed"),
        ({"lesion_count": (3, 1)}, "lesion_count"),
        ({"lesion_radius_mm": (0.0, 5.0)}, "lesion_radius_mm"),
        ({"p_clean_case": 1.5}, "p_clean_case"),
        ({"n_sites": 2, "sites": default_sites(3)}, "sites"),
        ({"n_sites": 1, "sites": (replace(default_sites(1)[0], fov_mm=-1.0),)},
         r"sites\[0\].fov_mm"),
        ({"n_sites": 1, "sites": (replace(default_sites(1)[0], noise_hu=float("nan")),)},
         r"sites\[0\].noise_hu"),
    ],
)
def test_bad_config(kwargs, field):
    with pytest.raises(ValueError, match=rf"PhantomConfig\.{field}"):
        PhantomConfig(**kwargs)


def test_config_dict_round_trip():
    d = TINY.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["shape"] == [12, 64, 64] and len(d["sites"]) == 4
    assert PhantomConfig.from_dict(d) == replace(TINY, sites=default_sites(4))


# --------------------------------------------------------------------------- writing
def test_write_read_round_trip(tmp_path, tiny_cases):
    out = write_dataset(TINY, tmp_path / "synthetic", progress=False, workers=1)
    assert out == tmp_path / "synthetic"
    meta = json.loads((out / META_NAME).read_text())
    assert meta["complete"] is True
    assert meta["generator_version"] == GENERATOR_VERSION
    assert meta["config"] == TINY.to_dict()
    for c in tiny_cases:
        info = meta["cases"][c.case_id]
        assert info["site"] == c.site
        assert info["n_lesions"] == c.meta["n_lesions"]
        assert info["infected_slices"] == c.meta["infected_slices"]
        for d, key, dtype in ((IMAGE_DIR, "image", np.int16), (INFECTION_DIR, "mask", np.uint8),
                              (LUNG_DIR, "lung", np.uint8), (ORGAN_DIR, "organs", np.uint8)):
            arr, zooms, dt = _read_back(out / d / f"{c.case_id}.nii.gz")
            assert dt == dtype
            np.testing.assert_array_equal(arr, getattr(c, key))
            sz, sy, sx = c.spacing
            np.testing.assert_allclose(zooms, (sx, sy, sz), rtol=1e-6)
    assert not list(out.rglob("*.part"))


def test_parallel_matches_sequential(tmp_path, tiny_cases):
    cfg = replace(TINY, n_cases=2)
    out = write_dataset(cfg, tmp_path / "par", progress=False, workers=2)
    for c in tiny_cases[:2]:
        arr, _, _ = _read_back(out / IMAGE_DIR / f"{c.case_id}.nii.gz")
        np.testing.assert_array_equal(arr, c.image)


def test_resume_regenerates_only_missing(tmp_path):
    cfg = replace(TINY, n_cases=2)
    out = write_dataset(cfg, tmp_path / "s", progress=False, workers=1)
    files = sorted(out.rglob("*.nii.gz"))
    assert len(files) == 8
    before = {f: f.stat().st_mtime_ns for f in files}
    victim = out / INFECTION_DIR / "synth_001.nii.gz"
    victim.unlink()
    (out / LUNG_DIR / ".synth_001.nii.gz.123.part").write_bytes(b"half")  # killed writer
    write_dataset(cfg, out, progress=False, workers=1)
    assert victim.is_file()
    after = {f: f.stat().st_mtime_ns for f in files}
    changed = {f.relative_to(out).as_posix() for f in files if after[f] != before[f]}
    assert changed <= {f"{d}/synth_001.nii.gz" for d in DIRS}
    assert f"{INFECTION_DIR}/synth_001.nii.gz" in changed
    assert not any("synth_000" in c for c in changed)
    assert not list(out.rglob("*.part"))
    # complete set: a re-run touches nothing
    again = {f: f.stat().st_mtime_ns for f in files}
    write_dataset(cfg, out, progress=False, workers=1)
    assert {f: f.stat().st_mtime_ns for f in files} == again


def test_config_mismatch_is_a_data_error(tmp_path):
    cfg = replace(TINY, n_cases=1)
    out = write_dataset(cfg, tmp_path / "s", progress=False, workers=1)
    with pytest.raises(DataError, match=r"phantom\.json.*different config.*seed"):
        write_dataset(replace(cfg, seed=99), out, progress=False, workers=1)
    (out / META_NAME).write_text("{not json")
    with pytest.raises(DataError, match=r"phantom\.json"):
        write_dataset(cfg, out, progress=False, workers=1)


def test_ensure_synthetic(tmp_path):
    cfg = replace(TINY, n_cases=1)
    folder = ensure_synthetic(tmp_path, cfg)
    assert folder == tmp_path / "synthetic"
    image = folder / IMAGE_DIR / "synth_000.nii.gz"
    stamp = image.stat().st_mtime_ns
    assert ensure_synthetic(tmp_path, cfg) == folder
    assert image.stat().st_mtime_ns == stamp
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        ensure_synthetic(tmp_path / "file", cfg)


def test_write_rejects_bad_workers(tmp_path):
    with pytest.raises(ValueError, match="workers = 0"):
        write_dataset(TINY, tmp_path, progress=False, workers=0)
    assert not os.listdir(tmp_path)
