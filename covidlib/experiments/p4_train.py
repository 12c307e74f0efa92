"""P4 networks, training (teacher and students, Alg. 1), inference, evaluation and the
mechanism probe (see :mod:`covidlib.experiments.p4` for the protocol).

Training runs on the engine's step loop (:func:`covidlib.engine.train_steps`): the teacher
and ``fully`` with the engine's :func:`~covidlib.engine.train_step` on P4's combo loss
(:func:`p4_mean_loss`), the students with :class:`ReweightedStep` (one iteration of Alg. 1)
plugged in as the step function; batches come from one random stream per step
(:func:`covidlib.runtime.stream_rng`), checkpoints from :mod:`covidlib.checkpoint`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from covidlib import reweight as rw
from covidlib.data.manifest import natural_key
from covidlib.data.preprocess import resize_probabilities
from covidlib.engine import (
    StepState,
    Validation,
    amp_settings,
    autocast,
    supervised_loss,
    train_steps,
)
from covidlib.experiments.p4_data import (
    Item,
    TestItem,
    _batch,
    sample_patch,
)
from covidlib.experiments.p4_settings import (
    P4Settings,
)
from covidlib.metrics import confusion, example_dice, hausdorff_hd95, scores
from covidlib.models import resunet2d_p4, resunet3d_p4
from covidlib.report.masks import encode_mask
from covidlib.runtime import stream_rng

# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def make_model(dims: int) -> nn.Module:
    """P4's residual U-Net: :func:`covidlib.models.resunet3d_p4` (3-D) or
    :func:`resunet2d_p4` (the 2-D variant)."""
    if dims == 3:
        return resunet3d_p4()
    if dims == 2:
        return resunet2d_p4()
    raise ValueError(f"make_model: dims={dims!r} must be 2 or 3")


def _optimizer(model: nn.Module, s: P4Settings) -> torch.optim.Optimizer:
    if s.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=float(s.lr))
    return torch.optim.SGD(model.parameters(), lr=float(s.lr))  # Eq. 9 read literally


# --------------------------------------------------------------------------------------------
# Training: the engine's step loop (covidlib.engine_steps.train_steps) with P4's batches
# --------------------------------------------------------------------------------------------


def _patch_shape(dims: int, s: P4Settings) -> list[int]:
    return list(s.patch) if dims == 3 else [int(s.size_2d)] * 2


def _keep_steps(steps: int, n: int) -> set[int]:
    return set(np.linspace(0, steps - 1, min(steps, n)).round().astype(int).tolist())


def p4_mean_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """P4 Eq. 1 (the combo loss of every sample, :data:`covidlib.reweight.p4_loss`) averaged
    over the batch: the loss of the fully supervised networks (Sec. 2.3)."""
    return rw.p4_loss(logits, target).mean()


@dataclass(frozen=True)
class ReweightedStep:
    """One iteration of P4 Alg. 1 as a step function of :func:`covidlib.engine.train_steps`:
    the weights of the pseudo batch (lines 4-16, :func:`covidlib.reweight.compute_weights`;
    ``lam=None``: uniform ``1 / C_p``), then the update of Eq. 9 (lines 17-20,
    :func:`covidlib.reweight.weighted_update`), plus the expert batch's mean loss when
    ``expert_term``. The batch is ``{"pseudo": ..., "expert": ...}``; the parts returned hold
    the loss terms and the weights ``w_star`` / ``w_com``."""

    lam: float | None
    rectify: bool
    alpha: float
    norm: Literal["l2", "mean_abs"] = "l2"
    rgs_method: rw.RGSMethod = "meta"
    expert_term: bool = True

    @classmethod
    def for_mode(cls, mode: str, s: P4Settings) -> ReweightedStep:
        """The step of method ``mode`` (:data:`covidlib.reweight.MODES`) with ``s``."""
        lam, rectify = rw.mode_settings(mode, float(s.lam))
        return cls(lam, rectify, float(s.meta_lr), s.gem_norm, s.rgs_method,
                   bool(s.expert_term))

    def __call__(self, state: StepState, batch: Mapping[str, Any], where: str
                 ) -> tuple[float, dict[str, Any]]:
        dev = state.device
        x_p, y_p = batch["pseudo"]["image"].to(dev), batch["pseudo"]["label"].to(dev)
        x_v, y_v = batch["expert"]["image"].to(dev), batch["expert"]["label"].to(dev)
        with autocast(dev, state.amp_dtype):
            res = rw.compute_weights(state.model, x_p, y_p, x_v, y_v, lam=self.lam,
                                     rectify=self.rectify, alpha=self.alpha, norm=self.norm,
                                     rgs_method=self.rgs_method)
            parts = rw.weighted_update(
                state.model, state.optimizer, x_p, y_p, res.w_star,
                x_e=x_v if self.expert_term else None, y_e=y_v if self.expert_term else None)
        return parts["loss"], {**parts, "w_star": res.w_star, "w_com": res.w_com}


def monitor_dice(model: nn.Module, items: Sequence[Item], s: P4Settings,
                 device: torch.device) -> float:
    """Dice of the summed confusion over ``items`` (labels at the working resolution); the
    model is left in training mode."""
    if items and all(it.image.ndim == 2 and it.image.shape == items[0].image.shape
                     for it in items):
        preds = predict_slices(model, [it.image for it in items], s, device) > 0.5
    else:
        preds = [predict_foreground(model, it.image, s, device) > 0.5 for it in items]
    conf = sum(confusion(p, it.label > 0) for p, it in zip(preds, items, strict=True))
    model.train()
    return float(scores(conf)["dice"])


def curve_items(test: Sequence[TestItem], n: int) -> list[Item]:
    """Up to ``n`` held-out items for the learning curve, evenly spread: slices of the test
    stacks (2-D volumes stored as slices) or the test items themselves."""
    pool: list[Item] = []
    for t in test:
        if t.slices:
            pool += [Item(f"{t.item.case_id}:{z}", t.item.image[z], label=t.item.label[z])
                     for z in range(t.item.image.shape[0])]
        else:
            pool.append(t.item)
    if n <= 0 or not pool:
        return []
    idx = np.unique(np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int))
    return [pool[i] for i in idx]


def train_supervised(model: nn.Module, items: Sequence[Item], s: P4Settings, steps: int,
                     seed: int, dims: int, device: torch.device, *, stream: int = 0,
                     checkpoint: Path | None = None, desc: str = "train",
                     progress: bool = True, monitor: Sequence[Item] = (),
                     monitor_points: int = 0) -> dict[str, list]:
    """Combo-loss training on expert items (the teacher ``Phi_sl`` and ``fully``): Adam,
    ``steps`` mini-batches of ``batch`` flipped patches (P4 Sec. 2.3, 4), through the
    engine's :func:`~covidlib.engine.train_step`. With ``monitor`` items, their Dice is
    measured after ``monitor_points`` evenly spaced steps (the engine's validate step: the
    learning curve ``curve_step`` / ``curve_dice``; never used to choose a model)."""
    model.to(device).train()
    dtype, _ = amp_settings(device, dims)
    state = StepState(model, _optimizer(model, s), device, amp_dtype=dtype,
                      loss_fn=supervised_loss(p4_mean_loss, target_key="label"))
    history: dict[str, list] = {"step": [], "loss": []}
    validation = None
    if monitor and monitor_points > 0:
        history.update(curve_step=[], curve_dice=[])
        at = set(np.linspace(0, steps, monitor_points + 1)[1:].round().astype(int).tolist())
        validation = Validation(lambda m: {"dice": monitor_dice(m, monitor, s, device)}, at,
                                key="curve")
    keep = _keep_steps(steps, int(s.history_max))
    patch = _patch_shape(dims, s)

    def batch(step: int) -> dict[str, Any]:
        return _batch(items, int(s.batch), patch, stream_rng(seed, stream, step), "label",
                      float(s.pos_fraction), flip=True)

    def log(step: int, _b: Any, value: float, _parts: Mapping[str, Any]) -> None:
        if step in keep:
            history["step"].append(step)
            history["loss"].append(value)

    return train_steps(state, batch, steps, on_step=log, validation=validation,
                       checkpoint=checkpoint, checkpoint_every=int(s.checkpoint_every),
                       history=history, progress=progress, desc=desc)


def train_student(model: nn.Module, mode: str, val: Sequence[Item], pool: Sequence[Item],
                  s: P4Settings, seed: int, dims: int, device: torch.device, *,
                  stream: int = 1, checkpoint: Path | None = None, desc: str = "student",
                  progress: bool = True) -> dict[str, list]:
    """``Phi_ssl`` by Alg. 1: per step a pseudo batch from ``pool`` (labels ``pseudo``) and
    an expert batch from ``val`` (``X_v``), one :class:`ReweightedStep` of ``mode``
    (:data:`reweight.MODES`) in the engine's step loop."""
    step_fn = ReweightedStep.for_mode(mode, s)
    model.to(device).train()
    dtype, _ = amp_settings(device, dims)
    state = StepState(model, _optimizer(model, s), device, amp_dtype=dtype)
    history: dict[str, list] = {"step": [], "loss": [], "w_star": [], "w_com": [],
                                "quality": []}
    keep = _keep_steps(steps := int(s.student_steps), int(s.history_max))
    patch = _patch_shape(dims, s)
    n = int(s.batch)
    has_truth = all(it.truth is not None for it in pool)

    def batch(step: int) -> dict[str, Any]:
        rng = stream_rng(seed, stream, step)  # one stream per step: pseudo, then expert
        bp = _batch(pool, n, patch, rng, "pseudo", float(s.pos_fraction), flip=False,
                    extra=("truth",) if has_truth else ())
        bv = _batch(val, n, patch, rng, "label", float(s.pos_fraction), flip=True)
        return {"pseudo": bp, "expert": bv}

    def log(step: int, b: Mapping[str, Any], value: float, parts: Mapping[str, Any]) -> None:
        if step not in keep:
            return
        history["step"].append(step)
        history["loss"].append(value)
        history["w_star"].append([float(v) for v in parts["w_star"].cpu()])
        history["w_com"].append([float(v) for v in parts["w_com"].cpu()])
        if has_truth:
            history["quality"].append(
                [float(q) for q in example_dice(b["pseudo"]["label"].numpy(),
                                                b["pseudo"]["truth"])])

    return train_steps(state, batch, steps, step_fn=step_fn, on_step=log,
                       checkpoint=checkpoint, checkpoint_every=int(s.checkpoint_every),
                       history=history, progress=progress, desc=desc)


# --------------------------------------------------------------------------------------------
# Inference and evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_foreground(model: nn.Module, image: np.ndarray, s: P4Settings,
                       device: torch.device) -> np.ndarray:
    """Foreground probability map of one item at the working resolution: sliding windows
    of ``infer_roi`` with ``overlap`` (3-D), or the whole volume / slice in one pass when
    ``infer_roi`` is None (the network is fully convolutional; batch norm uses its running
    statistics)."""
    from monai.inferers import sliding_window_inference

    model.to(device).eval()
    dims = image.ndim
    dtype, _ = amp_settings(device, dims)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    with autocast(device, dtype):
        if dims == 3 and s.infer_roi is not None:
            logits = sliding_window_inference(x, tuple(s.infer_roi), int(s.batch),
                                              model, overlap=float(s.overlap))
        else:  # the whole volume / slice at once, zero-padded to a multiple of 16
            pad = [(-n) % 16 for n in x.shape[2:]]
            flat = [v for p in reversed(pad) for v in (0, p)]
            logits = model(F.pad(x, flat))[(..., *[slice(0, n) for n in x.shape[2:]])]
    return F.softmax(logits.float(), dim=1)[0, 1].cpu().numpy()


@torch.no_grad()
def predict_slices(model: nn.Module, images: Sequence[np.ndarray] | np.ndarray,
                   s: P4Settings, device: torch.device, chunk: int = 16) -> np.ndarray:
    """Foreground probabilities of equally sized 2-D slices ``(N, H, W)``, ``chunk`` slices
    per forward pass (batch norm in eval mode: each slice independent of the others)."""
    stack = np.asarray(images, dtype=np.float32)
    if stack.ndim != 3:
        raise ValueError(f"predict_slices: expected (N, H, W) slices, got {stack.shape}")
    model.to(device).eval()
    dtype, _ = amp_settings(device, 2)
    out = []
    for i in range(0, stack.shape[0], chunk):
        x = torch.from_numpy(np.ascontiguousarray(stack[i:i + chunk]))[:, None].to(device)
        pad = [(-n) % 16 for n in x.shape[2:]]
        with autocast(device, dtype):
            logits = model(F.pad(x, [0, pad[1], 0, pad[0]]))[..., :x.shape[2], :x.shape[3]]
        out.append(F.softmax(logits.float(), dim=1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *stack.shape[1:]), np.float32)


def _figure_slice(mask: np.ndarray) -> int | None:
    """Axial slice with the most infection (3-D), None for a 2-D mask."""
    return int(mask.reshape(mask.shape[0], -1).sum(1).argmax()) if mask.ndim == 3 else None


def figure_cases(test: Sequence[TestItem], n: int) -> list[str]:
    """Up to ``n`` infected test cases for the qualitative figures: all of them when few,
    else evenly spread over the infected-area quantiles (small to large lesions)."""
    infected = [t for t in test if t.mask.any()]
    order = sorted(infected, key=lambda t: (float(t.mask.mean()), t.item.case_id))
    if len(order) <= n:
        return [t.item.case_id for t in order]
    idx = np.linspace(0, len(order) - 1, n).round().astype(int)
    return [order[i].item.case_id for i in idx]


def _nan_none(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


def evaluate(model: nn.Module, test: Sequence[TestItem], s: P4Settings,
             device: torch.device, figure_ids: Sequence[str] = ()) -> dict[str, Any]:
    """Dice and Hausdorff distance per test case at its original grid and spacing (P4
    Tables 2-3), plus the predicted masks of the figure slices."""
    rows, figure = [], {}
    for t in test:
        if t.slices:
            prob = predict_slices(model, t.item.image, s, device)
        else:
            prob = predict_foreground(model, t.item.image, s, device)
        prob = resize_probabilities(prob, t.mask.shape)
        pred = prob > 0.5
        sc = scores(confusion(pred, t.mask))
        hd, hd95 = hausdorff_hd95(pred, t.mask, t.spacing)  # P4 Tables 2-3
        rows.append({"case_id": t.item.case_id, "dice": float(sc["dice"]),
                     "hd": _nan_none(hd), "hd95": _nan_none(hd95),
                     "empty_truth": not bool(t.mask.any()), "empty_pred": not bool(pred.any()),
                     "pred_voxels": int(pred.sum()), "true_voxels": int(t.mask.sum())})
        if t.item.case_id in figure_ids:
            z = _figure_slice(t.mask)
            sl = pred[z] if z is not None else pred
            figure[t.item.case_id] = {"z": z, "shape": list(sl.shape),
                                      "mask": encode_mask(sl)}
    return {"cases": rows, "figure": figure}


# --------------------------------------------------------------------------------------------
# Mechanism probe (issue 14): do the weights track the true quality of the pseudo-labels?
# --------------------------------------------------------------------------------------------


def probe_split(items: Sequence[Item]) -> tuple[list[Item], list[Item]]:
    """``(probe, expert)``: the expert-labelled items of ``X_v`` split by volume (naturally
    sorted volumes alternate: 1st, 3rd, ... probe; 2nd, 4th, ... expert), so that no probe
    example shares a volume with the expert batches."""
    vols = sorted({it.volume or it.case_id for it in items}, key=natural_key)
    if len(vols) < 2:
        raise ValueError(f"probe_split: {len(vols)} volume(s) in X_v; the probe needs two")
    probe = set(vols[0::2])
    return ([it for it in items if (it.volume or it.case_id) in probe],
            [it for it in items if (it.volume or it.case_id) not in probe])


def probe_weights(model: nn.Module, val: Sequence[Item], s: P4Settings, n_batches: int,
                  seed: int, dims: int, device: torch.device) -> dict[str, Any]:
    """The weights of Alg. 1 (RGS, RGM, RGS&M, and the rectified RGS+AL, RGS&M+AL) at the
    model's parameters, without updates, for ``n_batches`` pseudo-labelled batches whose
    true quality is known: expert-labelled items of the probe half of ``X_v``
    (:func:`probe_split`), pseudo-labelled by ``model`` (the teacher), with expert batches
    from the other half. Returns the weights and each example's true quality
    (:func:`covidlib.metrics.example_dice`), one list entry per example."""
    probe, expert = probe_split(val)
    n = int(s.batch)
    rng = stream_rng(seed, 7)
    pick = rng.choice(len(probe), size=n * n_batches, replace=len(probe) < n * n_batches)
    patch = _patch_shape(dims, s)
    labelled: dict[int, Item] = {}
    batches, quality = [], []
    for b in range(n_batches):
        parts = []
        for i in pick[b * n:(b + 1) * n]:
            i = int(i)
            if i not in labelled:
                it = probe[i]
                pseudo = (predict_foreground(model, it.image, s, device) > 0.5).astype(np.uint8)
                labelled[i] = Item(it.case_id, it.image, pseudo=pseudo, truth=it.label,
                                   volume=it.volume)
            parts.append(sample_patch(labelled[i], patch, rng, "pseudo",
                                      float(s.pos_fraction), extra=("truth",)))
        bv = _batch(expert, n, patch, rng, "label", float(s.pos_fraction), flip=True)
        x_p = torch.from_numpy(np.stack([p["image"] for p in parts]))[:, None].to(device)
        y_p = torch.from_numpy(np.stack([p["label"] for p in parts])).to(device)
        quality += example_dice(y_p.cpu().numpy(),
                                   np.stack([p["truth"] for p in parts])).tolist()
        batches.append((x_p, y_p, bv["image"].to(device), bv["label"].to(device)))
    model.to(device).train()
    w = rw.weights_on_batches(model, batches, lam=float(s.lam), alpha=float(s.meta_lr),
                              norm=s.gem_norm, rgs_method=s.rgs_method)
    return {"quality": quality, **{k: v.tolist() for k, v in w.items()},
            "n_probe_volumes": len({it.volume or it.case_id for it in probe})}


def _pool_agreement(pool: Sequence[Item], pseudo: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """How good the pseudo-labels are: Dice against the pool's hidden truth (synthetic) and
    against the provided noisy teacher (COVID-SemiSeg), overall and per site."""
    out: dict[str, Any] = {"n": len(pool)}
    for ref in ("truth", "provided"):
        pairs = [(pseudo[it.case_id] > 0, getattr(it, ref) > 0, it.site) for it in pool
                 if getattr(it, ref) is not None]
        if not pairs:
            continue
        tot = scores(sum(confusion(p, t) for p, t, _ in pairs))
        sites = {}
        for site in sorted({str(s) for _, _, s in pairs}):
            sc = scores(sum(confusion(p, t) for p, t, s_ in pairs if str(s_) == site))
            sites[site] = _nan_none(sc["dice"])
        out[f"dice_vs_{ref}"] = _nan_none(tot["dice"])
        out[f"dice_vs_{ref}_by_site"] = sites
    return out
