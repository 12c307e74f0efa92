"""Issue 17 "Use your own data": a folder of PNG slices with 0/255 masks and a volume CSV,
the minimal ``access: local`` manifest, ``covidlib data check``, ``open_dataset`` by name
through ``$COVIDLIB_MANIFESTS``, a per-volume split, and one P2 training through the public
entry point (:func:`covidlib.experiments.p2.train_p2`) scored on two test sets."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from covidlib.data import load_manifest, open_dataset
from covidlib.data.check import check_dataset
from covidlib.data.demo_folder import DemoFolder, demo_manifest, demo_splits, write_demo_folder
from covidlib.data.errors import DataError
from covidlib.data.splits import make_split

N_VOLUMES, PER_SITE, SLICES, SIZE = 4, 3, 3, 48
TINY = {"epochs": 1, "size": 48, "batch_size": 4, "lr": 1e-3,
        "model_kwargs": {"base_width": 4, "depth": 2},
        "max_slices": {"train": None, "val": None, "test": None}}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoFolder:
    root = tmp_path_factory.mktemp("own-data")
    return write_demo_folder(root / "my-slices", n_volumes=N_VOLUMES, slices_per_volume=SLICES,
                             size=SIZE, volumes_per_site=PER_SITE, seed=0)


@pytest.fixture()
def manifests(demo: DemoFolder, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo's minimal manifest beside its folder, that folder on $COVIDLIB_MANIFESTS."""
    path = demo.folder.parent / "my-slices.yaml"
    path.write_text(demo_manifest("my-slices", demo), encoding="utf-8")
    monkeypatch.setenv("COVIDLIB_MANIFESTS", str(demo.folder.parent))
    return path


def test_demo_folder_holds_png_slices_with_0_255_masks_and_a_volume_csv(demo: DemoFolder):
    assert sorted(demo.volumes) == ["patient01", "patient02", "patient03", "patient04"]
    assert demo.sites == {"patient01": "A", "patient02": "A", "patient03": "A",
                          "patient04": "B"}
    assert demo.n_slices == N_VOLUMES * SLICES  # 16 lung slices per phantom volume >= 3
    with open(demo.folder / "volumes.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["slice", "volume"]
    # global 4-digit slice ids in file order, each volume's slices together
    assert rows[1:4] == [["0000", "patient01"], ["0001", "patient01"], ["0002", "patient01"]]
    assert [r[0] for r in rows[1:]] == [f"{i:04d}" for i in range(N_VOLUMES * SLICES)]
    infected = 0
    for sid in (r[0] for r in rows[1:]):
        image = np.asarray(Image.open(demo.folder / "images" / f"{sid}.png"))
        mask = np.asarray(Image.open(demo.folder / "masks" / f"{sid}.png"))
        lung = np.asarray(Image.open(demo.folder / "lungs" / f"{sid}.png"))
        assert image.shape == mask.shape == lung.shape == (SIZE, SIZE)
        assert image.dtype == mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255} and set(np.unique(lung)) <= {0, 255}
        assert lung.any()  # only slices that show lung are kept
        assert not (mask & ~lung).any()  # infection lies in the lungs
        infected += bool(mask.any())
    assert infected > 0


def test_demo_folder_is_deterministic(tmp_path: Path):
    a = write_demo_folder(tmp_path / "a", n_volumes=2, slices_per_volume=2, size=48,
                          volumes_per_site=1)
    b = write_demo_folder(tmp_path / "b", n_volumes=2, slices_per_volume=2, size=48,
                          volumes_per_site=1)
    assert a.volumes == b.volumes == {"patient01": ("0000", "0001"),
                                      "patient02": ("0002", "0003")}
    for sub in ("images", "masks", "lungs"):
        for sid in ("0000", "0003"):
            assert (a.folder / sub / f"{sid}.png").read_bytes() == \
                (b.folder / sub / f"{sid}.png").read_bytes()


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"n_volumes": 1}, "n_volumes=1"), ({"slices_per_volume": 0}, "slices_per_volume=0"),
    ({"size": 32}, "size=32"), ({"volumes_per_site": 6}, "volumes_per_site=6"),
])
def test_bad_demo_arguments_are_named(tmp_path: Path, kwargs: dict, named: str):
    with pytest.raises(ValueError, match=named):
        write_demo_folder(tmp_path / "x", **kwargs)


def test_demo_splits_share_training_volumes_and_test_each_scanner():
    demo = DemoFolder(Path("."), {f"patient0{i}": () for i in range(1, 7)},
                      {f"patient0{i}": "A" if i <= 4 else "B" for i in range(1, 7)})
    assert demo_splits(demo) == {
        "by-volume": {"train": ["patient01", "patient02"], "val": ["patient03"],
                      "test": ["patient04"]},
        "other-scanner": {"train": ["patient01", "patient02"], "val": ["patient03"],
                          "test": ["patient05", "patient06"]}}
    with pytest.raises(ValueError, match="scanner-A"):
        demo_splits(DemoFolder(Path("."), {"p1": (), "p2": ()}, {"p1": "A", "p2": "B"}))


def test_minimal_manifest_needs_no_provenance_keys(demo: DemoFolder, tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text(demo_manifest("mine"), encoding="utf-8")
    m = load_manifest(path)
    assert m.access == "local" and m.local_dir == "mine" and m.mask_scale == 255
    assert m.intensity == "uint8" and m.infection_labels == (1,) and m.splits == {}
    assert m.groups[0].volumes is not None and m.groups[0].volumes.csv == "volumes.csv"


def test_check_names_mask_scale_for_every_volume_then_passes(demo: DemoFolder,
                                                             manifests: Path):
    broken = manifests.read_text().replace("mask_scale: 255\n", "")
    manifests.write_text(broken, encoding="utf-8")
    problems = check_dataset(manifests)
    assert len(problems) == N_VOLUMES  # one per volume (each volume is one case), all at once
    assert all("set mask_scale: 255" in p for p in problems)
    manifests.write_text(demo_manifest("my-slices", demo), encoding="utf-8")
    assert check_dataset("my-slices") == []  # by name, through $COVIDLIB_MANIFESTS


def test_open_by_name_groups_slices_into_volumes_and_splits_per_volume(demo: DemoFolder,
                                                                       manifests: Path):
    ds = open_dataset("my-slices")
    cases = ds.cases()
    assert [c.case_id for c in cases] == list(demo.volumes)
    assert all(c.image.shape == (SLICES, SIZE, SIZE) for c in cases)
    assert set(np.unique(np.concatenate([c.mask.ravel() for c in cases]))) <= {0, 1}
    assert ds.stats()["cases"] == N_VOLUMES and ds.stats()["slices"] == N_VOLUMES * SLICES
    parts = make_split(cases, ds.manifest.split("other-scanner"))
    assert parts["train"] == [("patient01", z) for z in range(SLICES)]
    assert parts["test"] == [("patient04", z) for z in range(SLICES)]


def test_one_training_scores_two_test_sets(demo: DemoFolder, manifests: Path):
    from covidlib.experiments.p2 import TestSet, train_p2

    trained = train_p2("my-slices", "by-volume", "cb_flip", profile="cpu", overrides=TINY,
                       device="cpu", progress=False,
                       test_sets={"same": "test", "other": TestSet(split="other-scanner")})
    assert isinstance(trained.model, nn.Module)
    assert trained.n_slices == {"train": SLICES, "val": SLICES, "test": SLICES}
    assert trained.epochs_completed == 1 and len(trained.history) == 1
    assert set(trained.scores) == {"same", "other"}
    # by-volume tests patient03 (scanner A), other-scanner patient04 (scanner B)
    assert trained.scores["same"]["n_volumes"] == trained.scores["other"]["n_volumes"] == 1
    assert trained.scores["same"]["n_slices"] == trained.scores["other"]["n_slices"] == SLICES
    for sc in trained.scores.values():
        assert 0.0 <= sc["dice"] <= 1.0 and 0.0 <= sc["spec"] <= 1.0
        assert sc["lung_containment_truth"] == 1.0  # the demo's infection lies in its lungs
    # scoring again uses the same model: same numbers, no new training
    again = trained.score(TestSet(split="other-scanner"), name="other again")
    assert again == trained.scores["other"] and len(trained.history) == 1


def test_unknown_manifest_folder_on_the_search_path_is_named(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path):
    monkeypatch.setenv("COVIDLIB_MANIFESTS", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="COVIDLIB_MANIFESTS"):
        open_dataset("my-slices")


@pytest.mark.slow
def test_the_chapter_runs_and_shows_the_fix_and_two_test_sets(tmp_path: Path):
    import nbformat
    import papermill

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "own_data.ipynb"
    papermill.execute_notebook(
        str(repo / "notebooks" / "own_data.ipynb"), str(out), kernel_name="python3",
        cwd=str(repo / "notebooks"), progress_bar=False,
        parameters={"profile": "cpu", "dataset": "demo", "device": "cpu", "seeds": [0],
                    "results_dir": str(tmp_path / "results"), "overrides": TINY})
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(o.get("text", "") if "text" in o else str(o.get("data", {}).get(
        "text/plain", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "set mask_scale: 255" in text and "my-slices.yaml: 6 problem(s)" in text
    assert "my-slices.yaml: OK" in text
    assert "scanner A (held-out volume)" in text and "scanner B" in text
    assert not any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
