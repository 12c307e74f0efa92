"""The labelling session on the active-learning core (covidlib.active_loop): the questions
of a simulated annotator checked by hand, resume from the saved loop state, the end of the
pool, and the oracle of session_sim as the core's oracle."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from covidlib.active_loop import Query as LoopQuery
from covidlib.data.oracle import RegionLabel
from covidlib.data.types import Case
from covidlib.models import UNet2D
from covidlib.widgets import LabelSession, MaskOracle, simulate

# K = 4 regions of a 32 x 32 slice, in P1's raster order
TL, TR, BL, BR = (0, 16, 0, 16), (0, 16, 16, 32), (16, 32, 0, 16), (16, 32, 16, 32)


def _cases() -> list[Case]:
    """Two 3-slice 32 x 32 cases; infection (label 1) in rows 4..7, columns 20..23: inside
    the top-right region TR only."""
    mask = np.zeros((3, 32, 32), dtype=np.uint8)
    mask[:, 4:8, 20:24] = 1
    image = np.where(mask > 0, -100.0, -800.0).astype(np.float32)
    return [Case(f"c{i}", image + 50.0 * i * mask, mask.copy(),
                 meta={"infection_labels": (1,)}) for i in range(2)]


class _Level(nn.Module):
    """Equal logits whatever it learns (the entropy is log 2 everywhere, every region ties),
    with one trainable weight and MC dropout."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(torch.zeros(x.shape[0], 2, *x.shape[2:]) + 0 * self.w)


def _unet():
    return UNet2D(3, 2, base_width=4, depth=2, dropout=0.5)


def _session(path, **kw):
    args = {"model_factory": _Level, "n_regions": 4, "n_mc": 2, "size": 16,
            "regions_per_cycle": 2, "epochs": 1, "dataset": "toy", "regions": "grid",
            "slices": [("c0", 0), ("c0", 1), ("c1", 0)]}
    return LabelSession(_cases(), path, **{**args, **kw})


def _first_pixel(case_id, z, box):
    """A deterministic annotator: the region's first infection pixel, else background."""
    mask = {c.case_id: c for c in _cases()}[case_id].mask[z]
    y0, y1, x0, x1 = box
    ys, xs = np.nonzero(mask[y0:y1, x0:x1])
    if not len(ys):
        return RegionLabel("background")
    return RegionLabel("point", point=(y0 + int(ys[0]), x0 + int(xs[0]), 1))


def test_simulated_annotator_asks_the_regions_worked_out_by_hand(tmp_path):
    s = _session(tmp_path / "a.jsonl")
    # cycle 0 is the initial model: every region ties, so P1's rule takes the first region
    # of the first two images (one region per image)
    assert s.cycle == 0 and s.loop.cycle == 1 and [r["cycle"] for r in s.records] == [0]
    assert [(q.ref, q.box) for q in s.queue] == [(("c0", 0), TL), (("c0", 1), TL)]
    assert s.loop.pending == [LoopQuery((("c0", 0), TL), s.queue[0].score),
                              LoopQuery((("c0", 1), TL), s.queue[1].score)]
    asked = []
    simulate(s, MaskOracle(_cases(), seed=0), cycles=3, progress=False,
             on_cycle=lambda r: asked.append([(q.ref, q.box) for q in s.queue]))
    # TL of c0/0 and c0/1 answered (background) -> TR of both (infection: points) -> BL
    assert [(a.ref, a.box, a.kind) for a in s.annotations] == [
        (("c0", 0), TL, "background"), (("c0", 1), TL, "background"),
        (("c0", 0), TR, "point"), (("c0", 1), TR, "point"),
        (("c0", 0), BL, "background"), (("c0", 1), BL, "background")]
    for a in s.annotations:
        if a.kind == "point":  # the oracle clicked on the infection, inside the region
            assert 4 <= a.y < 8 and 20 <= a.x < 24
    assert asked == [[(("c0", 0), TR), (("c0", 1), TR)], [(("c0", 0), BL), (("c0", 1), BL)],
                     [(("c0", 0), BR), (("c0", 1), BR)]]
    rec = s.records
    assert [r["cycle"] for r in rec] == [0, 1, 2, 3] and s.cycle == 3 == s.loop.cycle - 1
    assert [r["labels"] for r in rec] == [0, 2, 4, 6]
    assert [r["points"] for r in rec] == [0, 0, 2, 2]
    assert [r["backgrounds"] for r in rec] == [0, 2, 2, 4]
    assert [r["cost_seconds"] for r in rec] == [0.0, 6.0, 12.0, 18.0]  # 3 s per answer
    assert [r["slices"] for r in rec] == [0, 2, 2, 2]
    assert np.isnan(rec[0]["train_loss"]) and rec[0]["train_seconds"] == 0.0
    assert [h.cycle for h in s.history] == [1, 2, 3]
    # the label map the fourth cycle would train on, by hand (c0/0: TL, BL background,
    # one click at the first pixel the oracle drew, the rest unlabelled)
    lm = s.label_map(("c0", 0))
    assert (lm[:16, :16] == 0).all() and (lm[16:, :16] == 0).all() and (lm[16:, 16:] == 255).all()
    click = next(a for a in s.annotations if a.ref == ("c0", 0) and a.kind == "point")
    assert lm[click.y, click.x] == 1 and (lm[:16, 16:] == 1).sum() == 1


def test_mask_oracle_is_the_cores_oracle():
    cases = _cases()
    queries = [LoopQuery((("c0", 0), TR)), LoopQuery((("c1", 2), BL))]
    a, b = MaskOracle(cases, seed=3).answers(queries, cycle=5)
    one = MaskOracle(cases, seed=3)
    assert (a, b) == (one("c0", 0, TR), one("c1", 2, BL))
    assert a.kind == "point" and b.kind == "background"


def _run(session, cycles):
    """Answer the questions with the deterministic annotator and train, ``cycles`` times."""
    for _ in range(cycles):
        for _ in range(session.regions_per_cycle):
            q = session.current()
            session.answer(_first_pixel(q.case_id, q.z, q.box))
        session.train_cycle()


def _strip(path):
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in path.read_text().splitlines()]


@pytest.mark.parametrize("strategy", ["entropy", "random"])
def test_a_session_reopened_on_its_state_goes_on_like_one_never_closed(tmp_path, strategy):
    kw = {"model_factory": _unet, "strategy": strategy, "epochs": 2}
    whole = _session(tmp_path / "whole.jsonl", **kw)
    _run(whole, 3)
    first = _session(tmp_path / "part.jsonl", state_dir=tmp_path / "state", **kw)
    _run(first, 1)
    assert (tmp_path / "state" / "al_state.pt").exists()
    again = _session(tmp_path / "part.jsonl", state_dir=tmp_path / "state", **kw)
    assert again.cycle == 1 and again.restored == 2
    assert [(q.ref, q.box) for q in again.queue] == [(q.ref, q.box) for q in first.queue]
    for k, v in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v)
    for ref in again.refs:
        np.testing.assert_array_equal(again.scores[ref], first.scores[ref])
    _run(again, 2)
    same = [k for k in whole.records[0] if k != "train_seconds"]  # wall time differs
    pd.testing.assert_frame_equal(pd.DataFrame(again.records)[same],
                                  pd.DataFrame(whole.records)[same])  # NaN-aware
    assert _strip(tmp_path / "part.jsonl") == _strip(tmp_path / "whole.jsonl")
    for k, v in whole.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v)
    assert [(q.ref, q.box) for q in again.queue] == [(q.ref, q.box) for q in whole.queue]


def test_a_state_of_other_settings_is_refused(tmp_path):
    s = _session(tmp_path / "a.jsonl", state_dir=tmp_path / "st")
    _run(s, 1)
    with pytest.raises(ValueError, match="written by another configuration"):
        _session(tmp_path / "a.jsonl", state_dir=tmp_path / "st", n_mc=3)
    fresh = _session(tmp_path / "b.jsonl", state_dir=tmp_path / "none")
    assert fresh.cycle == 0 and not (tmp_path / "none").exists()  # made by the first save


def test_the_loop_ends_with_the_pool_and_an_undo_reopens_it(tmp_path):
    s = _session(tmp_path / "e.jsonl", slices=[("c1", 1)])
    for box in (TL, TR, BL, BR):
        s.label_region(("c1", 1), box, _first_pixel("c1", 1, box))
    assert s.queue == [] and s.current() is None
    res = s.train_cycle()
    assert (res.cycle, res.labels, res.points) == (1, 4, 1) and s.loop.done
    with pytest.raises(ValueError, match="every region of the pool is answered"):
        s.train_cycle()
    undone = s.undo()
    assert undone.box == BR and [(q.ref, q.box) for q in s.queue] == [(("c1", 1), BR)]
    assert s.train_cycle().labels == 3 and not s.loop.done
    assert [(q.ref, q.box) for q in s.queue] == [(("c1", 1), BR)]
