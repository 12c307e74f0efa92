"""ma20-slices: Ma et al.'s 10 Coronacases volumes as 1247 infected 256x256 CLAHE slices.

Real-file tests read ../shared/data/ma20-slices (skip with a message when absent); the
expected numbers are those of its README.md: 1247 slices, per-volume counts 159, 120, 118,
113, 116, 70, 93, 181, 111, 166, and 3882 8-connected infected regions. Fixture tests write
a tiny folder in the same layout (data/img/ct|covid|lungs/NNNN.png, volumes.csv).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from covidlib.data import DataError, load_cases, load_manifest, make_split, open_dataset
from covidlib.data.api import Dataset
from covidlib.data.ma20 import pool_cases_outside, semiseg_pool_volume
from covidlib.data.manifest import (
    DATA_KINDS,
    group_files,
    group_volumes,
    list_datasets,
    tree_digest,
    verify_tree,
)
from covidlib.data.splits import split_sizes
from covidlib.data.stats import derivative_caveats, derivative_table1

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COVIDLIB_SHARED_DATA", REPO.parent / "shared" / "data"))
COUNTS = [159, 120, 118, 113, 116, 70, 93, 181, 111, 166]
IDS = [f"coronacases_{k:03d}" for k in range(1, 11)]


@pytest.fixture(scope="module")
def real() -> Dataset:
    folder = SHARED / "ma20-slices"
    if not (folder / "volumes.csv").is_file():
        pytest.skip(f"real ma20-slices data not found at {folder} "
                    "(set COVIDLIB_SHARED_DATA to the folder holding ma20-slices/)")
    return open_dataset("ma20-slices", SHARED)


# --------------------------------------------------------------------------- real files
def test_real_cases_are_the_ten_volumes_in_slice_order(real):
    cases = real.cases()
    assert real.is_real and real.data_kind == "real 2-D derivative"
    assert [c.case_id for c in cases] == IDS
    assert [c.n_slices for c in cases] == COUNTS and sum(COUNTS) == 1247
    first = 0
    for c, n in zip(cases, COUNTS, strict=True):
        assert c.image.shape == c.mask.shape == c.lung.shape == (n, 256, 256)
        assert c.image.dtype == np.uint8 and c.intensity == "uint8"
        assert set(np.unique(c.mask)) == {0, 1} and set(np.unique(c.lung)) == {0, 1}
        assert c.meta["slice_ids"] == tuple(f"{i:04d}" for i in range(first, first + n))
        assert c.meta["volume_derived"] is True
        assert all(math.isnan(s) for s in c.spacing)
        first += n
    # every slice of this derivative shows infection
    assert all(c.mask[z].any() for c in cases for z in range(c.n_slices))


def test_real_slice_equals_its_png(real):
    case = real.cases()[2]  # coronacases_003 starts at PNG 0279
    z = 5
    png = REPO / SHARED / "ma20-slices" / "data" / "img"
    ct = np.asarray(Image.open(png / "ct" / "0284.png"))
    inf = np.asarray(Image.open(png / "covid" / "0284.png"))
    assert np.array_equal(case.image[z], ct)
    assert np.array_equal(case.mask[z], inf // 255)


def test_real_table1_statistics(real):
    s = real.stats()
    assert s == {"cases": 10, "slices": 1247, "slices_with_infection": 1247,
                 "pct_with_infection": 100.0, "infected_regions": 3882}
    t = derivative_table1(real.manifest, s)
    assert list(t["source"]) == ["paper", "paper", "measured"]
    ours = t.iloc[-1]
    assert ours["# Cases"] == 10 and ours["# Infected Regions"] == 3882
    assert ours["# Slices with Infections (%)"] == "1247 (100.0%)"
    paper = load_manifest("ma-20").paper_stats["P2"]
    assert t.iloc[1]["# Slices"] == paper.slices  # the source's full-volume row, as recorded
    text = " ".join(derivative_caveats(real.manifest))
    assert "infection" in text and "not Hounsfield" in text and "derived" in text


def test_real_lung_alt_mask_is_the_lung_mask(real):
    lung = real.cases(alt_mask="lung")
    assert [c.case_id for c in lung] == IDS
    for c, inf in zip(lung, real.cases(), strict=True):
        assert np.array_equal(c.mask, inf.lung)
        assert c.meta["alt_mask"] == "lung" and c.meta["infection_labels"] == (1,)


def test_real_split_sizes_hand_computed(real):
    cases = real.cases()
    # mixed: floor(0.45 Z) train, floor(0.5 Z) - floor(0.45 Z) val, the rest test, per volume
    train = [71, 54, 53, 50, 52, 31, 41, 81, 49, 74]
    upto = [79, 60, 59, 56, 58, 35, 46, 90, 55, 83]
    assert train == [math.floor(0.45 * z) for z in COUNTS]
    mixed = make_split(cases, real.manifest.split("mixed"))
    assert len(mixed["train"]) == sum(train) == 556
    assert len(mixed["val"]) == sum(u - t for u, t in zip(upto, train, strict=True)) == 65
    assert len(mixed["test"]) == sum(z - u for z, u in zip(COUNTS, upto, strict=True)) == 626
    assert ("coronacases_006", 30) in mixed["train"] and ("coronacases_006", 31) in mixed["val"]
    sep = make_split(cases, real.manifest.split("sep"))
    assert {p: len(v) for p, v in sep.items()} == {"train": 900, "val": 70, "test": 277}
    assert {c for c, _ in sep["test"]} == {"coronacases_009", "coronacases_010"}
    rows = [r for r in split_sizes(cases, real.manifest) if r["split"] == "p4-cv4"]
    assert [r["test_slices"] for r in rows] == [118 + 181, 113 + 70, 159 + 166, 120 + 111]
    assert all(r["train_slices"] == 116 + 93 and r["train_cases"] == 2 for r in rows)
    assert all(r["val_cases"] == 6 and r["test_cases"] == 2 for r in rows)


def test_real_tree_digest(real):
    m = real.manifest
    files = group_files(m.group("coronacases"), real.root)
    assert len(files) == 3 * 1247 + 1 and "volumes.csv" in files
    assert verify_tree(m, real.root) == {"coronacases": m.group("coronacases").tree_sha256}


def test_semiseg_pool_volume_on_the_real_pool_names():
    pool = load_manifest("covid-semiseg").group("pseudo-label").cases
    assert semiseg_pool_volume("Data-1_coronacases_org_003_17") == "coronacases_003"
    assert semiseg_pool_volume("Data-1_coronacases_org_010_1") == "coronacases_010"
    assert semiseg_pool_volume(
        "Data-1_radiopaedia_org_covid-19-pneumonia-14_85914_0-dcm_58") is None
    assert semiseg_pool_volume("coronacases_003") is None
    vols = [semiseg_pool_volume(c) for c in pool]
    assert set(vols) == set(IDS) | {None}
    assert sum(v is not None for v in vols) == 1119  # 100+76+69+147+166+80+114+141+114+112
    assert vols.count("coronacases_001") == 100
    kept = pool_cases_outside(pool, ["coronacases_003", "coronacases_008"])
    assert len(kept) == 1600 - 69 - 141


# --------------------------------------------------------------------------- manifests
def test_every_manifest_has_a_data_kind():
    for name in list_datasets():
        m = load_manifest(name)
        assert m.data_kind in DATA_KINDS
        raw = yaml.safe_load(m.path.read_text(encoding="utf-8"))
        assert raw["data_kind"] == m.data_kind, name
    assert load_manifest("synthetic").data_kind == "phantom"
    assert load_manifest("ma20-slices").data_kind == "real 2-D derivative"


def _manifest_copy(tmp_path: Path, edit=None) -> Path:
    d = yaml.safe_load((REPO / "data_manifests" / "ma20-slices.yaml").read_text())
    if edit:
        edit(d)
    p = tmp_path / "ma20-slices.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def test_data_kind_inferred_when_absent(tmp_path):
    def drop(d):
        del d["data_kind"]
    assert load_manifest(_manifest_copy(tmp_path, drop)).data_kind == "real"

    def bad(d):
        d["data_kind"] = "simulated"
    with pytest.raises(DataError, match="data_kind"):
        load_manifest(_manifest_copy(tmp_path, bad))


def test_split_naming_an_unknown_volume_is_rejected(tmp_path):
    def edit(d):
        d["splits"]["sep"]["test"] = ["coronacases_009", "coronacases_011"]
    with pytest.raises(DataError, match=r"coronacases_011"):
        load_manifest(_manifest_copy(tmp_path, edit))


# --------------------------------------------------------------------------- fixture folder
FIXTURE_COUNTS = [2, 3, 2, 2, 2, 1, 2, 3, 2, 2]  # 10 volumes, 21 slices


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def write_fixture(root: Path, counts=FIXTURE_COUNTS, size: int = 8) -> Path:
    """<root>/ma20-slices in the real layout: slice i's image is all i, infection is a
    block at (i % 4, 0) of side 2 ({0, 255}), the lung the left half ({0, 255})."""
    folder = root / "ma20-slices"
    rows, i = ["slice,volume"], 0
    for vol, n in enumerate(counts, 1):
        for _ in range(n):
            name = f"{i:04d}"
            inf = np.zeros((size, size), np.uint8)
            inf[i % 4 : i % 4 + 2, :2] = 255
            lung = np.zeros((size, size), np.uint8)
            lung[:, : size // 2] = 255
            _png(folder / "data/img/ct" / f"{name}.png", np.full((size, size), i))
            _png(folder / "data/img/covid" / f"{name}.png", inf)
            _png(folder / "data/img/lungs" / f"{name}.png", lung)
            rows.append(f"{name},{vol}")
            i += 1
    (folder / "volumes.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture
def fixture_root(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDLIB_DECODED_CACHE", str(tmp_path / "decoded"))
    write_fixture(tmp_path / "data")
    return tmp_path / "data"


def test_fixture_volumes_are_stacked_in_csv_order(fixture_root):
    m = load_manifest("ma20-slices")
    cases = load_cases(m, fixture_root, progress=False)
    assert [c.case_id for c in cases] == IDS
    assert [c.n_slices for c in cases] == FIXTURE_COUNTS
    v2 = cases[1]  # slices 0002, 0003, 0004
    assert v2.meta["slice_ids"] == ("0002", "0003", "0004")
    assert v2.image.dtype == np.uint8 and [int(v2.image[z, 0, 0]) for z in range(3)] == [2, 3, 4]
    assert v2.mask.dtype == np.uint8 and v2.mask.max() == 1
    assert int(v2.mask[0].sum()) == 4 and v2.mask[0, 2, 0] == 1  # slice 2: rows 2-3, cols 0-1
    assert v2.lung[:, :, :4].all() and not v2.lung[:, :, 4:].any()
    ds = Dataset(m, fixture_root / "ma20-slices")
    assert ds.stats()["cases"] == 10 and ds.stats()["infected_regions"] == 21
    only = load_cases(m, fixture_root, cases=["coronacases_006"], progress=False)
    assert [c.case_id for c in only] == ["coronacases_006"] and only[0].n_slices == 1
    with pytest.raises(DataError, match="coronacases_011"):
        load_cases(m, fixture_root, cases=["coronacases_011"], progress=False)


def test_fixture_decoded_cache_is_reused_and_invalidated(fixture_root, tmp_path):
    m = load_manifest("ma20-slices")
    first = load_cases(m, fixture_root, progress=False)
    entries = sorted((tmp_path / "decoded" / "ma20-slices").glob("*.npz"))
    assert len(entries) == 10
    again = load_cases(m, fixture_root, progress=False)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.lung, b.lung) and a.mask.dtype == b.mask.dtype
    # rewrite one slice: its volume is decoded again (new key), the stale entry removed
    p = fixture_root / "ma20-slices/data/img/ct/0000.png"
    _png(p, np.full((8, 8), 77))
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    assert int(load_cases(m, fixture_root, progress=False)[0].image[0, 0, 0]) == 77
    assert len(list((tmp_path / "decoded" / "ma20-slices").glob("coronacases_001.*"))) == 1


def test_fixture_tree_digest_covers_the_csv(fixture_root):
    folder = fixture_root / "ma20-slices"
    g = load_manifest("ma20-slices").group("coronacases")
    files = group_files(g, folder)
    before = tree_digest(folder, files)
    (folder / "volumes.csv").write_text((folder / "volumes.csv").read_text() + "\n")
    assert tree_digest(folder, files) != before


def test_fixture_csv_problems_are_named(fixture_root):
    folder = fixture_root / "ma20-slices"
    m = load_manifest("ma20-slices")
    csv = folder / "volumes.csv"
    good = csv.read_text()
    csv.write_text(good.replace("0005,3\n", ""))
    with pytest.raises(DataError, match=r"volumes\.csv.*1 slice\(s\).*no row.*0005"):
        load_cases(m, fixture_root, progress=False)
    csv.write_text(good + "9999,10\n")
    with pytest.raises(DataError, match=r"without files.*9999"):
        load_cases(m, fixture_root, progress=False)
    csv.write_text(good.replace("slice,volume", "png,volume"))
    with pytest.raises(DataError, match=r"no column 'slice'.*slice_column"):
        load_cases(m, fixture_root, progress=False)
    csv.write_text(good.replace("0000,1", "0000,11"))
    with pytest.raises(DataError, match=r"volumes\.ids"):
        load_cases(m, fixture_root, progress=False)
    csv.write_text(good + "0003,2\n")
    with pytest.raises(DataError, match="listed twice"):
        load_cases(m, fixture_root, progress=False)


def test_fixture_slice_of_other_size_in_a_volume(fixture_root):
    _png(fixture_root / "ma20-slices/data/img/ct/0003.png", np.zeros((9, 9)))
    for k in ("covid", "lungs"):
        _png(fixture_root / f"ma20-slices/data/img/{k}/0003.png", np.zeros((9, 9)))
    with pytest.raises(DataError, match=r"0003\.png.*differs.*coronacases_002"):
        load_cases(load_manifest("ma20-slices"), fixture_root, progress=False)


def test_fixture_soft_lung_mask_is_rejected_and_mask_scale_not_applied_to_lungs(fixture_root):
    m = load_manifest("ma20-slices")
    lung = fixture_root / "ma20-slices/data/img/lungs/0000.png"
    _png(lung, np.tile(np.array([0, 1, 0, 1, 0, 0, 1, 1], np.uint8), (8, 1)))  # {0, 1}
    c = load_cases(m, fixture_root, cases=["coronacases_001"], progress=False)[0]
    assert c.lung[0].sum() == 8 * 4  # read as lung although mask_scale is 255
    _png(lung, np.arange(64).reshape(8, 8) * 4)
    with pytest.raises(DataError, match=r"0000\.png.*lung mask holds 64 distinct values"):
        load_cases(m, fixture_root, cases=["coronacases_001"], progress=False)


def test_volumes_by_file_name_pattern(tmp_path, monkeypatch):
    """A user's folder: slices named <patient>_<z>.png, grouped by a pattern (no CSV)."""
    monkeypatch.setenv("COVIDLIB_DECODED_CACHE", "off")
    folder = tmp_path / "mine"
    for pid, zs in (("p1", [2, 10, 1]), ("p2", [0, 1])):
        for z in zs:
            _png(folder / "img" / f"{pid}_{z}.png", np.full((4, 4), z))
            _png(folder / "gt" / f"{pid}_{z}.png", np.zeros((4, 4)))
    d = yaml.safe_load((REPO / "data_manifests" / "ma20-slices.yaml").read_text())
    d.update(name="mine", local_dir="mine", splits={}, file_checksums=None)
    del d["file_checksums"], d["derived_from"], d["data_kind"]
    d["layout"]["groups"] = [{
        "name": "all", "image": "img/{case}.png", "mask": "gt/{case}.png",
        "case_glob": "img/*.png",
        "volumes": {"pattern": r"(?P<volume>p\d+)_(?P<z>\d+)", "case_id": "patient_{volume}"},
    }]
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(d))
    m = load_manifest(p)
    assert group_volumes(m.group("all"), folder) == {
        "patient_p1": ["p1_1", "p1_2", "p1_10"], "patient_p2": ["p2_0", "p2_1"]}
    cases = load_cases(m, folder, progress=False)
    assert [int(v) for v in cases[0].image[:, 0, 0]] == [1, 2, 10]
    assert cases[0].meta["volume_derived"] is False


def test_fixture_copy_of_the_real_folder_layout_verifies(tmp_path):
    """The shipped digest fails on a fixture folder and names the group (no silent pass)."""
    folder = write_fixture(tmp_path)
    with pytest.raises(DataError, match="tree sha256"):
        verify_tree(load_manifest("ma20-slices"), folder)
    shutil.rmtree(folder / "data/img/lungs")
    with pytest.raises(DataError, match="missing file"):
        verify_tree(load_manifest("ma20-slices"), folder)


def test_split_notes_state_the_choices():
    from covidlib.data.splits import split_notes

    notes = split_notes(load_manifest("ma20-slices"))
    assert notes.count("\n") == 2  # mixed, sep, p4-cv4
    assert "- **sep** (by-case): 7 / 1 / 2 derived volumes (900 / 70 / 277 slices)" in notes
    assert "default_rng(0).permutation(10)" in notes
    assert split_notes(load_manifest("synthetic")) == ""


def test_data_check_on_a_fixture_copy_reports_the_digest(fixture_root):
    from covidlib.data.check import check_dataset

    problems = check_dataset("ma20-slices", fixture_root)
    assert len(problems) == 1 and "group 'coronacases': tree sha256" in problems[0]
    (fixture_root / "ma20-slices/data/img/covid/0004.png").unlink()
    assert check_dataset("ma20-slices", fixture_root) == ["missing file: data/img/covid/0004.png"]
