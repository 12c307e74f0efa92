"""covidlib.data.api.Dataset: the fingerprint that keys cached results to their data, and
your own data through a minimal ``access: local`` manifest (issue 17)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from covidlib.cache import config_hash
from covidlib.data import DataError, make_split
from covidlib.data.api import open_dataset


def test_phantom_fingerprint_hashes_generator_version_and_config(synthetic_root, tmp_path):
    ds = open_dataset("synthetic", synthetic_root)
    info = json.loads((ds.root / "phantom.json").read_text())
    fp = ds.fingerprint()
    fp.pop("splits"), fp.pop("files")  # issue 16: see tests/test_cache.py
    assert fp == {"name": "synthetic", "real": False,
                  "generator": config_hash({"version": info["generator_version"],
                                            "config": info["config"]})}
    # Another generator config (a copy with one setting changed) gives another key.
    other = tmp_path / "synthetic"
    other.mkdir()
    shutil.copy(ds.root / "phantom.json", other / "phantom.json")
    changed = dict(info, config={**info["config"], "seed": info["config"].get("seed", 0) + 1})
    (other / "phantom.json").write_text(json.dumps(changed))
    moved = type(ds)(ds.manifest, other)
    assert moved.fingerprint()["generator"] != fp["generator"]


def test_real_data_has_no_generator(shared_data):
    fp = open_dataset("covid-semiseg", shared_data).fingerprint()
    fp.pop("splits"), fp.pop("files")  # issue 16: see tests/test_cache.py
    assert fp == {"name": "covid-semiseg", "real": True, "generator": None}


# --------------------------------------------------------------------------- your own data
def _own_folder(root: Path, scale: int = 255) -> Path:
    """root/mine: 5 PNG slices of 2 patients (3 + 2), 0/<scale> infection and lung masks."""
    folder = root / "mine"
    rows = ["file,patient"]
    for i, pid in enumerate(["A", "A", "A", "B", "B"]):
        name = f"s{i}"
        for sub, arr in (("ct", np.full((16, 16), 10 * i)),
                         ("inf", np.pad(np.full((2, 2), scale), ((i, 14 - i), (0, 14)))),
                         ("lung", np.pad(np.full((16, 8), 255), ((0, 0), (0, 8))))):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr.astype(np.uint8)).save(folder / sub / f"{name}.png")
        rows.append(f"{name},{pid}")
    (folder / "patients.csv").write_text("\n".join(rows) + "\n")
    return folder


MINIMAL = {
    "name": "mine", "access": "local", "mask_scale": 255,
    "layout": {"format": "image-slices", "groups": [{
        "name": "all", "image": "ct/{case}.png", "mask": "inf/{case}.png",
        "lung": "lung/{case}.png",
        "volumes": {"csv": "patients.csv", "slice_column": "file", "volume_column": "patient",
                    "case_id": "patient_{volume}", "ids": ["patient_A", "patient_B"]},
    }]},
    "label_map": {0: "background", 1: "infection"},
    "splits": {"by-patient": {"method": "by-case", "train": ["patient_A"], "val": [],
                              "test": ["patient_B"]}},
}  # fmt: skip


def _write(folder: Path, d: dict) -> Path:
    p = folder / f"{d['name']}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def test_minimal_local_manifest_reads_grouped_slices_beside_it(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDLIB_DATA_PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("COVIDLIB_DECODED_CACHE", "off")
    _own_folder(tmp_path)
    ds = open_dataset(str(_write(tmp_path, MINIMAL)))
    m = ds.manifest
    assert (m.access, m.title, m.intensity, m.infection_labels) == ("local", "mine", "uint8",
                                                                    (1,))
    assert "not stated" in m.licence and m.data_kind == "real"
    assert ds.root == tmp_path / "mine"  # found next to the manifest
    cases = ds.cases()
    assert [(c.case_id, c.n_slices) for c in cases] == [("patient_A", 3), ("patient_B", 2)]
    assert cases[1].meta["slice_ids"] == ("s3", "s4")
    assert cases[0].mask.max() == 1 and cases[0].lung[:, :, :8].all()
    assert ds.stats()["cases"] == 2 and ds.stats()["infected_regions"] == 5
    parts = make_split(cases, m.split("by-patient"))
    assert len(parts["train"]) == 3 and parts["test"] == [("patient_B", 0), ("patient_B", 1)]


def test_local_manifest_names_every_missing_key_at_once(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("access: local\nsplits: {}\n")
    with pytest.raises(DataError) as e:
        open_dataset(str(p))
    assert str(p) in str(e.value)
    assert "missing required key(s) ['name', 'layout', 'label_map']" in str(e.value)


def test_full_manifest_missing_keys_are_named_together(tmp_path):
    d = {k: v for k, v in MINIMAL.items() if k != "access"} | {"access": "manual"}
    with pytest.raises(DataError) as e:
        open_dataset(str(_write(tmp_path, d)))
    msg = str(e.value)
    assert "missing required keys ['title', 'homepage', 'licence', 'citation'" in msg
    assert "access: local" in msg


def test_0_255_masks_without_mask_scale_name_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDLIB_DECODED_CACHE", "off")
    _own_folder(tmp_path)
    d = {k: v for k, v in MINIMAL.items() if k != "mask_scale"}
    ds = open_dataset(str(_write(tmp_path, d)), data_root=tmp_path)
    with pytest.raises(DataError) as e:
        ds.cases()
    msg = str(e.value)
    assert "unknown label values [255]" in msg and "set mask_scale: 255" in msg
    assert "s0.png" in msg


def test_mask_scale_is_not_applied_to_the_lung_mask(tmp_path, monkeypatch):
    """A {0, 1} lung mask beside {0, 255} infection masks used to fail (or vanish)."""
    monkeypatch.setenv("COVIDLIB_DECODED_CACHE", "off")
    folder = _own_folder(tmp_path)
    for i in range(5):
        Image.fromarray(np.pad(np.ones((16, 8), np.uint8), ((0, 0), (0, 8)))).save(
            folder / "lung" / f"s{i}.png")
    ds = open_dataset(str(_write(tmp_path, MINIMAL)), data_root=tmp_path)
    assert all(c.lung[:, :, :8].all() and not c.lung[:, :, 8:].any() for c in ds.cases())


def test_data_check_reports_every_problem_at_once(tmp_path, capsys):
    from covidlib.cli import main
    from covidlib.data.check import check_dataset

    folder = _own_folder(tmp_path)
    good = _write(tmp_path, MINIMAL)
    assert check_dataset(good, tmp_path) == []
    bad = dict(MINIMAL, name="bad", colour="red", label_map={1: "infection"})
    bad["layout"] = {"format": "image-slices", "groups": [
        dict(MINIMAL["layout"]["groups"][0], image="ct/{id}.png"),
        dict(MINIMAL["layout"]["groups"][0], name="more", volumes={"pattern": "(x)"}),
    ]}
    bad["splits"] = {"s": {"method": "random"}}
    problems = check_dataset(_write(tmp_path, bad), tmp_path)
    text = "\n".join(problems)
    for part in ("colour: unknown key", "label_map: must map 0",
                 "layout.groups[0].image: only the placeholder",
                 "layout.groups[1].volumes.pattern: needs a named group",
                 "splits.s.method: 'random' is not one of"):
        assert part in text, text
    # data problems, once the manifest loads: every missing file and every bad case
    (folder / "inf" / "s1.png").unlink()
    (folder / "inf" / "s4.png").unlink()
    assert check_dataset(good, tmp_path) == [
        f"missing file: inf/{n}.png" for n in ("s1", "s4")]
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "inf" / "s1.png")
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(folder / "inf" / "s4.png")
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(folder / "inf" / "s0.png")
    problems = check_dataset(good, tmp_path)
    assert len(problems) == 2 and "s0.png" in problems[0] and "s4.png" in problems[1]
    assert main(["data", "check", str(good), "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.count("problem: ") == 2 and "2 problem(s)" in out
