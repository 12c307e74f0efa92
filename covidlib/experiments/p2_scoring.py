"""P2's per-slice scoring: predicted masks, scores per test slice, stored masks, figure slices.

Used by the runs of :mod:`covidlib.experiments.p2` (P2 Sec. 4.3 metrics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from covidlib.data.oracle import infection_points
from covidlib.data.torch_datasets import SliceDataset
from covidlib.engine import binarize, predict
from covidlib.experiments.p2_data import thin
from covidlib.metrics import SegmentationMeter, counting_scores, lung_containment
from covidlib.report.masks import decode_mask, encode_mask

__all__ = [
    "decode_mask",
    "encode_mask",
    "figure_refs",
    "score_slices",
]


def _predict_masks(model: nn.Module, ds: SliceDataset, device: Any, batch_size: int
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    preds, masks = [], []
    for probs, batch in predict(model, ds, device, batch_size):
        preds.extend(binarize(probs).numpy())
        masks.extend((batch["mask"] > 0).numpy())
    return preds, masks


def _true_points(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.array([(p.y, p.x) for p in infection_points(m.astype(np.uint8), [1])],
                     dtype=np.int64).reshape(-1, 2) for m in masks]


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def score_slices(preds: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 refs: Sequence[tuple[str, int]],
                 lungs: Sequence[np.ndarray] | None = None) -> dict[str, float | None]:
    """Overlap scores summed over the split (P2 Sec. 4.1.2), MAE and GAME(L=4) (Sec. 4.4)
    and, given the slices' ``lungs``, the share of predicted (``lung_containment``) and of
    true (``lung_containment_truth``) infection pixels inside the lungs (Sec. 4.3.1)."""
    meter = SegmentationMeter()
    for pred, mask, (cid, _z) in zip(preds, masks, refs, strict=True):
        meter.update(pred, mask, cid)
    seg = meter.compute()
    truth = _true_points(masks)
    count = counting_scores(preds, truth, levels=(4,))
    out = {k: _nan_to_none(seg[k]) for k in ("dice", "iou", "ppv", "sens", "spec")}
    out.update({"mae": count["mae"], "game": count["game4"], "n_slices": len(preds),
                "n_volumes": seg["n_volumes"],
                # predicting no region at all scores MAE = GAME = the mean number of regions
                "regions_per_slice": float(np.mean([len(t) for t in truth]))})
    out["lung_containment"] = out["lung_containment_truth"] = None
    if lungs is not None:
        out["lung_containment"] = _nan_to_none(lung_containment(preds, lungs))
        out["lung_containment_truth"] = _nan_to_none(lung_containment(masks, lungs))
    return out


def figure_refs(masks: Sequence[np.ndarray], refs: Sequence[tuple[str, int]], n: int
                ) -> list[tuple[str, int]]:
    """``n`` test slices for Figure 3: infected slices at evenly spaced ranks of infected
    area (largest first), so that large and small lesions are both shown."""
    area = [(int(m.sum()), i) for i, m in enumerate(masks) if m.any()]
    area.sort(key=lambda t: (-t[0], t[1]))
    picks = thin(area, n) if n > 0 else []
    return [tuple(refs[i]) for _a, i in picks]  # type: ignore[misc]
