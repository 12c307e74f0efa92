"""covidlib.engine: exact resume, atomic checkpoints, model selection, 2-D and 3-D runs."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from covidlib import checkpoint as ckpt
from covidlib import engine
from covidlib.engine import (
    CHECKPOINT_NAME,
    PREVIOUS_NAME,
    CheckpointMismatchError,
    amp_settings,
    autocast,
    evaluate,
    fit,
    load_checkpoint,
    predict,
    resolve_device,
    set_determinism,
    supervised_loss,
)

# ------------------------------------------------------------------ fixtures


class DictDataset(Dataset):
    """n random images (1, *size) with mask = image > 0.5; 4 consecutive items per volume."""

    def __init__(self, n: int = 16, size: tuple[int, ...] = (16, 16), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn((n, 1, *size), generator=g)
        self.masks = (self.images[:, 0] > 0.5).long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i], "case_id": f"vol{i // 4}"}


class TinyNet(nn.Module):
    """Two convolutions with dropout, so the global torch RNG matters during training."""

    def __init__(self, dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        drop = nn.Dropout2d if dims == 2 else nn.Dropout3d
        self.conv1 = conv(1, 4, 3, padding=1)
        self.drop = drop(0.25)
        self.conv2 = conv(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.drop(torch.relu(self.conv1(x))))


class RandomFlipLoss:
    """Cross-entropy on randomly flipped batches; owns its generator like the CB loss does."""

    def __init__(self) -> None:
        self.gen = torch.Generator().manual_seed(123)
        self.ce = nn.CrossEntropyLoss()

    def __call__(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        img, mask = batch["image"], batch["mask"]
        flip = torch.rand(img.shape[0], generator=self.gen) < 0.5
        img = torch.where(flip[:, None, None, None], img.flip(-1), img)
        mask = torch.where(flip[:, None, None], mask.flip(-1), mask)
        loss = self.ce(model(img), mask)
        return loss, {"ce": loss.item(), "flipped": float(flip.sum())}

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


@pytest.fixture(autouse=True, scope="module")
def _restore_global_determinism():
    """fit() turns on torch's deterministic mode process-wide; leave other test files as found."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


TRAIN = DictDataset(16, seed=0)
VAL = DictDataset(8, seed=1)


def run(ckpt: Path | None, epochs: int, **kw) -> tuple[nn.Module, engine.FitResult]:
    torch.manual_seed(0)
    model = TinyNet()
    kw.setdefault("lr", 1e-2)
    res = fit(
        model,
        kw.pop("loss_fn", None) or RandomFlipLoss(),
        TRAIN,
        kw.pop("val_data", VAL),
        epochs=epochs,
        batch_size=4,
        device="cpu",
        checkpoint_dir=ckpt,
        progress=False,
        **kw,
    )
    return model, res


def assert_same_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in rec.items() if k != "seconds"} for rec in history]


# ------------------------------------------------------------------ resume


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> engine.FitResult:
    return run(tmp_path_factory.mktemp("a"), 4)[1]


def test_uninterrupted_run_learns_and_checkpoints(uninterrupted) -> None:
    a = uninterrupted
    assert a.epochs_completed == 4 and [r["epoch"] for r in a.history] == [1, 2, 3, 4]
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"]
    assert a.best_score == max(r["val_dice"] for r in a.history)
    assert a.history[a.best_epoch - 1]["val_dice"] == a.best_score
    assert {"train_ce", "train_flipped", "val_dice", "val_dice_mean", "val_n_volumes"} <= set(
        a.history[0]
    )
    assert a.history[0]["val_n_volumes"] == 2  # 8 val slices in 2 volumes of 4
    ck = load_checkpoint(a.checkpoint_path)
    assert ck["epoch"] == 4 and ck["best_epoch"] == a.best_epoch
    assert sorted(p.name for p in a.checkpoint_path.parent.iterdir()) == sorted(
        [CHECKPOINT_NAME, PREVIOUS_NAME, f"best-epoch{a.best_epoch:04d}.pt"]
    )  # the previous checkpoint's best epoch was the same (3 of 4)
    assert a.best_path == a.checkpoint_path.parent / f"best-epoch{a.best_epoch:04d}.pt"


def test_resume_by_second_call_gives_identical_weights(uninterrupted, tmp_path) -> None:
    _, first = run(tmp_path, 2)
    assert first.epochs_completed == 2
    model, b = run(tmp_path, 4)  # fresh model, same folder: resumes after epoch 2
    a = uninterrupted
    assert_same_states(a.final_state, b.final_state)
    assert_same_states(a.best_state, b.best_state)
    assert_same_states(a.best_state, model.state_dict())  # restore_best
    assert without_seconds(a.history) == without_seconds(b.history)
    assert b.history[:2] == first.history  # read back from the checkpoint, seconds included
    assert (a.best_epoch, a.best_score) == (b.best_epoch, b.best_score)


def test_resume_after_keyboard_interrupt(uninterrupted, tmp_path) -> None:
    def stop_after_2(epoch: int, record: dict) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, 4, on_epoch_end=stop_after_2)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 2
    _, b = run(tmp_path, 4)
    assert_same_states(uninterrupted.final_state, b.final_state)
    assert without_seconds(uninterrupted.history) == without_seconds(b.history)
    assert b.best_epoch == uninterrupted.best_epoch


def test_resume_without_rng_restore_diverges(uninterrupted, tmp_path, monkeypatch) -> None:
    # negative control: the equality above depends on the saved RNG states
    run(tmp_path, 2)
    monkeypatch.setattr(engine, "_restore_rng", lambda state: None)
    _, b = run(tmp_path, 4)
    assert not all(
        torch.equal(uninterrupted.final_state[k], b.final_state[k]) for k in b.final_state
    )


def test_completed_checkpoint_returns_without_training(tmp_path) -> None:
    run(tmp_path, 2)
    _, again = run(tmp_path, 2)
    assert again.epochs_completed == 2
    with pytest.warns(UserWarning, match="already holds 2 epochs"):
        _, fewer = run(tmp_path, 1)
    assert_same_states(again.final_state, fewer.final_state)


# ------------------------------------------------------------------ checkpoint files


def test_checkpoint_is_never_partial(tmp_path, monkeypatch) -> None:
    (tmp_path / f".{CHECKPOINT_NAME}.999.tmp").write_bytes(b"left by a killed process")
    run(tmp_path, 1)
    ckpt = tmp_path / CHECKPOINT_NAME
    before = ckpt.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, 2)
    assert ckpt.read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert load_checkpoint(ckpt)["epoch"] == 1
    monkeypatch.setattr(torch, "save", real_save)
    assert run(tmp_path, 2)[1].epochs_completed == 2


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch) -> None:
    # the one checkpointer (covidlib.checkpoint.save): a failed write leaves the old file
    target = tmp_path / "x.pt"
    ckpt.save({"v": torch.tensor([1])}, target)

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"garbage")
        raise RuntimeError("boom")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="boom"):
        ckpt.save({"v": torch.tensor([2])}, target)
    monkeypatch.undo()
    assert ckpt.load(target)["v"].item() == 1
    assert os.listdir(tmp_path) == ["x.pt"]


def test_config_mismatch_names_file_and_change(tmp_path) -> None:
    run(tmp_path, 1, lr=1e-2)
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint\.pt.*lr: 0\.01 -> 0\.001"):
        run(tmp_path, 2, lr=1e-3)
    _, res = run(tmp_path, 1, lr=1e-3, overwrite=True)
    assert res.epochs_completed == 1
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["config"]["lr"] == 1e-3


def test_unreadable_checkpoint_is_moved_aside_and_training_restarts(tmp_path) -> None:
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match=r"checkpoint\.pt: cannot read checkpoint.*moved to "
                      r"checkpoint\.pt\.corrupt-.*starts again from epoch 0"):
        _, res = run(tmp_path, 1)
    assert res.epochs_completed == 1
    (aside,) = tmp_path.glob("checkpoint.pt.corrupt-*")
    assert aside.read_bytes() == b"not a checkpoint"  # kept, never deleted


# ------------------------------------------------------- issue 16, case 4: verified on load


def _flip_one_bit(path: Path, from_end: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[-from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_bit_in_best_weights_is_found_and_the_run_restarts(uninterrupted, tmp_path):
    run(tmp_path, 4)
    best = tmp_path / f"best-epoch{uninterrupted.best_epoch:04d}.pt"
    _flip_one_bit(best)  # before: loaded silently and returned as the best model
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"best-epoch0003\.pt: sha256 of the "
                       r"payload is .* was written: the file was altered"):
        ckpt.load(best)
    with pytest.warns(UserWarning, match=r"best-epoch0003\.pt: sha256.*no good checkpoint is "
                      r"left: training starts again from epoch 0"):
        _, b = run(tmp_path, 4)
    assert_same_states(uninterrupted.best_state, b.best_state)  # retrained, same numbers
    assert len(list(tmp_path.glob("*.corrupt-*"))) >= 2  # best file and the checkpoints


def test_truncated_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path):
    run(tmp_path, 3)
    ck = tmp_path / CHECKPOINT_NAME
    ck.write_bytes(ck.read_bytes()[:-100])  # cut short
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"checkpoint\.pt: cut short or "
                       r"extended: the payload has \d+ bytes, \d+ were written"):
        load_checkpoint(ck)
    with pytest.warns(UserWarning, match=r"checkpoint\.pt: cut short.*resuming from "
                      r".*checkpoint\.prev\.pt after epoch 2"):
        _, b = run(tmp_path, 4)
    assert_same_states(uninterrupted.final_state, b.final_state)  # bit-identical resume
    assert without_seconds(uninterrupted.history) == without_seconds(b.history)


def test_config_digest_is_stored_and_checked(tmp_path):
    path = ckpt.save({"w": torch.ones(2)}, tmp_path / "x.pt", config_digest="abc")
    assert ckpt.read_header(path)["config_digest"] == "abc"
    assert torch.equal(ckpt.load(path, config_digest="abc")["w"], torch.ones(2))
    with pytest.raises(ckpt.CheckpointMismatchError,
                       match=r"x\.pt: written by a different configuration \(configuration "
                             r"digest abc -> abd\)"):
        ckpt.load(path, config_digest="abd")
    old = os.umask(0o022)
    try:
        path = ckpt.save({"w": 1}, tmp_path / "y.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_fit_keeps_a_live_writers_temp_file(tmp_path):
    import socket
    import subprocess
    import sys

    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        mine = tmp_path / f".{CHECKPOINT_NAME}.{host}.{live.pid}.tmp"
        theirs = tmp_path / f".{CHECKPOINT_NAME}.{host}.{dead.pid}.tmp"
        older = tmp_path / f".{CHECKPOINT_NAME}.{dead.pid}.tmp"  # an older version's name
        for p in (mine, theirs, older):
            p.write_bytes(b"half")
        run(tmp_path, 1)
        assert mine.exists() and not theirs.exists() and not older.exists()
    finally:
        live.kill()
        live.wait()


# ------------------------------------------------------------------ model selection


def scripted(values: list[float]):
    it = iter(values)
    return lambda model: {"dice": next(it)}


def test_best_val_selection_on_scripted_sequence() -> None:
    states: dict[int, dict] = {}

    def keep(epoch: int, record: dict) -> None:
        states[epoch] = engine._cpu_state(model_holder[0])

    model_holder: list[nn.Module] = []
    torch.manual_seed(0)
    model = TinyNet()
    model_holder.append(model)
    values = [0.2, 0.5, 0.4, 0.5, float("nan"), 0.1]
    res = fit(
        model,
        supervised_loss(nn.CrossEntropyLoss()),
        TRAIN,
        epochs=6,
        batch_size=8,
        lr=1e-2,
        device="cpu",
        progress=False,
        val_fn=scripted(values),
        on_epoch_end=keep,
    )
    # the tie at epoch 4 keeps the earlier epoch; nan is never the best
    assert res.best_epoch == 2 and res.best_score == 0.5
    assert_same_states(res.best_state, states[2])
    assert_same_states(res.final_state, states[6])
    assert_same_states(model.state_dict(), states[2])
    np.testing.assert_equal([r["val_dice"] for r in res.history], values)


def test_early_stopping_and_val_every() -> None:
    _, res = run(None, 10, val_fn=scripted([0.2, 0.5, 0.4, 0.45, 0.9]), early_stopping_patience=2)
    assert res.stopped_early and res.epochs_completed == 4 and res.best_epoch == 2

    _, res = run(None, 4, val_fn=scripted([0.3, 0.1]), val_every=2)
    assert ["val_dice" in r for r in res.history] == [False, True, False, True]
    assert res.best_epoch == 2


def test_no_validation_returns_final_weights() -> None:
    model, res = run(None, 1, val_data=None)
    assert res.best_epoch is None and math.isnan(res.best_score)
    assert_same_states(res.best_state, res.final_state)
    assert_same_states(model.state_dict(), res.final_state)


def test_bad_arguments_and_losses() -> None:
    with pytest.raises(ValueError, match="epochs"):
        run(None, 0)
    with pytest.raises(ValueError, match="lr"):
        run(None, 1, lr=-1.0)
    with pytest.raises(KeyError, match="metric='hd'"):
        run(None, 1, metric="hd")

    def nan_loss(model, batch):
        return model(batch["image"]).sum() * float("nan"), {}

    with pytest.raises(FloatingPointError, match="epoch 1 step 1: loss is nan"):
        run(None, 1, loss_fn=nan_loss)
    with pytest.raises(KeyError, match="val_data: items must be dicts with 'image' and 'mask'"):
        run(None, 1, val_data=ListDataset([{"image": torch.ones(1, 16, 16)}]))
    with pytest.raises(KeyError, match="'target'"):
        run(None, 1, loss_fn=supervised_loss(nn.CrossEntropyLoss(), target_key="target"))


# ------------------------------------------------------------------ 3-D and precision


def test_3d_run_with_progress_bars(capsys) -> None:
    data = DictDataset(4, size=(8, 8, 8), seed=3)
    torch.manual_seed(0)
    model = TinyNet(dims=3)
    res = fit(
        model,
        supervised_loss(nn.CrossEntropyLoss()),
        data,
        data,
        epochs=2,
        batch_size=2,
        lr=1e-2,
        device="cpu",
        progress=True,
    )
    assert "fit: 100%" in capsys.readouterr().err
    assert res.epochs_completed == 2 and res.best_epoch in (1, 2)
    assert res.final_state["conv1.weight"].shape == (4, 1, 3, 3, 3)
    assert 0.0 <= res.history[-1]["val_dice"] <= 1.0
    assert res.history[-1]["val_n_volumes"] == 1  # the 4 volumes share case id "vol0"


def test_amp_settings_and_autocast_without_gpu() -> None:
    assert amp_settings(torch.device("cuda")) == (torch.bfloat16, torch.channels_last)
    assert amp_settings("cuda:0", spatial_dims=3) == (torch.bfloat16, torch.channels_last_3d)
    assert amp_settings("cpu", 3) == (None, torch.contiguous_format)
    with pytest.raises(ValueError, match="spatial_dims"):
        amp_settings("cuda", 4)
    with warnings.catch_warnings():  # "CUDA is not available" on machines without a GPU
        warnings.simplefilter("ignore", UserWarning)
        assert isinstance(autocast("cuda", torch.bfloat16), torch.autocast)
    with autocast("cpu", torch.bfloat16):
        y = nn.Linear(3, 2)(torch.ones(1, 3))
    assert y.dtype == torch.bfloat16
    with autocast("cpu", None):
        assert nn.Linear(3, 2)(torch.ones(1, 3)).dtype == torch.float32


def test_gpu_code_path_runs_on_cpu(monkeypatch) -> None:
    # exercise the bf16-autocast + channels_last branch of fit/predict with CPU kernels
    monkeypatch.setattr(
        engine, "amp_settings", lambda dev, sd=2: (torch.bfloat16, torch.channels_last)
    )
    seen = []

    def loss_fn(model, batch):
        seen.append(batch["image"].is_contiguous(memory_format=torch.channels_last))
        logits = model(batch["image"])
        seen.append(logits.dtype)
        return nn.functional.cross_entropy(logits.float(), batch["mask"]), {}

    model, res = run(None, 1, loss_fn=loss_fn)
    assert seen[:2] == [True, torch.bfloat16]
    assert 0.0 <= res.history[0]["val_dice"] <= 1.0
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_resolve_device(monkeypatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA was requested"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu-please")


def test_set_determinism_repeats_every_generator() -> None:
    import random

    set_determinism(7)
    a = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    set_determinism(7)
    b = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    assert a == b
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"]
    with pytest.raises(ValueError, match="seed"):
        set_determinism(-1)


# ------------------------------------------------------------------ predict / evaluate


class SignModel(nn.Module):
    """Logits (0, x): foreground exactly where the image is > 0 (ties go to background)."""

    def __init__(self, channels: int = 2):
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.channels == 1 else torch.cat([torch.zeros_like(x), x], 1)


class ListDataset(Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def hand_dataset(case_ids: list[str] | None = None, mask_channel: bool = False) -> ListDataset:
    # item 0: pred [[1,0],[1,0]] vs mask [[1,1],[0,0]] -> TP 1, FP 1, FN 1, TN 1
    # item 1: pred empty        vs mask [[0,0],[0,1]] -> FN 1, TN 3
    images = [torch.tensor([[1.0, -1.0], [1.0, -1.0]]), -torch.ones(2, 2)]
    masks = [torch.tensor([[1, 1], [0, 0]]), torch.tensor([[0, 0], [0, 1]])]
    items = []
    for i, (img, m) in enumerate(zip(images, masks, strict=True)):
        item = {"image": img[None], "mask": m[None] if mask_channel else m}
        if case_ids:
            item["case_id"] = case_ids[i]
        items.append(item)
    return ListDataset(items)


@pytest.mark.parametrize("channels", [1, 2])
def test_evaluate_by_hand(channels: int) -> None:
    out = evaluate(SignModel(channels), hand_dataset(), "cpu", batch_size=1)
    # summed: TP 1, FP 1, FN 2, TN 4
    assert out["dice"] == pytest.approx(2 / 5)
    assert out["iou"] == pytest.approx(1 / 4)
    assert out["ppv"] == pytest.approx(1 / 2)
    assert out["sens"] == pytest.approx(1 / 3)
    assert out["spec"] == pytest.approx(4 / 5)
    # per item: dice 0.5 and 0.0; ppv 0.5 and undefined
    assert out["dice_mean"] == pytest.approx(0.25) and out["dice_std"] == pytest.approx(0.25)
    assert out["ppv_mean"] == pytest.approx(0.5) and out["ppv_n"] == 1
    assert out["n_volumes"] == 2


def test_evaluate_groups_by_case_id_and_accepts_channel_masks() -> None:
    out = evaluate(SignModel(), hand_dataset(["v", "v"], mask_channel=True), "cpu", batch_size=2)
    assert out["n_volumes"] == 1
    assert out["dice_mean"] == pytest.approx(2 / 5) and out["dice_std"] == 0.0


def test_evaluate_errors() -> None:
    bad = ListDataset([{"image": torch.ones(1, 2, 2), "mask": torch.ones(3, 3)}])
    with pytest.raises(ValueError, match=r"batch\['mask'\] has shape \(1, 3, 3\)"):
        evaluate(SignModel(), bad, "cpu")
    missing = ListDataset([{"image": torch.ones(1, 2, 2)}])
    with pytest.raises(KeyError, match="'mask'"):
        evaluate(SignModel(), missing, "cpu")
    with pytest.raises(ValueError, match="empty"):
        evaluate(SignModel(), ListDataset([]), "cpu")


def test_predict_probabilities_in_order() -> None:
    data = hand_dataset(["a", "b"])
    out = list(predict(SignModel(), data, "cpu", batch_size=1))
    assert [b["case_id"] for _, b in out] == [["a"], ["b"]]
    probs = out[0][0]
    assert probs.shape == (1, 2, 2, 2) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones(1, 2, 2))
    assert probs[0, 1, 0, 0] == pytest.approx(1 / (1 + math.exp(-1)))  # softmax of (0, 1)
    assert torch.is_grad_enabled()  # no_grad does not leak out of the generator


def test_active_learning_state_is_verified_on_load(tmp_path):
    from covidlib import active

    state = {"format": active.STATE_FORMAT, "cycle": 1, "labels": torch.arange(64)}
    active._save_state(tmp_path, state)
    assert torch.equal(active.load_state(tmp_path)["labels"], torch.arange(64))
    _flip_one_bit(tmp_path / active.STATE_NAME, from_end=100)  # a label changed on disk
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"al_state\.pt: sha256 .* altered; "
                       "the active-learning state cannot be used"):
        active.load_state(tmp_path)
