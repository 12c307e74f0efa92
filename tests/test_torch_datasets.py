"""SliceDataset: cached preprocessing, binary / multi-class masks, points, transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from covidlib.data.errors import DataError
from covidlib.data.oracle import IGNORE
from covidlib.data.torch_datasets import SliceDataset, scale_points
from covidlib.data.types import Case


def hu_case() -> Case:
    img = np.full((3, 8, 8), -300.0, np.float32)  # lung window -> 127 everywhere
    img[2] = 400.0  # -> 255
    mask = np.zeros((3, 8, 8), np.uint8)
    mask[1, :4, :4] = 1
    mask[1, 4:, 4:] = 2
    mask[1, 0, 7] = 3  # e.g. pleural effusion, not infection
    return Case("vol", img, mask=mask, spacing=(5.0, 0.7, 0.7))


def test_items_are_preprocessed_and_binary():
    ds = SliceDataset([hu_case()], [("vol", 1), ("vol", 2)], size=4, infection_labels=[1, 2],
                      progress=False)
    assert len(ds) == 2
    item = ds[0]
    assert item["case_id"] == "vol" and item["z"] == 1
    assert item["image"].shape == (3, 4, 4) and item["image"].dtype == torch.float32
    torch.testing.assert_close(item["image"][0], torch.full((4, 4), (127 / 255 - 0.485) / 0.229))
    assert item["mask"].dtype == torch.int64
    # 8 -> 4 nearest takes input pixels 1, 3, 5, 7: quadrants of 1s and 2s, label 3 -> 0
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    assert torch.equal(item["mask"], expected)
    torch.testing.assert_close(ds[1]["image"][2], torch.full((4, 4), (1 - 0.406) / 0.225))
    assert int(ds[1]["mask"].sum()) == 0


def test_infection_labels_default_to_the_case_meta():
    case = hu_case()
    case.meta["infection_labels"] = (1,)  # as the readers set it from the manifest
    ds = SliceDataset([case], [("vol", 1)], size=8, progress=False)
    assert int(ds[0]["mask"].sum()) == 16  # only the 4x4 block of label 1
    case.meta.pop("infection_labels")
    ds = SliceDataset([case], [("vol", 1)], size=8, progress=False)
    assert int(ds[0]["mask"].sum()) == 16 + 16 + 1  # any non-zero label


def test_multiclass_keeps_labels_and_minmax_is_per_volume():
    ds = SliceDataset([hu_case()], [("vol", 1)], size=8, multiclass=True, method="minmax",
                      progress=False)
    assert set(torch.unique(ds[0]["mask"]).tolist()) == {0, 1, 2, 3}
    # volume min -300, max 400: slice 1 (all -300) -> 0 -> (0 - mean) / std
    torch.testing.assert_close(ds[0]["image"][0], torch.full((8, 8), -0.485 / 0.229))


def test_uint8_slices_of_different_sizes_batch_together():
    a = Case("a", np.full((1, 5, 7), 255.0, np.float32), mask=np.ones((1, 5, 7), np.uint8),
             intensity="uint8")
    b = Case("b", np.zeros((1, 9, 4), np.float32), mask=np.zeros((1, 9, 4), np.uint8),
             intensity="uint8")
    ds = SliceDataset({"a": a, "b": b}, [("b", 0), ("a", 0)], size=6, progress=False)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 6, 6) and batch["mask"].shape == (2, 6, 6)
    assert batch["case_id"] == ["b", "a"]  # order of refs, not of cases
    assert int(batch["mask"][1].sum()) == 36 and int(batch["mask"][0].sum()) == 0


def test_scale_points_pixel_centres():
    # 8 -> 4: y' = floor((y + 0.5) * 4 / 8): 0 -> 0, 3 -> 1, 7 -> 3; 2 -> 5 upsampling: 1 -> 3
    assert scale_points([(0, 3, 1), (7, 7, 0)], (8, 8), (4, 4)) == [(0, 1, 1), (3, 3, 0)]
    assert scale_points([(1, 0, 1)], (2, 2), (5, 5)) == [(3, 1, 1)]
    with pytest.raises(ValueError, match="outside"):
        scale_points([(8, 0, 1)], (8, 8), (4, 4))


def test_points_are_rendered_with_ignore_elsewhere():
    pts = {("vol", 1): [(0, 0, 1), (1, 1, 0), (7, 7, 0)]}  # (0,0) and (1,1) meet at (0,0)
    ds = SliceDataset([hu_case()], [("vol", 1)], size=4, points=pts, progress=False)
    p = ds[0]["points"]
    assert p.dtype == torch.int64 and p.shape == (4, 4)
    assert p[0, 0] == 1 and p[3, 3] == 0  # the infection point wins a collision
    assert int((p != IGNORE).sum()) == 2
    point_map = np.full((8, 8), IGNORE, np.uint8)
    point_map[5, 2] = 1
    ds2 = SliceDataset([hu_case()], [("vol", 1)], size=4, points={("vol", 1): point_map},
                       progress=False)
    assert ds2[0]["points"][2, 1] == 1 and int((ds2[0]["points"] != IGNORE).sum()) == 1
    with pytest.raises(ValueError, match="point map of shape"):
        SliceDataset([hu_case()], [("vol", 1)], size=4, points={("vol", 1): point_map[:5]},
                     progress=False)


def test_transform_and_unlabelled_cases():
    pool = Case("u", np.zeros((2, 4, 4), np.float32), intensity="uint8")
    ds = SliceDataset([pool], [("u", 1)], size=4, transform=lambda d: {**d, "flag": True},
                      progress=False)
    item = ds[0]
    assert "mask" not in item and item["flag"] is True


def test_bad_references():
    with pytest.raises(DataError, match="missing: slice reference"):
        SliceDataset([hu_case()], [("missing", 0)], progress=False)
    with pytest.raises(DataError, match=r"vol: slice z=3 outside 0\.\.2"):
        SliceDataset([hu_case()], [("vol", 3)], progress=False)
    with pytest.raises(ValueError, match="points given"):
        SliceDataset([hu_case()], [("vol", 0)], points={("vol", 1): []}, progress=False)


@pytest.mark.realdata
def test_real_covid_semiseg_validation_slices(semiseg_cases):
    from covidlib.data.splits import make_split

    m, cases = semiseg_cases
    split = make_split(cases, m.split("p2"))
    ds = SliceDataset(cases, split["val"], progress=False)  # default size 352
    assert len(ds) == 5
    for i in range(5):
        item = ds[i]
        assert item["image"].shape == (3, 352, 352) and item["mask"].shape == (352, 352)
        assert set(torch.unique(item["mask"]).tolist()) == {0, 1}
        # normalised 8-bit gray: channel 0 lies within [(0 - .485) / .229, (1 - .485) / .229]
        assert item["image"][0].min() >= -2.118 and item["image"][0].max() <= 2.249
