"""Tests of the annotation oracle (covidlib.data.oracle) against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from covidlib.data.oracle import (
    FULL_SLICE_SECONDS,
    IGNORE,
    POINT_SECONDS,
    LabelCostLedger,
    Point,
    RegionLabel,
    apply_region_label,
    background_points,
    full_effort_seconds,
    full_image_cost,
    infection_points,
    pixel_label_cost,
    point_annotation,
    points_to_label_map,
    polygon_vertices,
    region_cost,
    region_grid,
    region_label,
    region_mask_label,
    unlabelled_map,
)


def ring_mask() -> np.ndarray:
    """9x9 square (rows/cols 1..9) with a 3x3 hole (rows/cols 4..6) in an 11x11 image."""
    m = np.zeros((11, 11), dtype=np.uint8)
    m[1:10, 1:10] = 1
    m[4:7, 4:7] = 0
    return m


def u_mask() -> np.ndarray:
    """U: arms cols 2..4 and 7..9 over rows 2..9, base rows 7..9 cols 2..9; gap cols 5..6."""
    m = np.zeros((12, 12), dtype=np.uint8)
    m[2:10, 2:5] = 1
    m[2:10, 7:10] = 1
    m[7:10, 2:10] = 1
    return m


def rect_mask() -> np.ndarray:
    m = np.zeros((8, 8), dtype=np.uint8)
    m[2:5, 1:7] = 1  # 3 rows x 6 cols
    return m


# ----------------------------------------------------------------- infection points


def test_ring_point_inside_not_at_centroid():
    m = ring_mask()
    cy, cx = np.argwhere(m).mean(axis=0)
    assert (cy, cx) == (5.0, 5.0) and m[5, 5] == 0  # the centroid lies in the hole
    # Distance to the nearest outside pixel: row 1 and column 1 are at 1; (2, 2) is at 2
    # from (0, 2) and (2, 0) and sqrt(8) from the hole; nothing reaches more than 2
    # (thickness 3), so the first raster pixel at distance 2 is (2, 2).
    assert infection_points(m) == [Point(2, 2, 1)]


def test_u_point_inside_not_at_centroid():
    m = u_mask()
    # 24 base pixels (mean row 8) + 30 arm pixels above it (mean row 4): 312 / 54.
    cy, cx = np.argwhere(m).mean(axis=0)
    assert cy == pytest.approx(312 / 54) and cx == 5.5
    assert m[6, 5] == 0 and m[6, 6] == 0  # centroid (5.78, 5.5) falls in the gap
    # Width-3 bars: maximum distance 2 along their mid-lines; (2, 3) is 1 from row 1,
    # (3, 2) is 1 from column 1, (3, 3) is 2 from (1, 3), (3, 1) and the gap at (3, 5).
    assert infection_points(m) == [Point(3, 3, 1)]


def test_two_components_each_get_their_own_point():
    m = np.zeros((10, 10), dtype=np.int64)
    m[1:4, 1:4] = 1
    m[6:9, 5:8] = 1
    pts = infection_points(m)
    assert pts == [Point(2, 2, 1), Point(7, 6, 1)]  # centres of the two 3x3 squares
    lab, _ = ndi.label(m, structure=np.ones((3, 3)))
    assert sorted(lab[p.y, p.x] for p in pts) == [1, 2]


def test_one_pixel_component():
    m = np.zeros((9, 9), dtype=np.uint8)
    m[5, 7] = 1
    assert infection_points(m) == [Point(5, 7, 1)]


def test_symmetric_square_tie_breaks_at_lowest_raster_index():
    m = np.zeros((10, 10), dtype=np.uint8)
    m[3:7, 2:6] = 1  # 4x4: edge pixels at distance 1, inner 2x2 (4..5, 3..4) at 2
    assert infection_points(m) == [Point(4, 3, 1)]
    m2 = np.zeros((6, 6), dtype=np.uint8)
    m2[2:4, 2:4] = 1  # 2x2: all at distance 1 -> top-left
    assert infection_points(m2) == [Point(2, 2, 1)]


def test_image_border_counts_as_outside():
    m = np.zeros((8, 8), dtype=np.uint8)
    m[0:4, 0:4] = 1  # touches the top-left corner
    # Without the border counting as outside, (0, 0) would be 4 from any zero pixel.
    assert infection_points(m) == [Point(1, 1, 1)]


def test_per_class_versus_binary():
    m = np.zeros((6, 10), dtype=np.uint8)
    m[1:4, 1:4] = 1
    m[1:4, 4:7] = 2  # touching: one 3x6 binary component
    # Binary: middle row 2, cols 2..5 at distance 2 -> (2, 2), label 1.
    assert infection_points(m) == [Point(2, 2, 1)]
    assert infection_points(m, per_class=True) == [Point(2, 2, 1), Point(2, 5, 2)]
    # Only label 1 is infection: class 2 becomes background.
    assert infection_points(m, infection_labels=(1,)) == [Point(2, 2, 1)]
    assert infection_points(m, infection_labels=(2,), per_class=True) == [Point(2, 5, 2)]


def test_connectivity_of_diagonal_pixels():
    m = np.zeros((5, 5), dtype=np.uint8)
    m[1, 1] = m[2, 2] = 1
    assert infection_points(m, connectivity=2) == [Point(1, 1, 1)]
    assert infection_points(m, connectivity=1) == [Point(1, 1, 1), Point(2, 2, 1)]


def test_uniform_placement_is_inside_and_seeded():
    m = u_mask()
    a = infection_points(m, placement="uniform", rng=np.random.default_rng(3))
    b = infection_points(m, placement="uniform", rng=np.random.default_rng(3))
    assert a == b and len(a) == 1 and m[a[0].y, a[0].x] == 1
    with pytest.raises(ValueError, match="rng=None"):
        infection_points(m, placement="uniform")


def test_empty_mask_has_no_infection_points():
    assert infection_points(np.zeros((4, 4), dtype=np.uint8)) == []


@pytest.mark.parametrize("per_class", [False, True])
def test_random_blobs_every_point_inside_its_component(per_class):
    """200 smoothed-noise masks: exactly one point per component, at its distance maximum."""
    rng = np.random.default_rng(20210105)
    n_components = 0
    for _ in range(200):
        sigma = rng.uniform(1.0, 4.0)
        field = ndi.gaussian_filter(rng.normal(size=(48, 48)), sigma)
        infected = field > np.quantile(field, rng.uniform(0.6, 0.9))
        cls = np.where(ndi.gaussian_filter(rng.normal(size=(48, 48)), 3.0) > 0, 1, 2)
        mask = np.where(infected, cls, 0).astype(np.uint8)
        pts = infection_points(mask, per_class=per_class)
        groups = [(mask == c, c) for c in (1, 2)] if per_class else [(infected, 1)]
        expected = 0
        for binary, c in groups:
            lab, n = ndi.label(binary, structure=np.ones((3, 3)))
            expected += n
            mine = [p for p in pts if p.label == c]
            ids = [int(lab[p.y, p.x]) for p in mine]
            assert sorted(ids) == list(range(1, n + 1))  # inside; one per component
            for p, k in zip(mine, ids, strict=True):
                comp = lab == k
                dist = ndi.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
                assert dist[p.y, p.x] == dist[comp].max()
        assert len(pts) == expected
        n_components += expected
    assert n_components > 400  # the masks really hold many (non-convex) blobs


# ---------------------------------------------------------------- background points


def test_background_points_never_on_infection_and_seeded():
    m = np.zeros((10, 10), dtype=np.uint8)
    m[2:8, 2:8] = 1
    a = background_points(m, 20, np.random.default_rng(0))
    b = background_points(m, 20, np.random.default_rng(0))
    assert a == b and len(a) == 20 and len(set(a)) == 20
    assert all(p.label == 0 and m[p.y, p.x] == 0 for p in a)
    assert [p[:2] for p in a] == sorted(p[:2] for p in a)  # raster order


def test_background_points_cap_region_and_exclude():
    m = np.ones((3, 3), dtype=np.uint8)
    m[0, 0] = m[2, 2] = 0  # only two background pixels
    assert background_points(m, 5, 1) == [Point(0, 0, 0), Point(2, 2, 0)]
    assert background_points(m, 5, 1, exclude=[Point(0, 0, 0)]) == [Point(2, 2, 0)]
    region = np.zeros((3, 3), dtype=bool)
    region[2, :] = True
    assert background_points(m, 5, 1, region_mask=region) == [Point(2, 2, 0)]
    assert background_points(m, 0, 1) == []
    # A label outside infection_labels is background.
    m2 = np.array([[0, 3], [1, 1]], dtype=np.uint8)
    got = background_points(m2, 5, 1, infection_labels=(1, 2))
    assert got == [Point(0, 0, 0), Point(0, 1, 0)]


def test_background_points_are_uniform():
    m = np.ones((4, 4), dtype=np.uint8)
    m[0, 0] = m[1, 3] = m[3, 1] = m[3, 3] = 0
    counts: dict[tuple[int, int], int] = {}
    rng = np.random.default_rng(7)
    for _ in range(4000):
        (p,) = background_points(m, 1, rng)
        counts[(p.y, p.x)] = counts.get((p.y, p.x), 0) + 1
    assert set(counts) == {(0, 0), (1, 3), (3, 1), (3, 3)}
    assert all(abs(c - 1000) < 150 for c in counts.values())  # ~5 sigma


def test_point_annotation_match_rule():
    m = np.zeros((10, 10), dtype=np.uint8)
    m[1:4, 1:4] = 1
    m[6:9, 5:8] = 2
    pts = point_annotation(m, np.random.default_rng(5))
    fg, bg = pts[:2], pts[2:]
    assert fg == [Point(2, 2, 1), Point(7, 6, 1)]
    assert len(bg) == 2 and all(p.label == 0 and m[p.y, p.x] == 0 for p in bg)
    assert pts == point_annotation(m, np.random.default_rng(5))
    assert len(point_annotation(m, 5, n_background=7)) == 2 + 7
    per_class = point_annotation(m, 5, per_class=True)
    assert [p.label for p in per_class] == [1, 2, 0, 0]


def test_empty_mask_gets_only_background_points():
    m = np.zeros((6, 6), dtype=np.uint8)
    pts = point_annotation(m, 0)
    assert len(pts) == 1 and pts[0].label == 0
    assert len(point_annotation(m, 0, min_background=3)) == 3
    lung = np.zeros((6, 6), dtype=bool)
    lung[1:3, 1:3] = True
    pts = point_annotation(m, 0, min_background=10, background_region=lung)
    assert sorted(p[:2] for p in pts) == [(1, 1), (1, 2), (2, 1), (2, 2)]


def test_points_to_label_map():
    pts = [Point(0, 1, 1), Point(2, 2, 0), Point(0, 1, 1)]
    lm = points_to_label_map(pts, (3, 4))
    expected = np.full((3, 4), IGNORE, dtype=np.uint8)
    expected[0, 1] = 1
    expected[2, 2] = 0
    assert lm.dtype == np.uint8 and np.array_equal(lm, expected)
    with pytest.raises(ValueError, match="already labelled 1"):
        points_to_label_map([Point(0, 1, 1), Point(0, 1, 0)], (3, 4))
    with pytest.raises(ValueError, match="outside"):
        points_to_label_map([Point(3, 0, 1)], (3, 4))
    with pytest.raises(ValueError, match="clashes with ignore=255"):
        points_to_label_map([Point(0, 0, 255)], (3, 4))


# ------------------------------------------------------------------- region oracle


def region_fixture() -> np.ndarray:
    """8x8 mask, 2x2 grid of 4x4 regions: infection in regions 0, 2 and 3 only."""
    m = np.zeros((8, 8), dtype=np.uint8)
    m[1, 1] = m[1, 2] = 1  # region 0 (rows 0..3, cols 0..3)
    m[5, 1] = 2  # region 2 (rows 4..7, cols 0..3), class 2
    m[6, 6] = 1  # region 3 (rows 4..7, cols 4..7); region 1 is background
    return m


def test_region_grid():
    assert region_grid((8, 8), 4) == [(0, 4, 0, 4), (0, 4, 4, 8), (4, 8, 0, 4), (4, 8, 4, 8)]
    boxes = region_grid((10, 7), 4)
    assert boxes == [(0, 5, 0, 4), (0, 5, 4, 7), (5, 10, 0, 4), (5, 10, 4, 7)]
    assert len(region_grid((352, 352), 64)) == 64
    with pytest.raises(ValueError, match="n_regions=10"):
        region_grid((8, 8), 10)


def test_region_oracle_kinds_and_points():
    m = region_fixture()
    boxes = region_grid(m.shape, 4)
    labels = [region_label(m, b, np.random.default_rng(0)) for b in boxes]
    assert [r.kind for r in labels] == ["point", "background", "point", "point"]
    assert labels[1].point is None
    assert labels[2].point == Point(5, 1, 1)  # binary label
    assert labels[3].point == Point(6, 6, 1)
    assert region_label(m, boxes[2], 0, per_class=True).point == Point(5, 1, 2)
    seen = {region_label(m, boxes[0], seed).point for seed in range(40)}
    assert seen == {Point(1, 1, 1), Point(1, 2, 1)}  # uniform over the region's infection

    lm = unlabelled_map(m.shape)
    for b, r in zip(boxes, labels, strict=True):
        apply_region_label(lm, b, r)
    assert np.all(lm[0:4, 4:8] == 0)  # background tag
    assert lm[5, 1] == 1 and lm[6, 6] == 1 and lm[labels[0].point[:2]] == 1
    assert int((lm == IGNORE).sum()) == 64 - 16 - 3


def test_region_point_only_from_inside_the_box():
    m = np.zeros((8, 8), dtype=np.uint8)
    m[3, 3] = m[3, 4] = 1  # straddles regions 0 and 1
    assert region_label(m, (0, 4, 0, 4), 0).point == Point(3, 3, 1)
    assert region_label(m, (0, 4, 4, 8), 0).point == Point(3, 4, 1)


def test_region_mask_label_reveals_the_region():
    m = region_fixture()
    r = region_mask_label(m, (0, 4, 0, 4))
    assert r.kind == "mask"
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[1, 1:3] = 1
    assert np.array_equal(r.mask, expected)
    assert region_mask_label(m, (0, 4, 4, 8)).kind == "background"
    assert region_mask_label(m, (4, 8, 0, 4), per_class=True).mask[1, 1] == 2
    lm = unlabelled_map(m.shape)
    apply_region_label(lm, (0, 4, 0, 4), r)
    assert np.array_equal(lm[0:4, 0:4], expected) and np.all(lm[4:, :] == IGNORE)
    with pytest.raises(ValueError, match="does not fit box"):
        apply_region_label(lm, (0, 4, 0, 5), r)


# --------------------------------------------------------------------------- costs


def test_polygon_vertices_hand_counts():
    assert polygon_vertices(rect_mask()) == 4
    two = rect_mask()
    two[6:8, 0:3] = 1  # second rectangle, touching the image border
    assert polygon_vertices(two) == 8
    assert polygon_vertices(np.zeros((5, 5), dtype=np.uint8)) == 0
    assert polygon_vertices(u_mask()) == 8  # the 8 corners of the U
    assert polygon_vertices(ring_mask()) == 4 + 4  # outer square + hole
    assert polygon_vertices(ring_mask(), count_holes=False) == 4
    one = np.zeros((5, 5), dtype=np.uint8)
    one[2, 2] = 1
    assert polygon_vertices(one) == 3  # a polygon needs three clicks
    # tolerance 0 keeps the raw marching-squares contour: one vertex per boundary pixel
    # edge, 2 * (3 + 6) = 18 for the 3x6 rectangle.
    assert polygon_vertices(rect_mask(), tolerance=0.0) == 18


def test_costs_per_point_and_per_pixel():
    assert POINT_SECONDS == 3.0
    assert region_cost("point") == 3.0 and region_cost("background") == 3.0
    assert region_cost(RegionLabel("point", point=Point(0, 0, 1))) == 3.0
    assert pixel_label_cost(rect_mask()) == 12.0
    assert region_cost(RegionLabel("mask", mask=rect_mask())) == 12.0
    assert pixel_label_cost(np.zeros((4, 4), dtype=np.uint8)) == 0.0
    assert full_image_cost(np.zeros((4, 4), dtype=np.uint8)) == 3.0  # background tag
    assert full_image_cost(rect_mask()) == 12.0
    # A 6x6 square split by a 2x2 grid: four 3x3 pieces, each a 4-vertex polygon -> 4 x 12 s.
    m = np.zeros((8, 8), dtype=np.uint8)
    m[1:7, 1:7] = 1
    assert full_image_cost(m, "pixel", boxes=region_grid(m.shape, 4)) == 48.0
    assert full_image_cost(m, "point", boxes=region_grid(m.shape, 4)) == 12.0
    with pytest.raises(ValueError, match="pass the RegionLabel"):
        region_cost("mask")


def test_p1_budget_2460_seconds():
    """P1 Sec 5.3: 5 * 3 * 64 + 100 * 5 * 3 = 2460 s, about 7% of 368 slices x 96 s."""
    m = region_fixture()
    grid = region_grid(m.shape, 64)  # 8x8 image -> 64 one-pixel regions
    ledger = LabelCostLedger()
    for _ in range(5):  # initial cycle: 5 images, every region tagged or clicked
        ledger.add("initial", full_image_cost(m, "point", boxes=grid), count=len(grid))
    rng = np.random.default_rng(0)
    for _ in range(100):  # 100 cycles x 5 regions with point-level labels
        for j in rng.choice(len(grid), size=5, replace=False):
            ledger.add_region(region_label(m, grid[j], rng))
    assert ledger.seconds["initial"] == 5 * 3 * 64
    assert ledger.total == 2460.0
    assert ledger.counts.get("point", 0) + ledger.counts.get("background", 0) == 500
    assert FULL_SLICE_SECONDS == 96.0 and full_effort_seconds(368) == 35328.0
    assert round(100 * ledger.total / full_effort_seconds(368)) == 7


def test_ledger_roundtrip():
    ledger = LabelCostLedger()
    ledger.add("point", 3.0)
    ledger.add("mask", 36.0, count=2)
    d = json.loads(json.dumps(ledger.to_dict()))
    assert d == {
        "seconds": {"point": 3.0, "mask": 36.0},
        "counts": {"point": 1, "mask": 2},
        "total": 39.0,
    }
    again = LabelCostLedger.from_dict(d)
    assert again == ledger
    with pytest.raises(ValueError, match="total 40"):
        LabelCostLedger.from_dict({**d, "total": 40})
    with pytest.raises(ValueError, match="seconds=-1"):
        ledger.add("point", -1)


# ---------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_value_error_naming_the_value():
    m = rect_mask()
    with pytest.raises(ValueError, match=r"mask2d: expected a 2-D label map, got shape \(2, 8"):
        infection_points(np.stack([m, m]))
    with pytest.raises(ValueError, match=r"box=\(0, 9, 0, 4\)"):
        region_label(m, (0, 9, 0, 4), 0)
    with pytest.raises(ValueError, match=r"box=\(2, 2, 0, 4\)"):
        region_mask_label(m, (2, 2, 0, 4))
    with pytest.raises(ValueError, match="n=-1"):
        background_points(m, -1, 0)
    with pytest.raises(ValueError, match="non-integer values"):
        infection_points(m * 0.5)
    with pytest.raises(ValueError, match="negative label -1"):
        infection_points(m.astype(np.int64) - 1)
    with pytest.raises(ValueError, match="connectivity=3"):
        infection_points(m, connectivity=3)
    with pytest.raises(ValueError, match="infection_labels: 0"):
        infection_points(m, infection_labels=(0, 1))
    with pytest.raises(ValueError, match="n_background='half'"):
        point_annotation(m, 0, n_background="half")
    with pytest.raises(ValueError, match="min_background=-1"):
        point_annotation(m, 0, min_background=-1)
    with pytest.raises(ValueError, match="tolerance=-1"):
        polygon_vertices(m, tolerance=-1)
    with pytest.raises(ValueError, match="n_slices=-2"):
        full_effort_seconds(-2)
    with pytest.raises(ValueError, match="rng='x'"):
        background_points(m, 1, "x")
    with pytest.raises(ValueError, match="label_map"):
        wrong_dtype = np.zeros((8, 8), dtype=np.int64)
        apply_region_label(wrong_dtype, (0, 4, 0, 4), RegionLabel("background"))
    with pytest.raises(ValueError, match="kind='point'"):
        RegionLabel("point")


# ------------------------------------------------------------------------ real data


@pytest.mark.realdata
def test_infected_region_count_matches_p2_table1():
    """P2 Table 1: COVID-19-A (98 MedSeg slices) has 776 infected regions = P2 points."""
    import os
    from pathlib import Path

    from PIL import Image

    root = Path(
        os.environ.get("COVIDLIB_SHARED_DATA", Path(__file__).parents[1] / ".." / "shared" / "data")
    )
    base = root / "covid-semiseg" / "Dataset"
    files = sorted((base / "TrainingSet/LungInfection-Train/Doctor-label/GT").glob("*.png"))
    files += sorted((base / "TestingSet/LungInfection-Test/GT").glob("*.png"))
    if len(files) != 98:
        pytest.skip(f"COVID-SemiSeg GT masks not found under {base} (set COVIDLIB_SHARED_DATA)")
    n = sum(
        len(infection_points((np.asarray(Image.open(f).convert("L")) > 127).astype(np.uint8)))
        for f in files
    )
    # 8-connected components give 779 (4-connected: 805); within 1% of the paper's count.
    assert abs(n - 776) <= 0.01 * 776
