"""The point-labelling widget: exact canvas->image mapping, durable labels, P1's loop."""

import base64
import io
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from covidlib import acquisition
from covidlib.data.errors import DataError
from covidlib.data.oracle import IGNORE, RegionLabel
from covidlib.data.types import Case
from covidlib.models import UNet2D
from covidlib.widgets import (
    Annotation,
    AnnotationStore,
    LabelSession,
    MaskOracle,
    canvas_size,
    canvas_to_image,
    choose_pool,
    image_to_canvas,
    simulate,
    zoom_view,
)

# ----------------------------------------------------------------------------- geometry


def test_canvas_to_image_by_hand():
    full = (0, 160, 0, 160)
    assert canvas_to_image(3.0, 2.99, 480, 480, full) == (0, 1)  # 3 px per image pixel
    assert canvas_to_image(480, 480, 480, 480, full) == (159, 159)  # far edge: last pixel
    assert canvas_to_image(0, 0, 480, 480, full) == (0, 0)
    # zoomed window rows 10..49, columns 20..79 on a 480 x 320 canvas (8 px per pixel)
    assert canvas_to_image(8, 8, 480, 320, (10, 50, 20, 80)) == (11, 21)
    assert canvas_to_image(7.999, 15.999, 480, 320, (10, 50, 20, 80)) == (11, 20)
    # a canvas shown 0.75 px wide for 3 columns: edges at exactly 0.25 and 0.5 go right
    assert [canvas_to_image(c, 0, 0.75, 1, (0, 1, 0, 3))[1] for c in (0.2499, 0.25, 0.5)] == [
        0, 1, 2]
    with pytest.raises(ValueError, match="outside the canvas"):
        canvas_to_image(-0.5, 3, 480, 480, full)
    with pytest.raises(ValueError, match="finite number"):
        canvas_to_image(float("nan"), 3, 480, 480, full)
    with pytest.raises(ValueError, match="view="):
        canvas_to_image(1, 1, 480, 480, (0, 0, 0, 10))


@pytest.mark.parametrize(("view", "size"), [
    ((0, 160, 0, 160), (480, 480)),
    ((0, 308, 0, 226), (352, 480)),      # a real COVID-SemiSeg slice, 480 px tall
    ((20, 100, 60, 140), (413.7, 413.7)),  # zoomed, canvas scaled down by the browser
    ((0, 7, 0, 3), (3, 7)),               # fewer canvas pixels than image pixels
])
def test_every_pixel_centre_maps_back_to_its_pixel(view, size):
    # rows and columns map independently, so every row and every column is every pixel
    w, h = size
    vy0, vy1, vx0, vx1 = view
    for y in range(vy0, vy1):
        cx, cy = image_to_canvas(y + 0.5, vx0 + 0.5, w, h, view)
        assert canvas_to_image(cx, cy, w, h, view) == (y, vx0)
        # a pixel's top edge, where it is a float exactly, belongs to that pixel
        edge = (Fraction(y) - vy0) * Fraction(h) / (vy1 - vy0)
        if Fraction(float(edge)) == edge:
            assert canvas_to_image(0, float(edge), w, h, view)[0] == y
    for x in range(vx0, vx1):
        cx, cy = image_to_canvas(vy1 - 0.5, x + 0.5, w, h, view)
        assert canvas_to_image(cx, cy, w, h, view) == (vy1 - 1, x)


def test_canvas_size_and_zoom_view_by_hand():
    assert canvas_size((0, 160, 0, 160), 480) == (480, 480)
    assert canvas_size((0, 308, 0, 226), 480) == (352, 480)  # round(226 * 480 / 308) = 352
    assert canvas_size((10, 50, 20, 80), 480) == (480, 320)
    assert zoom_view((40, 80, 80, 120), (160, 160), 0.5) == (20, 100, 60, 140)
    assert zoom_view((0, 40, 0, 40), (160, 160), 0.5) == (0, 80, 0, 80)  # shifted inside
    assert zoom_view((120, 160, 120, 160), (160, 160), 0.5) == (80, 160, 80, 160)
    assert zoom_view((0, 100, 0, 10), (120, 160), 0.5) == (0, 120, 0, 20)  # cut at the image
    with pytest.raises(ValueError, match="outside the image"):
        zoom_view((0, 200, 0, 10), (160, 160))


# ---------------------------------------------------------------------------- the store


def test_store_restores_undoes_and_names_bad_lines(tmp_path):
    path = tmp_path / "labels.jsonl"
    store = AnnotationStore(path, {"dataset": "toy", "n_regions": 4})
    a = Annotation("point", "c0", 2, (0, 16, 16, 32), 5, 20, 1, "t")
    b = Annotation("background", "c1", 0, (16, 32, 0, 16), label=0, time="t")
    store.append(a)
    store.append(b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.jsonl"]  # no temp left over
    lines = [json.loads(s) for s in path.read_text().splitlines()]
    assert lines[0] == {"format": "covidlib.annotations/1", "dataset": "toy", "n_regions": 4}
    assert lines[1] == {"kind": "point", "case_id": "c0", "z": 2, "box": [0, 16, 16, 32],
                        "y": 5, "x": 20, "label": 1, "time": "t"}
    assert list(AnnotationStore(path, {"dataset": "toy", "n_regions": 4})) == [a, b]
    assert store.pop() == b
    assert list(AnnotationStore(path, {"dataset": "toy", "n_regions": 4})) == [a]
    with pytest.raises(DataError, match="written with n_regions=4, this session uses"):
        AnnotationStore(path, {"dataset": "toy", "n_regions": 16})
    path.write_text(path.read_text() + '{"kind": "point", "case_id": "c0", "z": 1, '
                    '"box": [0, 16, 0, 16], "y": 20, "x": 3, "label": 1}\n')
    # line 5: header, a, b, the undo of b (the log is append-only), then the bad line
    with pytest.raises(DataError, match=r"labels.jsonl: line 5: point \(20, 3\) is outside"):
        AnnotationStore(path, {"dataset": "toy"})
    path.write_text("hello\n")
    with pytest.raises(DataError, match="line 1: not JSON"):
        AnnotationStore(path, {})


# ------------------------------------------------------------------------- P1 scoring


class _Flat(nn.Module):
    """Equal logits everywhere (entropy log 2), with a dropout layer for MC sampling."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(torch.zeros(x.shape[0], 2, *x.shape[2:]))


# ----------------------------------------------------------------------------- session


def _cases() -> list[Case]:
    """Two 3-slice 32 x 32 HU cases; infection (label 1) in rows 4..7, columns 20..23."""
    out = []
    for i in range(2):
        img = np.full((3, 32, 32), -800.0, dtype=np.float32)
        mask = np.zeros((3, 32, 32), dtype=np.uint8)
        img[:, 4:8, 20:24] = -100.0 + 50 * i
        mask[:, 4:8, 20:24] = 1
        out.append(Case(f"c{i}", img, mask, meta={"infection_labels": (1,)}))
    return out


def _factory():
    return UNet2D(3, 2, base_width=4, depth=2, dropout=0.5)


def _session(path, **kw):
    args = {"model_factory": _factory, "n_regions": 4, "n_mc": 2, "size": 16,
            "regions_per_cycle": 2, "epochs": 2, "dataset": "toy", "regions": "grid"}
    return LabelSession(_cases(), path, **{**args, **kw})


def test_session_click_background_undo_next_and_reopen(tmp_path):
    path = tmp_path / "a.jsonl"
    s = _session(path)
    cur = s.current()
    assert cur.image.shape == cur.uncertainty.shape == (32, 32)
    assert cur.image.dtype == np.uint8 and cur.box in s.boxes((cur.case_id, cur.z))
    assert len(s.queue) == 2  # regions_per_cycle images, one region each
    y0, y1, x0, _x1 = cur.box
    with pytest.raises(ValueError, match="outside the region asked about"):
        s.click(y1, x0)
    assert len(s.annotations) == 0
    first = s.click(y0 + 1, x0 + 2)
    assert (first.kind, first.y, first.x, first.box) == ("point", y0 + 1, x0 + 2, cur.box)
    saved = [json.loads(line) for line in path.read_text().splitlines()]
    assert saved[1]["y"] == y0 + 1 and saved[1]["x"] == x0 + 2
    second_q = s.current()
    assert (second_q.case_id, second_q.z, second_q.box) != (cur.case_id, cur.z, cur.box)
    bg = s.background()
    assert bg.box == second_q.box and len(path.read_text().splitlines()) == 3
    assert s.ledger().total == 6.0  # 2 answers x 3 s (P1 Sec 5.3)
    # the label map of the first slice, by hand
    lm = s.label_map((cur.case_id, cur.z))
    expected = np.full((32, 32), IGNORE, np.uint8)
    if (bg.case_id, bg.z) == (cur.case_id, cur.z):
        expected[bg.box[0]:bg.box[1], bg.box[2]:bg.box[3]] = 0
    expected[y0 + 1, x0 + 2] = 1
    np.testing.assert_array_equal(lm, expected)
    # undo brings the background region back as the current one, and off the file
    assert s.undo() == bg
    assert (s.current().case_id, s.current().z, s.current().box) == (bg.case_id, bg.z, bg.box)
    undo_line = json.loads(path.read_text().splitlines()[-1])  # the log is append-only
    assert undo_line["kind"] == "undo" and undo_line["id"] == bg.id
    assert list(AnnotationStore(path, {"dataset": "toy", "n_regions": 4})) == [first]
    skipped = s.current()
    s.next()
    assert (s.current().case_id, s.current().z, s.current().box) != (
        skipped.case_id, skipped.z, skipped.box)
    # a new session on the same file restores the labels
    again = _session(path)
    assert again.restored == 1 and again.annotations == [first]
    with pytest.raises(DataError, match="written with n_regions=4"):
        _session(path, n_regions=16)


def test_a_label_outside_the_pool_is_refused_on_reopen(tmp_path):
    path = tmp_path / "b.jsonl"
    s = _session(path)
    s.background()
    with pytest.raises(DataError, match=r"label 1: slice \('c\d', \d\) is not in this session"):
        _session(path, slices=[("c0", 1)] if s.annotations[0].ref != ("c0", 1) else [("c1", 2)])


def test_scores_and_queue_follow_p1_acquisition(tmp_path):
    # equal logits: entropy log 2 everywhere, every region ties, P1's tie rule picks the
    # first region of the first slices (the pool is in (case, z) order)
    flat = _session(tmp_path / "f.jsonl", model_factory=_Flat)
    for ref in flat.refs:
        assert np.allclose(flat.uncertainty[ref], math.log(2), atol=1e-6)
    assert [(q.ref, q.box) for q in flat.queue] == [(("c0", 0), (0, 16, 0, 16)),
                                                    (("c0", 1), (0, 16, 0, 16))]
    # a real model: region scores are covidlib.acquisition's (max, P1 "Model Training")
    s = _session(tmp_path / "u.jsonl")
    for ref in s.refs:
        np.testing.assert_allclose(s.scores[ref], acquisition.region_scores(
            s.uncertainty[ref], s.boxes(ref), reduce="max").numpy(), rtol=1e-6)
    scores = np.stack([s.scores[r] for r in s.refs])
    picks = acquisition.select_regions(scores, 2)
    assert [(q.ref, q.box) for q in s.queue] == [(s.refs[i], s.boxes(s.refs[i])[k])
                                                 for i, k in picks]
    with pytest.raises(ValueError, match="reduce='median'"):
        _session(tmp_path / "m.jsonl", reduce="median")


def test_train_cycle_is_deterministic_and_needs_labels(tmp_path):
    s1 = _session(tmp_path / "1.jsonl")
    with pytest.raises(ValueError, match="no labels yet"):
        s1.train_cycle()
    s2 = _session(tmp_path / "2.jsonl")
    for s in (s1, s2):
        s.label_region(("c0", 1), (0, 16, 16, 32), RegionLabel("point", point=(5, 21, 1)))
        s.label_region(("c0", 1), (16, 32, 0, 16), RegionLabel("background"))
    r1, r2 = s1.train_cycle(), s2.train_cycle()
    assert (r1.cycle, r1.labels, r1.points, r1.backgrounds, r1.slices, r1.cost_seconds) == (
        1, 2, 1, 1, 1, 6.0)
    assert r1.train_loss == r2.train_loss
    for ref in s1.refs:
        np.testing.assert_array_equal(s1.scores[ref], s2.scores[ref])
    assert [(q.ref, q.box) for q in s1.queue] == [(q.ref, q.box) for q in s2.queue]
    with pytest.raises(ValueError, match="is answered"):
        s1.label_region(("c0", 1), (16, 32, 0, 16), RegionLabel("background"))


def test_simulate_with_the_mask_oracle(tmp_path):
    cases = _cases()
    s = _session(tmp_path / "sim.jsonl", eval_slices=[("c1", 0)])
    hist = simulate(s, MaskOracle(cases, seed=0), cycles=1, initial_images=1, progress=False)
    assert [h.cycle for h in hist] == [1, 2]
    assert hist[0].labels == 4 and hist[1].labels == 6  # K regions, then 2 per cycle
    for a in s.annotations:
        truth = cases[int(a.case_id[1])].mask[a.z]
        y0, y1, x0, x1 = a.box
        if a.kind == "point":
            assert truth[a.y, a.x] == 1
        else:
            assert truth[y0:y1, x0:x1].sum() == 0
    assert set(hist[1].to_dict()) >= {"test_dice", "cost_seconds", "train_seconds"}
    assert hist[1].cost_seconds == 18.0


def test_choose_pool_keeps_slices_with_lung():
    cases = _cases()
    cases[0].lung = np.zeros((3, 32, 32), bool)
    cases[0].lung[1] = True
    pool = choose_pool(cases, n=10)
    assert pool == [("c0", 1), ("c1", 0), ("c1", 1), ("c1", 2)]
    assert len(choose_pool(cases, n=2, seed=3)) == 2


# ------------------------------------------------------------------------------ widget


def test_widget_turns_canvas_clicks_into_image_points(tmp_path):
    pytest.importorskip("anywidget")
    from PIL import Image

    from covidlib.widgets.view import LabelWidget, heatmap_rgba

    s = _session(tmp_path / "w.jsonl")
    w = LabelWidget(s, max_side=480)
    cur = s.current()
    png = Image.open(io.BytesIO(base64.b64decode(w.image.split(",", 1)[1])))
    np.testing.assert_array_equal(np.asarray(png), cur.image)
    assert (w.view, w.canvas_size, w.box) == ([0, 32, 0, 32], [480, 480], list(cur.box))
    y0, _y1, x0, _x1 = cur.box
    # the centre of image pixel (y0 + 3, x0 + 5) on a canvas the browser shows 300 px wide
    cx, cy = (x0 + 5.5) * 300 / 32, (y0 + 3.5) * 300 / 32
    msg = w.handle_event({"event": "click", "cx": cx, "cy": cy, "width": 300, "height": 300})
    assert msg == f"point at row {y0 + 3}, column {x0 + 5} saved"
    assert (s.annotations[-1].y, s.annotations[-1].x) == (y0 + 3, x0 + 5)
    assert w.last_click == [y0 + 3, x0 + 5] and w.n_labels == 1
    # zoomed on the next region: the view shrinks and the mapping follows it
    w.handle_event({"event": "zoom"})
    nxt = s.current()
    assert w.zoom and tuple(w.view) == zoom_view(nxt.box, (32, 32), 0.5)
    vy0, vy1, vx0, vx1 = w.view
    wid, hei = w.canvas_size
    ny, nx = nxt.box[0] + 1, nxt.box[2] + 2
    w.handle_event({"event": "click", "cx": (nx + 0.5 - vx0) * wid / (vx1 - vx0),
                    "cy": (ny + 0.5 - vy0) * hei / (vy1 - vy0), "width": wid, "height": hei})
    assert (s.annotations[-1].y, s.annotations[-1].x) == (ny, nx)
    # background, undo and errors through the message handler
    w._on_msg(w, {"event": "background"}, [])
    assert s.annotations[-1].kind == "background" and "tagged background" in w.status
    w._on_msg(w, {"event": "undo"}, [])
    assert len(s.annotations) == 2 and "removed the background label" in w.status
    w._on_msg(w, {"event": "click", "cx": -3, "cy": 0, "width": 10, "height": 10}, [])
    assert "not saved: click (-3.0, 0.0) is outside the canvas" in w.status
    with pytest.raises(ValueError, match="unknown widget event 'dance'"):
        w.handle_event({"event": "dance"})
    # reopening gives the same labels to a new widget
    w2 = LabelWidget(_session(tmp_path / "w.jsonl"))
    assert w2.n_labels == 2 and "restored 2 labels" in w2.status
    rgba = heatmap_rgba(np.array([[0.0, math.log(2)], [2.0, math.log(2) / 2]]))
    assert rgba[..., 3].tolist() == [[0, 140], [140, 70]]  # 0.55 * 255 = 140.25
    assert w2.summary().startswith("2 labels (2 points, 0 background) · 6 s of clicking")


# ---------------------------------------------------------------- questions on the body


def test_body_mask_and_body_regions_by_hand():
    from covidlib.widgets import body_mask, body_regions

    gray = np.zeros((8, 8), np.uint8)
    gray[2:7, 1:6] = 200          # the body ...
    gray[3:5, 2:4] = 10           # ... with a dark lung inside (a hole, filled)
    gray[0, 7] = 200              # a speck of noise (a smaller component, dropped)
    body = body_mask(gray)
    expected = np.zeros((8, 8), bool)
    expected[2:7, 1:6] = True
    np.testing.assert_array_equal(body, expected)
    assert body_mask(np.full((4, 4), 9, np.uint8)).all()  # no contrast: nothing left out
    boxes = [(0, 4, 0, 4), (0, 4, 4, 8), (4, 8, 0, 4), (4, 8, 4, 8)]
    # pixels of the body per box: 2*3=6, 2*2=4, 3*3=9, 3*2=6 of 16
    assert body_regions(body, boxes, 0.3).tolist() == [True, False, True, True]
    assert body_regions(body, boxes, 0.0).tolist() == [True, True, True, True]
    with pytest.raises(ValueError, match="min_fraction=2"):
        body_regions(body, boxes, 2)


def _lung_cases() -> list[Case]:
    cases = _cases()
    for c in cases:  # the lung: the top half (the infection, rows 4..7, is inside it)
        c.lung = np.zeros(c.image.shape, bool)
        c.lung[:, :12, :] = True
    return cases


def test_body_mode_asks_only_about_regions_on_the_lung(tmp_path):
    args = {"model_factory": _Flat, "n_regions": 4, "n_mc": 2, "size": 16,
            "regions_per_cycle": 6, "dataset": "toy"}
    s = LabelSession(_lung_cases(), tmp_path / "b.jsonl", **args)
    assert s.regions == "body"
    # one region per image (P1), ties to the first allowed region: the top row
    assert [q.box for q in s.queue] == [(0, 16, 0, 16)] * 6
    for ref in s.refs:
        assert s.allowed[ref].tolist() == [True, True, False, False]
    grid = LabelSession(_lung_cases(), tmp_path / "g.jsonl", regions="grid", **args)
    assert [q.box for q in grid.queue] == [(0, 16, 0, 16)] * 6
    for ref in grid.refs:  # answer the top row everywhere
        for box in ((0, 16, 0, 16), (0, 16, 16, 32)):
            grid.label_region(ref, box, RegionLabel("background"))
            s.label_region(ref, box, RegionLabel("background"))
    assert grid.queue and all(q.box[0] == 16 for q in grid.queue)  # the grid goes on below
    assert s.queue == [] and s.current() is None  # the body mode has nothing left to ask
    # without a lung mask the body comes from the image (here: the bright square)
    img = LabelSession(_cases(), tmp_path / "i.jsonl", **args)
    assert {q.box for q in img.queue} == {(0, 16, 16, 32)}
    rnd = LabelSession(_lung_cases(), tmp_path / "r.jsonl", strategy="random", **args)
    assert all(q.box[0] == 0 for q in rnd.queue) and len(rnd.queue) == 6
    with pytest.raises(ValueError, match="regions='lungs'"):
        LabelSession(_cases(), tmp_path / "x.jsonl", regions="lungs", **args)
    with pytest.raises(ValueError, match="strategy='bald'"):
        LabelSession(_cases(), tmp_path / "y.jsonl", strategy="bald", **args)


def test_warm_started_first_questions_fall_on_the_body(tmp_path, synthetic_root):
    from covidlib.data.api import open_dataset
    from covidlib.widgets import body_regions, pretrain

    cases = open_dataset("synthetic", synthetic_root).cases()[:3]
    other, mine = cases[:2], cases[2:]
    z0 = mine[0].n_slices // 2
    refs = [(c.case_id, z) for c in other for z in range(0, c.n_slices, 4)]
    state = pretrain(cases, refs, size=32, epochs=2, batch_size=8)
    pool = [(mine[0].case_id, z) for z in range(z0 - 3, z0 + 3)]
    s = LabelSession(cases, tmp_path / "warm.jsonl", n_regions=16, n_mc=2, size=32,
                     slices=pool, init_state=state, regions_per_cycle=5)
    assert s.warm and len(s.queue) == 5
    for q in s.queue:  # every question overlaps the lung (5 % of its pixels at least)
        lung = mine[0].lung[q.z]
        assert body_regions(lung, [q.box], 0.05).all()
    cold = LabelSession(cases, tmp_path / "cold.jsonl", n_regions=16, n_mc=2, size=32,
                        slices=pool, regions_per_cycle=5)
    warm_model = s.model.state_dict()
    assert any(not torch.equal(warm_model[k], v) for k, v in cold.model.state_dict().items())
    with pytest.raises(ValueError, match="init_state does not fit"):
        LabelSession(cases, tmp_path / "bad.jsonl", model_factory=_factory, n_regions=16,
                     size=32, slices=pool, init_state=state)


def test_labels_given_while_a_cycle_trains_are_kept(tmp_path):
    import threading

    path = tmp_path / "bg.jsonl"
    s = _session(path)
    s.label_region(("c0", 1), (0, 16, 16, 32), RegionLabel("point", point=(5, 21, 1)))
    started, clicked, fractions = threading.Event(), threading.Event(), []

    def on_progress(f):
        fractions.append(f)
        if not started.is_set():
            started.set()
            assert clicked.wait(30)

    done = []
    shown = s.current()
    s.start_cycle(on_progress, on_done=lambda r, e: done.append((r, e)))
    assert started.wait(30) and s.training
    with pytest.raises(ValueError, match="already running"):
        s.start_cycle()
    s.background()  # answered while the cycle trains
    after_click = s.current()
    assert json.loads(path.read_text().splitlines()[-1])["kind"] == "background"
    clicked.set()
    assert s.wait(60) and not s.training
    (result, error), = done
    assert error is None and result.labels == 1 and s.cycle == 1  # trained on the first label
    assert len(s.annotations) == 2 and s.annotations[-1].box == shown.box
    assert s.current().box == after_click.box  # the question on screen stays
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)


# ------------------------------------------------------------------------- labels out


def _export_fixture():
    cases = _cases()
    cases[0].spacing = (2.5, 0.75, 0.5)  # (z, y, x) mm
    anns = [Annotation("point", "c0", 1, (0, 16, 16, 32), 5, 21, 1, "2026-01-02T10:11:12"),
            Annotation("background", "c0", 1, (16, 32, 0, 16), label=0, time="t2"),
            Annotation("point", "c1", 2, (0, 16, 16, 32), 7, 23, 2, "t3"),
            Annotation("background", "c0", 0, (0, 16, 0, 16), label=0, time="t4")]
    return cases, anns


def _key(a):
    return (a.case_id, a.z, a.box, a.kind, a.y, a.x, a.label)


def test_export_points_csv_round_trips_and_names_bad_rows(tmp_path):
    from covidlib.widgets.export import from_points, read_points_csv, write_points_csv

    _, anns = _export_fixture()
    path = write_points_csv(anns, tmp_path / "p.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "kind,case_id,z,y,x,label,y0,y1,x0,x1,time"
    assert lines[1] == "point,c0,1,5,21,1,0,16,16,32,2026-01-02T10:11:12"
    assert lines[2] == "background,c0,1,,,0,16,32,0,16,t2"
    assert read_points_csv(path) == anns
    path.write_text(path.read_text().replace("point,c0,1,5,21", "point,c0,1,5,x21"))
    with pytest.raises(DataError, match=r"p.csv: line 2.*x='x21' is not an integer"):
        read_points_csv(path)
    oracle = from_points({("c0", 1): [(5, 21, 1), (30, 2, 0)]})
    assert [(a.kind, a.box, a.label) for a in oracle] == [
        ("point", (5, 6, 21, 22), 1), ("background", (30, 31, 2, 3), 0)]
    assert read_points_csv(write_points_csv(oracle, tmp_path / "o.csv")) == oracle


@pytest.mark.parametrize("fmt", ["nifti", "png"])
def test_export_label_masks_in_the_image_geometry_round_trip(tmp_path, fmt):
    from covidlib.data.readers import read_nifti
    from covidlib.widgets.export import label_volume, read_label_masks, write_label_masks

    cases, anns = _export_fixture()
    vol = label_volume(anns, (3, 32, 32), "c0")
    assert vol[1, 5, 21] == 1 and vol[1, 20, 3] == 0 and vol[1, 5, 20] == IGNORE
    assert (vol[2] == IGNORE).all() and (vol[0, :16, :16] == 0).all()
    files = write_label_masks(anns, cases, tmp_path / fmt, fmt=fmt)
    if fmt == "nifti":
        assert [f.name for f in files] == ["c0.labels.nii.gz", "c1.labels.nii.gz"]
        data, spacing = read_nifti(files[0])  # covidlib's own reader: same geometry
        assert data.shape == cases[0].image.shape and spacing == (2.5, 0.75, 0.5)
        np.testing.assert_array_equal(data, vol)
    else:
        assert sorted(f.relative_to(tmp_path / fmt).as_posix() for f in files) == [
            "c0/0000.png", "c0/0001.png", "c1/0002.png"]
    back = read_label_masks(tmp_path / fmt, n_regions=4)
    assert sorted(map(_key, back)) == sorted(map(_key, anns))  # masks keep no times/order


def test_export_slicer_markups_round_trip_with_spacing(tmp_path):
    from covidlib.widgets.export import SLICER_SCHEMA, read_slicer_markups, write_slicer_markups

    cases, anns = _export_fixture()
    files = write_slicer_markups(anns, cases, tmp_path / "mrk")
    assert [f.name for f in files] == ["c0.mrk.json", "c1.mrk.json"]
    doc = json.loads(files[0].read_text())
    assert doc["@schema"] == SLICER_SCHEMA
    fid, roi1, _roi2 = doc["markups"]
    assert fid["type"] == "Fiducial" and fid["coordinateSystem"] == "LPS"
    # point (z 1, y 5, x 21) with spacing x 0.5, y 0.75, z 2.5 mm -> LPS (-10.5, -3.75, 2.5)
    assert fid["controlPoints"][0]["position"] == [-10.5, -3.75, 2.5]
    assert roi1["type"] == "ROI" and roi1["size"] == [8.0, 12.0, 2.5]
    assert roi1["center"] == [-3.75, -17.625, 2.5]  # centre pixel (y 23.5, x 7.5)
    back = read_slicer_markups(tmp_path / "mrk", cases)
    assert sorted(back, key=_key) == sorted(anns, key=_key)  # times kept too
    with pytest.raises(DataError, match="case 'c0' is not loaded"):
        read_slicer_markups(files[0], cases[1:])


def test_widget_trains_in_the_background_and_keeps_clicks(tmp_path):
    import threading

    pytest.importorskip("anywidget")
    from covidlib.widgets.view import LabelWidget

    s = _session(tmp_path / "wb.jsonl")
    w = LabelWidget(s)
    w.handle_event({"event": "background"})
    gate, taken, original = threading.Event(), threading.Event(), s.train_cycle

    def gated(keep_current, on_progress):  # holds the cycle after it took its labels
        def hold(f):
            taken.set()
            assert gate.wait(30)
            on_progress(f)
        return original(keep_current=keep_current, on_progress=hold)

    s.train_cycle = gated
    assert w.handle_event({"event": "train"}).startswith("training a cycle in the background")
    assert w.busy and s.training and taken.wait(30)
    assert w.handle_event({"event": "train"}) == "a cycle is already training"
    w.handle_event({"event": "background"})  # buttons stay live while it trains
    assert len(s.annotations) == 2
    assert json.loads((tmp_path / "wb.jsonl").read_text().splitlines()[-1])["kind"] == \
        "background"
    gate.set()
    assert s.wait(60)
    assert not w.busy and w.progress == 1.0 and s.cycle == 1
    assert "cycle 1: trained on 1 labels" in w.status and len(s.annotations) == 2


@pytest.mark.slow
def test_measure_responsiveness_reports_every_number(tmp_path):
    from covidlib.widgets.timing import measure_responsiveness

    out = measure_responsiveness(clicks=2, threads=1, workdir=tmp_path)
    for key in ("click_saved_ms", "click_ms", "cycle_s"):
        assert out[key] > 0
    assert out["clicks"] == 2 and 1 <= out["clicks_during_training"] <= 2
    assert out["cycle_labels"] >= 4  # the 4 answers given before the cycle started
    assert (out["click_goal_ms"], out["cycle_goal_s"]) == (50.0, 10.0)
    assert list(tmp_path.iterdir()) == []  # its annotations file is gone


def test_warm_started_questions_fall_on_the_lungs_of_real_slices(tmp_path):
    """ma20-slices (real CT, lung masks as the alt mask "lung"): every first question of a
    warm-started session overlaps the lungs."""
    import os
    from pathlib import Path

    from covidlib.data.api import open_dataset
    from covidlib.experiments.label_demo import load_cases
    from covidlib.widgets import body_regions, pretrain

    shared = Path(os.environ.get("COVIDLIB_SHARED_DATA",
                                 Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not (shared / "ma20-slices").is_dir():
        pytest.skip(f"real data not found at {shared / 'ma20-slices'} (set "
                    "COVIDLIB_SHARED_DATA to the folder holding ma20-slices/)")
    cases = load_cases(open_dataset("ma20-slices", shared))
    by_id = {c.case_id: c for c in cases}
    warm = [("coronacases_001", z) for z in range(40, 120, 10)]
    state = pretrain(cases, warm, size=32, epochs=2)
    pool = choose_pool(cases, [("coronacases_002", z) for z in range(120)], n=12, seed=0)
    s = LabelSession(cases, tmp_path / "real.jsonl", n_regions=16, n_mc=2, size=32,
                     slices=pool, init_state=state, regions_per_cycle=8, dataset="ma20-slices")
    assert len(s.queue) == 8
    for q in s.queue:
        assert body_regions(by_id[q.case_id].lung[q.z], [q.box], 0.05).all()
