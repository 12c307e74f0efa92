"""Engine-form losses: PL / CB on batches, and exact resume of CB training (transform RNG)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from covidlib.engine import fit
from covidlib.losses import ConsistencyLoss, PointLoss
from covidlib.losses.batch import ConsistencyBatchLoss, PointBatchLoss
from covidlib.losses.point import IGNORE


class PointsDataset(Dataset):
    """8 random 8x8 images; points: one infection pixel where image > 1, one background."""

    def __init__(self, n: int = 8):
        g = torch.Generator().manual_seed(1)
        self.images = torch.randn((n, 1, 8, 8), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        img = self.images[i]
        mask = (img[0] > 1.0).long()
        points = torch.full((8, 8), IGNORE, dtype=torch.long)
        points[0, 0] = 0
        if mask.any():
            y, x = torch.nonzero(mask)[0]
            points[y, x] = 1
        return {"image": img, "mask": mask, "points": points}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_point_batch_loss_equals_point_loss_on_the_model_output():
    ds = PointsDataset()
    batch = {k: torch.stack([ds[i][k] for i in range(4)]) for k in ("image", "points")}
    model = _net()
    loss, parts = PointBatchLoss()(model, batch)
    assert torch.allclose(loss, PointLoss("mean")(model(batch["image"]), batch["points"]))
    assert parts == {"point": pytest.approx(float(loss.detach()))}
    with pytest.raises(KeyError, match="batch\\['points'\\]"):
        PointBatchLoss()(model, {"image": batch["image"]})


def test_consistency_batch_loss_state_round_trips_the_generator():
    loss = ConsistencyBatchLoss(ConsistencyLoss("flip_rot"), seed=3)
    state = loss.state_dict()
    first = torch.randint(0, 100, (5,), generator=loss.generator)
    loss.load_state_dict(state)
    assert torch.equal(torch.randint(0, 100, (5,), generator=loss.generator), first)
    with pytest.raises(KeyError, match="generator_state"):
        loss.load_state_dict({})


def _train(tmp_path, epochs: int):
    model = _net()
    result = fit(model, ConsistencyBatchLoss(ConsistencyLoss("flip_rot", lam=0.5), seed=7),
                 PointsDataset(), PointsDataset(), epochs=epochs, lr=1e-2, batch_size=4,
                 checkpoint_dir=tmp_path, progress=False, restore_best=False)
    return model, result


def test_cb_training_resumes_to_identical_weights(tmp_path):
    full, full_res = _train(tmp_path / "a", 4)
    _train(tmp_path / "b", 2)
    resumed, res = _train(tmp_path / "b", 4)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full_res.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in res.history]
    assert {"train_point", "train_point_transformed", "train_consistency"} <= set(res.history[-1])
