"""Manifests: every shipped YAML loads, paper splits, strict validation, lookup, tree digests."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from covidlib.data.errors import DataError
from covidlib.data.manifest import (
    data_search_path,
    file_sha256,
    group_files,
    list_datasets,
    load_manifest,
    locate,
    manifest_dir,
    missing_files,
    natural_key,
    read_checksum_file,
    resolve_cases,
    tree_digest,
    verify_files,
    verify_tree,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["covid-semiseg", "covid19-20", "lctsc", "ma-20", "ma20-slices", "medseg-100", "medseg-9",
           "synthetic"]
MA_IDS = [f"coronacases_{i:03d}" for i in range(1, 11)] + [
    "radiopaedia_4_85506_1", "radiopaedia_7_85703_0", "radiopaedia_10_85902_1",
    "radiopaedia_10_85902_3", "radiopaedia_14_85914_0", "radiopaedia_27_86410_0",
    "radiopaedia_29_86490_1", "radiopaedia_29_86491_1", "radiopaedia_36_86526_0",
    "radiopaedia_40_86625_0",
]  # fmt: skip


def shared_semiseg() -> Path:
    root = Path(os.environ.get("COVIDLIB_SHARED_DATA", REPO.parent / "shared" / "data"))
    d = root / "covid-semiseg"
    if not (d / "Dataset").is_dir():
        pytest.skip(f"real COVID-SemiSeg data not found at {d} (set COVIDLIB_SHARED_DATA)")
    return d


def parts(s) -> tuple[int, int, int]:
    return len(s.train), len(s.val), len(s.test)


def assert_disjoint(*lists):
    flat = [c for lst in lists for c in lst]
    assert len(flat) == len(set(flat))


# --------------------------------------------------------------------------- shipped
def test_shipped_manifests_all_load(monkeypatch):
    monkeypatch.delenv("COVIDLIB_MANIFESTS", raising=False)
    assert manifest_dir() == REPO / "data_manifests"
    assert list_datasets() == SHIPPED
    for name in SHIPPED:
        m = load_manifest(name)
        assert m.name == name and m.local_dir == name
        assert m.path == REPO / "data_manifests" / f"{name}.yaml"
        assert m.manual_instructions.strip() and m.citation.strip() and m.licence.strip()
        for f in m.files:  # never an invented checksum: 64 hex digits or unknown
            assert f.sha256 is None or len(f.sha256) == 64
        for s in m.splits.values():
            if s.method == "by-case":
                assert_disjoint(s.train, s.val, s.test)
    assert load_manifest("ma-20") is load_manifest(REPO / "data_manifests" / "ma-20.yaml")


def test_access_and_sources():
    assert {n: load_manifest(n).access for n in SHIPPED} == {
        "covid-semiseg": "manual", "covid19-20": "manual", "lctsc": "manual",
        "ma-20": "download", "ma20-slices": "manual", "medseg-100": "download",
        "medseg-9": "download", "synthetic": "generated",
    }  # fmt: skip
    ma = load_manifest("ma-20")
    assert [f.name for f in ma.files] == [
        "COVID-19-CT-Seg_20cases.zip", "Infection_Mask.zip", "Lung_Mask.zip",
        "Lung_and_Infection_Mask.zip",
    ]  # fmt: skip
    assert all("zenodo.org/records/3757476/" in f.url for f in ma.files)
    assert [f.name for f in load_manifest("medseg-9").files] == [
        "rp_im.zip", "rp_msk.zip", "rp_lung_msk.zip",
    ]
    assert [f.name for f in load_manifest("medseg-100").files] == ["tr_im.nii.gz", "tr_mask.nii.gz"]


def test_p2_covid19_a_split_45_5_48():
    m = load_manifest("covid-semiseg")
    s = m.split("p2")
    assert parts(s) == (45, 5, 48)
    assert_disjoint(s.train, s.val, s.test)
    assert set(s.train) | set(s.val) == set(m.group("train").cases)  # 50 Doctor-label slices
    assert set(s.test) == set(m.group("test").cases)
    assert list(s.val) == ["17", "20", "31", "37", "49"]
    # the documented rule reproduces the written-out list
    ids = sorted(int(c) for c in m.group("train").cases)
    rule = sorted(int(v) for v in np.random.default_rng(0).choice(ids, size=5, replace=False))
    assert [str(v) for v in rule] == list(s.val)
    # 22 and 48 are the two discarded slices: 50 + 48 = 98 of 0..99
    assert sorted(set(range(100)) - {int(c) for c in (*s.train, *s.val, *s.test)}) == [22, 48]


def test_covid_semiseg_groups_and_noisy_teacher_pool():
    m = load_manifest("covid-semiseg")
    assert [g.name for g in m.groups] == ["train", "test", "pseudo-label"]
    assert [len(g.cases) for g in m.groups] == [50, 48, 1600]
    pool = m.group("pseudo-label")
    assert pool.labels == "noisy-teacher" and pool.mask is None and pool.teacher
    assert {m.group("train").labels, m.group("test").labels} == {"expert"}
    assert m.mask_scale == 255 and m.intensity == "uint8" and m.format == "image-slices"
    mc = m.group("train").alt_masks["multiclass"]
    assert mc.label_map == {0: "background", 1: "ground-glass", 2: "consolidation"}
    assert mc.mask_scale == 1
    st = m.paper_stats["P2"]
    assert (st.name, st.cases, st.slices, st.slices_with_infection, st.infected_regions) == (
        "COVID-19-A", 60, 98, 98, 776,
    )  # fmt: skip
    # the pool covers the 20 ma-20 volumes (file names carry the volume id)
    vols = {c.rsplit("_", 1)[0] for c in pool.cases}
    assert len(vols) == 20


def test_medseg9_splits():
    m = load_manifest("medseg-9")
    sep, mixed = m.split("sep"), m.split("mixed")
    assert (sep.train, sep.val, sep.test) == (("1", "2", "3", "4", "5"), ("6",), ("7", "8", "9"))
    assert (mixed.train, mixed.val, mixed.test) == (0.45, 0.05, 0.50)
    assert mixed.cases == tuple(str(i) for i in range(1, 10))
    assert m.aliases == {"P1": "COVID-19-A", "P2": "COVID-19-B"}
    for p in ("P1", "P2"):
        st = m.paper_stats[p]
        assert (st.cases, st.slices, st.slices_with_infection, st.infected_regions) == (
            9, 829, 372, 1488,
        )  # fmt: skip
        assert round(100 * st.slices_with_infection / st.slices, 1) == 44.9  # Table 1 "(44.9%)"


@pytest.mark.parametrize("name, ids", [("ma-20", MA_IDS),
                                       ("synthetic", [f"synth_{i:03d}" for i in range(20)])])
def test_ma_layout_splits_15_1_4_mixed_and_p4(name, ids):
    m = load_manifest(name)
    assert sorted(m.case_ids(), key=natural_key) == ids
    sep = m.split("sep")
    assert parts(sep) == (15, 1, 4)
    assert list(sep.train) == ids[:15] and list(sep.val) == [ids[15]] and list(sep.test) == ids[16:]
    mixed = m.split("mixed")
    assert sorted(mixed.cases, key=natural_key) == ids and mixed.train == 0.45
    p4 = m.split("p4-cv4")
    assert p4.k == 4 and len(p4.train) == 4 and len(p4.folds) == 4
    perm = np.random.default_rng(0).permutation(20)
    assert sorted(p4.train) == sorted(ids[i] for i in perm[:4])
    for f, fold in enumerate(p4.folds):
        assert (len(fold.val), len(fold.test)) == (12, 4)
        assert sorted(fold.test) == sorted(ids[i] for i in perm[4 + 4 * f : 8 + 4 * f])
        assert_disjoint(p4.train, fold.val, fold.test)
    assert sorted(c for fold in p4.folds for c in fold.test) == sorted(ids[i] for i in perm[4:])


def test_ma20_stats_and_aliases():
    m = load_manifest("ma-20")
    assert m.aliases == {"P1": "COVID-19-B", "P2": "COVID-19-C", "P4": "Benchmark"}
    assert {p: (s.name, s.slices, s.slices_with_infection) for p, s in m.paper_stats.items()} == {
        "P1": ("COVID-19-B", 3520, 1841), "P2": ("COVID-19-C", 3520, 1841),
    }  # fmt: skip
    assert round(100 * 1841 / 3520, 1) == 52.3


def test_synthetic_label_map():
    m = load_manifest("synthetic")
    assert m.label_map == {0: "background", 1: "ground-glass", 2: "consolidation"}
    assert m.group("all").organs == "Organ_Mask/{case}.nii.gz" and m.files == ()
    assert (m.organ_map[1], m.organ_map[5], len(m.organ_map)) == ("left lung", "esophagus", 14)
    phantom = pytest.importorskip("covidlib.data.phantom", reason="phantom module not present")
    assert m.organ_map == phantom.ORGAN_LABELS  # the generator writes these values
    assert phantom.DATASET_DIRNAME == m.local_dir


def test_lctsc_p3_split_22_6_22():
    m = load_manifest("lctsc")
    ids = sorted(m.case_ids())
    assert len(ids) == 60 and sum(c.startswith("LCTSC-Train-") for c in ids) == 36
    s = m.split("p3")
    assert parts(s) == (22, 6, 22)
    assert_disjoint(s.train, s.val, s.test)
    perm = [ids[i] for i in np.random.default_rng(0).permutation(60)]
    assert (sorted(s.train), sorted(s.val), sorted(s.test)) == (
        sorted(perm[:22]), sorted(perm[22:28]), sorted(perm[28:50]),
    )  # fmt: skip
    assert m.organ_map == {1: "SpinalCord", 2: "Lung_R", 3: "Lung_L", 4: "Heart", 5: "Esophagus"}
    assert m.format == "nifti-volumes" and m.infection_labels == ()  # NIfTI conversion (H4)


def test_covid19_20_glob_and_kfold():
    m = load_manifest("covid19-20")
    g = m.group("train")
    assert g.cases is None and g.n_cases == 199
    s = m.split("p4-cv5")
    assert (s.method, s.k, s.seed, s.folds) == ("k-fold", 5, 0, None)


# --------------------------------------------------------------------------- strict validation
def good_manifest() -> dict:
    return {
        "name": "toy", "title": "Toy", "aliases": {"P1": "X"}, "homepage": "https://example.org",
        "licence": "CC0", "citation": "Toy 2020", "access": "download", "local_dir": "toy",
        "files": [{"name": "a.zip", "url": "https://example.org/a.zip", "sha256": None,
                   "unpack": "zip", "extract_to": "img"}],
        "manual_instructions": "Put a.zip in <data_root>/toy/", "intensity": "hu",
        "layout": {"format": "nifti-volumes", "groups": [
            {"name": "g1", "image": "img/{case}.nii.gz", "mask": "m/{case}.nii.gz",
             "cases": ["a", "b", "c", "d"]},
            {"name": "g2", "image": "img/{case}.nii.gz", "cases": ["e"]},
        ]},
        "label_map": {0: "background", 1: "ground-glass"}, "infection_labels": [1],
        "mask_scale": 1,
        "splits": {
            "sep": {"method": "by-case", "train": ["a", "b"], "val": ["c"], "test": ["d"]},
            "mixed": {"method": "by-slice-fraction", "train": 0.45, "val": 0.05, "test": 0.5},
            "cv": {"method": "k-fold", "k": 2, "train": ["a", "b"],
                   "folds": [{"val": ["c"], "test": ["d"]}, {"val": ["d"], "test": ["c"]}]},
        },
        "paper_stats": {"P1": {"name": "X", "cases": 4, "slices": 10,
                               "slices_with_infection": 5, "infected_regions": 7}},
    }  # fmt: skip


def write(tmp_path: Path, d: dict, name: str = "toy") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def test_good_toy_manifest_loads(tmp_path):
    m = load_manifest(write(tmp_path, good_manifest()))
    assert m.split("sep").test == ("d",) and m.split("cv").folds[1].test == ("c",)
    assert m.files[0].extract_to == "img" and m.groups[1].name == "g2"
    assert m.case_ids() == ["a", "b", "c", "d", "e"]


def _set(d: dict, path: str, value) -> dict:
    keys = path.split("/")
    cur = d
    for k in keys[:-1]:
        cur = cur[int(k)] if isinstance(cur, list) else cur[k]
    if value is _DEL:
        del cur[keys[-1]]
    elif isinstance(cur, list):
        cur[int(keys[-1])] = value
    else:
        cur[keys[-1]] = value
    return d


_DEL = object()
BAD = [
    ("colour", "x", "colour: unknown key"),
    ("licence", _DEL, "licence: missing required key"),
    ("access", "torrent", "access: 'torrent' is not one of"),
    ("intensity", "HU", "intensity: 'HU' is not one of"),
    ("layout/format", "dicom", "layout.format: 'dicom' is not one of"),
    ("layout/groups/0/maks", "m/{case}.nii.gz", "layout.groups[0].maks: unknown key"),
    ("layout/groups/0/image", "img/{id}.nii.gz", "layout.groups[0].image: only the placeholder"),
    ("layout/groups/0/image", "../img/{case}.nii.gz", "layout.groups[0].image: must be a relative"),
    ("layout/groups/0/image", "img/all.nii.gz", "layout.groups[0].image: format 'nifti-volumes'"),
    ("layout/groups/1/cases", ["a"], "case 'a' is also in group 'g1'"),
    ("layout/groups/1/case_glob", "img/*.nii.gz", "layout.groups[1]: give exactly one of"),
    ("splits/sep/test", ["zz"], "splits.sep.test[0]: unknown case 'zz'"),
    ("splits/sep/val", ["b"], "splits.sep.val: case 'b' is also in 'train' (overlap)"),
    ("splits/sep/method", "random", "splits.sep.method: 'random' is not one of"),
    ("splits/mixed/test", 0.4, "splits.mixed: fractions train+val+test sum to 0.9, not 1"),
    ("splits/cv/folds/1", {"val": ["c"], "test": ["d"]},
     "splits.cv.folds[1].test: case 'd' is also tested in fold 0"),
    ("splits/cv/folds/1", {"val": [], "test": ["c"]},
     "splits.cv.folds[1]: val + test must cover the same cases"),
    ("splits/cv/folds/1/val", ["a"], "splits.cv.folds[1].val: case 'a' is also in 'train'"),
    ("files/0/sha256", "abc", "files[0].sha256: expected null or 64 lowercase hex"),
    ("files/0/unpack", "rar", "files[0].unpack: 'rar' is not one of"),
    ("files/0/url", None, "files[0].url: required (not null)"),
    ("infection_labels", [2], "infection_labels[0]: 2 is not a key of label_map"),
    ("label_map", {1: "x"}, "label_map: must map 0"),
    ("paper_stats/P1/slices", 3, "paper_stats.P1.slices_with_infection: exceeds slices"),
    ("aliases", {"P9": "Y"}, "aliases.P9: 'P9' is not one of"),
    ("name", "other", "name: 'other' must equal the file name stem 'toy'"),
    ("local_dir", "a/b", "local_dir: must be a plain folder name"),
]


@pytest.mark.parametrize("path, value, message", BAD, ids=[b[0] for b in BAD])
def test_invalid_manifest_names_file_and_key(tmp_path, path, value, message):
    p = write(tmp_path, _set(good_manifest(), path, value))
    with pytest.raises(DataError) as e:
        load_manifest(p)
    assert e.value.where == str(p)
    assert message in e.value.reason


def test_duplicate_yaml_key_and_bad_yaml(tmp_path):
    p = tmp_path / "toy.yaml"
    text = write(tmp_path, good_manifest()).read_text()
    p.write_text(text.replace("licence: CC0\n", "licence: CC0\nlicence: MIT\n"))
    with pytest.raises(DataError, match="duplicate key 'licence'"):
        load_manifest(p)
    p.write_text("name: [unclosed\n")
    with pytest.raises(DataError, match="invalid YAML"):
        load_manifest(p)


def test_unknown_dataset_lists_known():
    with pytest.raises(DataError) as e:
        load_manifest("no-such-set")
    assert "unknown dataset" in str(e.value) and "ma-20" in str(e.value)


# --------------------------------------------------------------------------- lookup
def test_data_search_path_env(monkeypatch, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("COVIDLIB_DATA_PATH", f"{a}{os.pathsep}{os.pathsep}{b}")
    assert data_search_path() == [a, b]
    monkeypatch.delenv("COVIDLIB_DATA_PATH")
    assert data_search_path()[0].name == "covidlib"


def test_user_manifests_are_added_to_the_shipped_ones(monkeypatch, tmp_path):
    """Issue 17: $COVIDLIB_MANIFESTS used to REPLACE the shipped manifests."""
    from covidlib.data.manifest import manifest_search_path

    write(tmp_path, good_manifest())
    other = tmp_path / "more"
    other.mkdir()
    d = good_manifest()
    d.update(name="toy2")
    write(other, d, "toy2")
    monkeypatch.setenv("COVIDLIB_MANIFESTS", os.pathsep.join([str(tmp_path), str(other)]))
    assert manifest_search_path() == [tmp_path, other, REPO / "data_manifests"]
    assert list_datasets() == sorted([*SHIPPED, "toy", "toy2"])
    assert manifest_dir() == REPO / "data_manifests"
    assert load_manifest("toy").local_dir == "toy" and load_manifest("toy2").name == "toy2"
    assert load_manifest("ma-20").path == REPO / "data_manifests" / "ma-20.yaml"
    monkeypatch.setenv("COVIDLIB_MANIFESTS", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="COVIDLIB_MANIFESTS"):
        list_datasets()


def test_locate_first_complete_folder_or_names_every_place(monkeypatch, tmp_path):
    m = load_manifest("medseg-100")
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    (r1 / "medseg-100").mkdir(parents=True)
    (r1 / "medseg-100" / "tr_im.nii.gz").write_bytes(b"x")  # incomplete: no tr_mask
    monkeypatch.setenv("COVIDLIB_DATA_PATH", f"{r1}{os.pathsep}{r2}")
    with pytest.raises(DataError) as e:
        locate(m)
    msg = str(e.value)
    assert f"{r1 / 'medseg-100'} (incomplete: missing tr_mask.nii.gz" in msg
    assert f"{r2 / 'medseg-100'} (no such folder)" in msg
    assert "https://figshare.com/ndownloader/files/25953977" in msg
    assert m.manual_instructions.strip()[:40] in msg
    (r2 / "medseg-100").mkdir(parents=True)
    for f in ("tr_im.nii.gz", "tr_mask.nii.gz"):
        (r2 / "medseg-100" / f).write_bytes(b"x")
    assert locate("medseg-100") == r2 / "medseg-100"
    assert locate(m, data_root=r2) == r2 / "medseg-100"
    assert missing_files(m, r1 / "medseg-100") == ["tr_mask.nii.gz"]


def test_resolve_cases_glob_star_text(tmp_path):
    m = load_manifest("covid19-20")
    d = tmp_path / "covid19-20" / "COVID-19-20_v2" / "Train"
    d.mkdir(parents=True)
    for i in (12, 3):
        for s in ("ct", "seg"):
            (d / f"volume-covid19-A-{i:04d}_{s}.nii.gz").write_bytes(b"")
    g = m.group("train")
    assert resolve_cases(g, tmp_path / "covid19-20") == [
        "volume-covid19-A-0003", "volume-covid19-A-0012",
    ]  # fmt: skip
    assert g.mask.format(case="volume-covid19-A-0003").endswith("volume-covid19-A-0003_seg.nii.gz")
    assert missing_files(m, tmp_path / "covid19-20") == [
        "COVID-19-20_v2/Train/*_ct.nii.gz (matches 2 of 199 cases)"
    ]
    for i in range(100, 297):  # 199 pairs in all
        (d / f"volume-covid19-A-{i:04d}_ct.nii.gz").write_bytes(b"")
        (d / f"volume-covid19-A-{i:04d}_seg.nii.gz").write_bytes(b"")
    assert locate(m, tmp_path) == tmp_path / "covid19-20"
    (d / "volume-covid19-A-0200_seg.nii.gz").unlink()  # a mask is missing
    assert missing_files(m, tmp_path / "covid19-20") == [
        "COVID-19-20_v2/Train/volume-covid19-A-0200_seg.nii.gz"
    ]


# --------------------------------------------------------------------------- tree digests
def test_tree_digest_hand_computed(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "y.png").write_bytes(b"yy")
    (tmp_path / "a.jpg").write_bytes(b"x")
    hx, hy = hashlib.sha256(b"x").hexdigest(), hashlib.sha256(b"yy").hexdigest()
    listing = f"{hx}  a.jpg\n{hy}  b/y.png\n"
    expected = hashlib.sha256(listing.encode()).hexdigest()
    assert tree_digest(tmp_path, ["b/y.png", "a.jpg"]) == expected
    assert file_sha256(tmp_path / "a.jpg") == hx
    with pytest.raises(DataError, match="missing file"):
        tree_digest(tmp_path, ["a.jpg", "c.png"])


def test_verify_tree_on_toy_manifest(tmp_path):
    d = tmp_path / "data" / "toy"
    (d / "Imgs").mkdir(parents=True)
    (d / "GT").mkdir()
    files = {"Imgs/1.jpg": b"i1", "Imgs/2.jpg": b"i2", "GT/1.png": b"g1", "GT/2.png": b"g2"}
    for rel, data in files.items():
        (d / rel).write_bytes(data)
    listing = "".join(f"{hashlib.sha256(files[r]).hexdigest()}  {r}\n" for r in sorted(files))
    (tmp_path / "toy.sha256").write_text(listing)
    man = good_manifest()
    man.update(access="manual", files=[], intensity="uint8", mask_scale=255,
               file_checksums="toy.sha256", splits={}, label_map={0: "bg", 1: "infection"})
    man["layout"] = {"format": "image-slices", "groups": [
        {"name": "train", "image": "Imgs/{case}.jpg", "mask": "GT/{case}.png", "cases": ["1", "2"],
         "tree_sha256": hashlib.sha256(listing.encode()).hexdigest()}]}  # fmt: skip
    m = load_manifest(write(tmp_path, man))
    assert group_files(m.group("train")) == sorted(files)
    assert verify_tree(m, d) == {"train": m.group("train").tree_sha256}
    (d / "GT" / "2.png").write_bytes(b"g3")
    with pytest.raises(DataError) as e:
        verify_tree(m, d)
    assert e.value.where == str(d / "GT" / "2.png")
    assert hashlib.sha256(b"g3").hexdigest() in e.value.reason
    assert hashlib.sha256(b"g2").hexdigest() in e.value.reason
    (d / "GT" / "1.png").unlink()
    with pytest.raises(DataError) as e:  # first in sorted order: GT/1.png, missing
        verify_tree(m, d)
    assert e.value.where == str(d / "GT" / "1.png") and "missing" in e.value.reason


@pytest.mark.realdata
def test_covid_semiseg_tree_digest_matches_real_files():
    folder = shared_semiseg()
    m = load_manifest("covid-semiseg")
    assert missing_files(m, folder) == []
    digests = verify_tree(m, folder)
    assert digests == {g.name: g.tree_sha256 for g in m.groups}
    listed = read_checksum_file(m.file_checksums)
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted(listed) == on_disk and len(on_disk) == 3788  # every file is covered


@pytest.mark.realdata
def test_covid_semiseg_modified_copy_is_detected(tmp_path):
    folder = shared_semiseg()
    m = load_manifest("covid-semiseg")
    train = m.group("train")
    rels = [train.image.format(case="0"), train.mask.format(case="0")]
    for rel in rels:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / rel, tmp_path / rel)
    expected = {r: h for r, h in read_checksum_file(m.file_checksums).items() if r in rels}
    verify_files(tmp_path, expected)
    assert tree_digest(tmp_path, rels) == tree_digest(folder, rels)
    target = tmp_path / rels[1]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # flip one bit
    target.write_bytes(bytes(data))
    assert tree_digest(tmp_path, rels) != tree_digest(folder, rels)
    with pytest.raises(DataError) as e:
        verify_files(tmp_path, expected)
    assert e.value.where == str(target) and expected[rels[1]] in e.value.reason
    first = sorted(group_files(train))[0]  # .../Doctor-label/Edge/0.png, not copied
    with pytest.raises(DataError) as e:  # the real group check names the first missing file
        verify_tree(m, tmp_path, groups=["train"])
    assert e.value.where == str(tmp_path / first) and "missing" in e.value.reason


# --------------------------------------------------------------------------- issue 16 item 5/6
@pytest.mark.parametrize("text, shown", [("[01, b, c, d]", "1"), ("[010, b, c, d]", "8"),
                                         ("[7, b, c, d]", "7")])
def test_case_ids_must_be_yaml_strings(tmp_path, text, shown):
    """Unquoted 01 / 010 used to become '1' / '8' (YAML integer / octal) silently."""
    d = good_manifest()
    d["splits"] = {}
    p = tmp_path / "toy.yaml"
    src = yaml.safe_dump(d, sort_keys=False, default_flow_style=None)
    assert src.count("cases: [a, b, c, d]") == 1
    p.write_text(src.replace("cases: [a, b, c, d]", f"cases: {text}"))
    with pytest.raises(DataError) as e:
        load_manifest(p)
    msg = str(e.value)
    assert str(p) in msg and "layout.groups[0].cases[0]" in msg
    assert f"case id {shown} is a YAML number" in msg and f'["{shown}"]' in msg
    assert "quote every case id" in msg


def test_quoted_numeric_case_ids_keep_their_zeros(tmp_path):
    d = good_manifest()
    d["layout"]["groups"][0]["cases"] = ["01", "010", "c", "d"]
    d["splits"] = {"sep": {"method": "by-case", "train": ["01"], "val": ["010"], "test": ["d"]}}
    m = load_manifest(write(tmp_path, d))
    assert m.case_ids()[:2] == ["01", "010"] and m.split("sep").val == ("010",)


def test_non_utf8_manifest_names_the_file(tmp_path):
    p = write(tmp_path, good_manifest())
    p.write_bytes(p.read_bytes().replace(b"Toy 2020", b"Toy \xe9t\xe9 2020"))
    with pytest.raises(DataError) as e:
        load_manifest(p)
    assert str(p) in str(e.value) and "not UTF-8" in str(e.value) and "0xe9" in str(e.value)


def test_symlink_loop_manifest_is_reported_as_a_loop(tmp_path, monkeypatch):
    write(tmp_path, good_manifest())
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    with pytest.raises(DataError, match="symlink loop"):
        load_manifest(tmp_path / "loop.yaml")
    monkeypatch.setenv("COVIDLIB_MANIFESTS", str(tmp_path))
    with pytest.raises(DataError, match="symlink loop"):
        load_manifest("loop")


def test_one_bad_manifest_does_not_stop_data_list(tmp_path, monkeypatch, capsys):
    from covidlib.cli import main
    from covidlib.data.manifest import scan_manifests

    write(tmp_path, good_manifest())
    (tmp_path / "broken.yaml").write_bytes(b"name: broken\ntitle: \xff\n")
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    monkeypatch.setenv("COVIDLIB_MANIFESTS", str(tmp_path))
    scanned = dict(scan_manifests())
    assert set(scanned) >= {"broken", "loop", "toy"}
    assert isinstance(scanned["broken"], DataError) and isinstance(scanned["loop"], DataError)
    assert main(["data", "list", "--root", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "toy" in out and "not present" in out  # the good one is still listed
    assert "broken" in out and "BROKEN" in out and "not UTF-8" in out
    assert "symlink loop" in out and "2 manifest(s) could not be loaded" in err


VOLUME_BAD = [
    ({"csv": "v.csv", "pattern": "(?P<volume>x)"}, "give exactly one of 'csv'"),
    ({"pattern": "(x)"}, "needs a named group (?P<volume>"),
    ({"pattern": "(?P<volume>"}, "not a regular expression"),
    ({"csv": "v.csv", "case_id": "vol_{z}"}, "needs exactly one placeholder {volume}"),
    ({"csv": "v.csv", "derived": "yes"}, "expected true or false"),
    ({"csv": "../v.csv"}, "must be a relative path"),
    ({"csv": "v.csv", "colour": 1}, "unknown key"),
]


@pytest.mark.parametrize("spec, message", VOLUME_BAD, ids=[m for _, m in VOLUME_BAD])
def test_volumes_key_is_validated(tmp_path, spec, message):
    d = yaml.safe_load((REPO / "data_manifests" / "ma20-slices.yaml").read_text())
    d["layout"]["groups"][0]["volumes"] = spec
    d["splits"] = {}
    p = write(tmp_path, d, "ma20-slices")
    with pytest.raises(DataError) as e:
        load_manifest(p)
    assert str(p) in str(e.value) and "layout.groups[0].volumes" in str(e.value)
    assert message in str(e.value)


def test_volumes_only_for_image_slices(tmp_path):
    d = good_manifest()
    d["layout"]["groups"][1]["volumes"] = {"csv": "v.csv"}
    with pytest.raises(DataError, match=r"volumes: volumes group slices into volumes"):
        load_manifest(write(tmp_path, d))
