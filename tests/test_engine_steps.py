"""The engine's step loop (covidlib.engine_steps): train step, validation, step functions
plugged in, checkpoints resumed exactly (issue 13: P4's training runs on it)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from covidlib import checkpoint
from covidlib.engine import StepState, Validation, supervised_loss, train_step, train_steps
from covidlib.runtime import stream_rng


def _state(lr: float = 0.1) -> StepState:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    loss = supervised_loss(lambda y, t: ((y - t) ** 2).mean(), target_key="target")
    return StepState(model, torch.optim.SGD(model.parameters(), lr=lr), torch.device("cpu"),
                     loss_fn=loss)


def _batch(step: int) -> dict[str, torch.Tensor]:
    return {"image": torch.ones(1, 1), "target": torch.zeros(1, 1)}


def test_train_step_by_hand():
    # loss (w x - t)^2 with x = 1, t = 0: gradient 2 w, SGD lr 0.1: w 1 -> 0.8 -> 0.64
    st = _state()
    value, parts = train_step(st, _batch(0), "step 1")
    assert value == pytest.approx(1.0) and parts == {"loss": pytest.approx(1.0)}
    assert st.model.weight.item() == pytest.approx(0.8)
    hist = train_steps(st, _batch, 1, progress=False)
    assert st.model.weight.item() == pytest.approx(0.64) and hist == {}


def test_validation_and_on_step_and_a_plugged_step_function():
    st = _state()
    seen = []

    def step_fn(state, batch, where):  # a step of another shape (P4's Alg. 1 plugs in so)
        value, parts = train_step(state, batch, where)
        return value, {**parts, "where": where}

    hist = train_steps(st, _batch, 3, step_fn=step_fn, progress=False, desc="t",
                       on_step=lambda s, b, v, p: seen.append((s, round(v, 6), p["where"])),
                       validation=Validation(lambda m: {"w": m.weight.item()}, {2, 3}, "curve"))
    assert seen == [(0, 1.0, "t step 1"), (1, 0.64, "t step 2"), (2, 0.4096, "t step 3")]
    assert hist["curve_step"] == [2, 3]
    assert hist["curve_w"] == pytest.approx([0.64, 0.512])
    assert st.model.training  # back in training mode after validating
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        train_steps(st, _batch, 0)


def _noisy(step: int) -> dict[str, torch.Tensor]:
    x = torch.from_numpy(stream_rng(3, 1, step).normal(size=(4, 1))).float()
    return {"image": x, "target": 2 * x}


def _run(path, steps=5, die_at=None):
    st = _state(lr=0.05)
    hist: dict[str, list] = {"loss": []}
    calls = {"n": 0}

    def step_fn(state, batch, where):
        calls["n"] += 1
        if calls["n"] == die_at:
            raise KeyboardInterrupt
        return train_step(state, batch, where)

    train_steps(st, _noisy, steps, step_fn=step_fn, checkpoint=path, checkpoint_every=1,
                history=hist, progress=False,
                on_step=lambda s, b, v, p: hist["loss"].append(v))
    return st.model.weight.item(), hist


def test_interrupted_run_resumes_exactly_and_a_damaged_checkpoint_restarts(tmp_path):
    straight = _run(None)
    ck = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        _run(ck, die_at=3)
    assert checkpoint.load(ck)["step"] == 2 and checkpoint.read_header(ck)["sha256"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _run(ck) == straight  # resumed after step 2: the same weights and history
    assert not ck.exists()  # removed once the run is complete
    with pytest.raises(KeyboardInterrupt):
        _run(ck, die_at=3)
    data = bytearray(ck.read_bytes())
    data[-1] ^= 0xFF
    ck.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"run\.pt: .*moved aside.*restarts from step 0"):
        assert _run(ck) == straight
    assert list(tmp_path.glob("run.pt.corrupt-*"))
