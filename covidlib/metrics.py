"""Segmentation, surface-distance and counting metrics used by the four papers.

Overlap scores (P2 Sec. 4.1.2; P1, P3 and P4 report Dice the same way) are computed from
true/false positive/negative pixel counts *summed over the whole split*
(:func:`confusion`, :class:`ConfusionCounts`, :func:`scores`). :class:`SegmentationMeter`
additionally reports the per-volume mean and standard deviation (P4 Tables 2-3 style).

Conventions for undefined ratios (0/0), chosen to match MONAI and the medical literature:

* ``dice`` and ``iou`` are **1.0** when prediction and truth are both empty (perfect agreement;
  MONAI's ``DiceMetric(ignore_empty=False)`` does the same). With an empty truth and a
  non-empty prediction they are 0.0.
* ``ppv`` (no positive prediction), ``sens`` (no positive truth) and ``spec`` (no negative
  truth) are **nan**: undefined, reported as such, never silently replaced by 0 or 1.
  Per-volume means skip nan values (``numpy.nanmean``) and say how many volumes were used.

Hausdorff distance (P4 Tables 2-3): :func:`hausdorff` on boundary voxels with physical
spacing; both masks empty -> 0.0, exactly one empty -> ``inf``.

Counting (P2 Tables 7-8): :func:`count_blobs`, :func:`counting_mae` and
:func:`game` (Guerrero-Gomez-Olmedo et al., 2015).

Lung containment (P2 Sec. 4.3.1): :func:`lung_containment`, the share of predicted pixels
inside the lung mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from skimage.measure import label as _sk_label

ArrayLike = np.ndarray | torch.Tensor
Points = np.ndarray | torch.Tensor | Sequence[Sequence[float]]
Spacing = float | Sequence[float] | None

SCORE_NAMES: tuple[str, ...] = ("dice", "iou", "ppv", "sens", "spec")


# --------------------------------------------------------------------------------------------
# Confusion counts and overlap scores (P2 Sec. 4.1.2)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfusionCounts:
    """Pixel (voxel) counts of a binary segmentation; add them to pool images or volumes."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __post_init__(self) -> None:
        for name in ("tp", "fp", "fn", "tn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"ConfusionCounts.{name}: expected an int >= 0, got {value!r}")

    def __add__(self, other: ConfusionCounts) -> ConfusionCounts:
        if not isinstance(other, ConfusionCounts):
            return NotImplemented
        return ConfusionCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    def __radd__(self, other: object) -> ConfusionCounts:
        # lets ``sum(list_of_counts)`` start from the integer 0
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn


def _as_binary(x: ArrayLike, name: str) -> ArrayLike:
    """Return ``x`` as a boolean array/tensor; raise if it holds values other than 0 and 1."""
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool:
            return x
        if x.is_complex() or not bool(((x == 0) | (x == 1)).all()):
            bad = x[(x != 0) & (x != 1)].flatten()[:3].tolist()
            raise ValueError(
                f"{name}: expected a binary mask (bool or 0/1), found values such as {bad}; "
                "threshold probabilities or select the label of interest first"
            )
        return x != 0
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name}: expected a numeric or boolean mask, got dtype {arr.dtype}")
    ok = (arr == 0) | (arr == 1)
    if not ok.all():
        bad = arr[~ok].ravel()[:3].tolist()
        raise ValueError(
            f"{name}: expected a binary mask (bool or 0/1), found values such as {bad}; "
            "threshold probabilities or select the label of interest first"
        )
    return arr != 0


def _pair(pred: ArrayLike, target: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """Validate a (pred, target) pair and bring both to the same library (and device)."""
    p = _as_binary(pred, "pred")
    t = _as_binary(target, "target")
    if tuple(p.shape) != tuple(t.shape):
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}"
        )
    if isinstance(p, torch.Tensor) or isinstance(t, torch.Tensor):
        device = p.device if isinstance(p, torch.Tensor) else t.device
        p = torch.as_tensor(p, device=device)
        t = torch.as_tensor(t, device=device)
    return p, t


def confusion(pred: ArrayLike, target: ArrayLike) -> ConfusionCounts:
    """TP/FP/FN/TN of two binary masks of any shape (numpy or torch, any device)."""
    p, t = _pair(pred, target)
    if isinstance(p, torch.Tensor):
        tp, fp, fn = torch.stack([(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]).tolist()
    else:
        tp = int(np.count_nonzero(p & t))
        fp = int(np.count_nonzero(p & ~t))
        fn = int(np.count_nonzero(~p & t))
    total = math.prod(p.shape)
    return ConfusionCounts(int(tp), int(fp), int(fn), int(total - tp - fp - fn))


def confusion_per_item(pred: ArrayLike, target: ArrayLike) -> list[ConfusionCounts]:
    """One :class:`ConfusionCounts` per item along the first (batch) axis."""
    p, t = _pair(pred, target)
    if p.ndim < 1:
        raise ValueError("pred: expected a batch axis, got a 0-d array")
    n = p.shape[0]
    if isinstance(p, torch.Tensor):
        p2, t2 = p.reshape(n, -1), t.reshape(n, -1)
        rows = torch.stack([(p2 & t2).sum(1), (p2 & ~t2).sum(1), (~p2 & t2).sum(1)], 1).tolist()
        size = p2.shape[1]
    else:
        p2, t2 = p.reshape(n, -1), t.reshape(n, -1)
        rows = np.stack(
            [(p2 & t2).sum(1), (p2 & ~t2).sum(1), (~p2 & t2).sum(1)], axis=1
        ).tolist()
        size = p2.shape[1]
    return [ConfusionCounts(int(a), int(b), int(c), int(size - a - b - c)) for a, b, c in rows]


def _ratio(num: int, den: int, empty: float) -> float:
    return float(num) / float(den) if den > 0 else empty


def scores(counts: ConfusionCounts) -> dict[str, float]:
    """Dice, IoU, PPV, sensitivity and specificity (P2 Sec. 4.1.2).

    ``dice = 2TP / (2TP + FP + FN)``, ``iou = TP / (TP + FP + FN)`` (both 1.0 when the
    denominator is 0: empty prediction and empty truth agree), ``ppv = TP / (TP + FP)``,
    ``sens = TP / (TP + FN)``, ``spec = TN / (TN + FP)`` (nan when undefined).
    """
    if not isinstance(counts, ConfusionCounts):
        raise TypeError(f"scores: expected ConfusionCounts, got {type(counts).__name__}")
    tp, fp, fn, tn = counts.tp, counts.fp, counts.fn, counts.tn
    nan = float("nan")
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "iou": _ratio(tp, tp + fp + fn, 1.0),
        "ppv": _ratio(tp, tp + fp, nan),
        "sens": _ratio(tp, tp + fn, nan),
        "spec": _ratio(tn, tn + fp, nan),
    }


class SegmentationMeter:
    """Accumulate confusion counts over a split, summed and per volume (case id).

    ``update(pred, target, case_ids)``:

    * ``case_ids`` a string: the whole ``pred``/``target`` belong to that volume;
    * a sequence of strings: one id per item along the first (batch) axis; slices of the
      same volume that arrive in different batches are pooled under their id;
    * ``None``: every item along the first axis is its own unit (``"item-<n>"``).

    :meth:`compute` returns the summed scores under the plain names (``dice``, ``iou``,
    ``ppv``, ``sens``, ``spec``: what the papers report), the per-volume mean and
    population standard deviation (ddof=0) as ``<name>_mean`` / ``<name>_std`` (nan volumes
    skipped, ``<name>_n`` of them used), and ``n_volumes``.
    """

    def __init__(self) -> None:
        self._per_volume: dict[str, ConfusionCounts] = {}
        self._n_anonymous = 0

    def reset(self) -> None:
        self._per_volume.clear()
        self._n_anonymous = 0

    def add(self, case_id: str, counts: ConfusionCounts) -> None:
        """Add precomputed counts to ``case_id``."""
        if not isinstance(case_id, str) or not case_id:
            raise ValueError(f"case id must be a non-empty string, got {case_id!r}")
        self._per_volume[case_id] = self._per_volume.get(case_id, ConfusionCounts()) + counts

    def update(
        self, pred: ArrayLike, target: ArrayLike, case_ids: str | Sequence[str] | None = None
    ) -> None:
        if isinstance(case_ids, str):
            self.add(case_ids, confusion(pred, target))
            return
        items = confusion_per_item(pred, target)
        if case_ids is None:
            ids = [f"item-{self._n_anonymous + i}" for i in range(len(items))]
            self._n_anonymous += len(items)
        else:
            ids = list(case_ids)
            if len(ids) != len(items):
                raise ValueError(
                    f"case_ids: got {len(ids)} ids for a batch of {len(items)} items"
                )
        for cid, c in zip(ids, items, strict=True):
            self.add(cid, c)

    @property
    def counts(self) -> ConfusionCounts:
        """Counts summed over every volume seen so far."""
        return sum(self._per_volume.values(), ConfusionCounts())

    def per_volume(self) -> dict[str, dict[str, float]]:
        """Scores of each volume, in the order the volumes were first seen."""
        return {cid: scores(c) for cid, c in self._per_volume.items()}

    def compute(self) -> dict[str, float]:
        if not self._per_volume:
            raise ValueError("SegmentationMeter.compute: no data was added (empty split?)")
        out: dict[str, float] = dict(scores(self.counts))
        per = list(self.per_volume().values())
        for name in SCORE_NAMES:
            vals = np.array([s[name] for s in per], dtype=np.float64)
            ok = vals[~np.isnan(vals)]
            out[f"{name}_mean"] = float(ok.mean()) if ok.size else float("nan")
            out[f"{name}_std"] = float(ok.std()) if ok.size else float("nan")
            out[f"{name}_n"] = int(ok.size)
        out["n_volumes"] = len(per)
        return out


# --------------------------------------------------------------------------------------------
# Hausdorff distance (P4 Tables 2-3)
# --------------------------------------------------------------------------------------------


def _spacing(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        values = (float(spacing),) * ndim  # type: ignore[arg-type]
    else:
        values = tuple(float(s) for s in spacing)  # type: ignore[union-attr]
    if len(values) != ndim:
        raise ValueError(f"spacing {spacing!r}: expected {ndim} values for a {ndim}-D mask")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(
            f"spacing {spacing!r}: every value must be finite and > 0 (mm); "
            "pass spacing=None to measure in pixels when the spacing is unknown"
        )
    return values


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: the mask minus its erosion by the face-connected cross.

    Outside the array counts as background, so objects touching the border have a boundary
    there (the same edges as MONAI's ``get_mask_edges``).
    """
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    pred: ArrayLike, target: ArrayLike, spacing: Spacing = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances ``(pred -> target, target -> pred)``.

    For every boundary voxel of ``pred`` the Euclidean distance (in the units of
    ``spacing``, e.g. mm; pixels when ``None``) to the nearest boundary voxel of ``target``,
    and vice versa. Both masks must be non-empty.
    """
    p, t = _pair(pred, target)
    p = p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else p
    t = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t
    if p.ndim not in (2, 3):
        raise ValueError(f"surface distances need a 2-D or 3-D mask, got shape {p.shape}")
    sampling = _spacing(spacing, p.ndim)
    if not p.any() or not t.any():
        raise ValueError("surface_distances: pred and target must both be non-empty")
    # Crop to the bounding box of the union: every boundary voxel lies inside it, so the
    # exact distance transform on the crop gives the same distances, much faster.
    box = ndimage.find_objects((p | t).astype(np.uint8))[0]
    bp, bt = _boundary(p[box]), _boundary(t[box])
    to_t = ndimage.distance_transform_edt(~bt, sampling=sampling)
    to_p = ndimage.distance_transform_edt(~bp, sampling=sampling)
    return to_t[bp].astype(np.float64), to_p[bt].astype(np.float64)


def hausdorff(
    pred: ArrayLike,
    target: ArrayLike,
    spacing: Spacing = None,
    percentile: float | None = None,
) -> float:
    """Symmetric Hausdorff distance between two binary 2-D/3-D masks (P4 Tables 2-3).

    ``HD = max(max d(pred->target), max d(target->pred))`` over boundary voxels, in mm when
    ``spacing`` (per axis, same order as the array axes, e.g. (z, y, x)) is given.
    With ``percentile=q`` each directed maximum is replaced by the q-th percentile (linear
    interpolation, like ``numpy.percentile`` and MONAI) and the larger of the two is taken:
    ``HD95 = max(P95 d(pred->target), P95 d(target->pred))``, as in MONAI's
    ``compute_hausdorff_distance(percentile=95)``.

    Edge cases: both masks empty -> 0.0 (identical); exactly one empty -> ``inf``
    (MONAI returns nan / inf here with a warning).

    Implemented with ``scipy.ndimage.distance_transform_edt(sampling=spacing)`` so that
    anisotropic CT spacing is exact; tests check it against MONAI on random masks.
    """
    if percentile is not None and not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    p, t = _pair(pred, target)
    if p.ndim not in (2, 3):
        raise ValueError(f"hausdorff needs a 2-D or 3-D mask, got shape {tuple(p.shape)}")
    _spacing(spacing, p.ndim)  # validate even for empty masks
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return 0.0
    if not p_any or not t_any:
        return float("inf")
    d_pt, d_tp = surface_distances(p, t, spacing)
    if percentile is None:
        return float(max(d_pt.max(), d_tp.max()))
    return float(max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile)))


def hd95(pred: ArrayLike, target: ArrayLike, spacing: Spacing = None) -> float:
    """95th-percentile Hausdorff distance, see :func:`hausdorff`."""
    return hausdorff(pred, target, spacing=spacing, percentile=95)


def hausdorff_hd95(pred: ArrayLike, target: ArrayLike, spacing: Spacing = None
                   ) -> tuple[float, float]:
    """``(HD, HD95)`` of P4 Tables 2-3 from one surface-distance computation: the same
    values as :func:`hausdorff` and :func:`hd95` (and their empty-mask conventions)."""
    if not pred.any() or not target.any():
        v = hausdorff(pred, target, spacing)
        return v, v
    d_pt, d_tp = surface_distances(pred, target, spacing)
    return (float(max(d_pt.max(), d_tp.max())),
            float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))))


# --------------------------------------------------------------------------------------------
# Counting and localisation (P2 Sec. 4.4, Tables 7-8)
# --------------------------------------------------------------------------------------------


def _np_binary(mask: ArrayLike, name: str) -> np.ndarray:
    m = _as_binary(mask, name)
    return m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else m


def _connectivity(connectivity: int | None, ndim: int) -> int:
    if connectivity is None:
        return ndim
    if not 1 <= connectivity <= ndim:
        raise ValueError(
            f"connectivity must be in 1..{ndim} for a {ndim}-D mask, got {connectivity}"
        )
    return connectivity


def count_blobs(mask: ArrayLike, connectivity: int | None = None) -> int:
    """Number of connected components ("infected regions", P2 Sec. 4.4) in a binary mask.

    ``connectivity`` follows scikit-image: 1 = face neighbours (4 in 2-D, 6 in 3-D),
    ``ndim`` = full (8 in 2-D, 26 in 3-D). Default ``None`` = full, like
    ``skimage.measure.label`` as used by LCFCN.
    """
    m = _np_binary(mask, "mask")
    return int(_sk_label(m, connectivity=_connectivity(connectivity, m.ndim)).max())


def blob_points(mask: ArrayLike, connectivity: int | None = None) -> np.ndarray:
    """One representative pixel per blob: its centroid, truncated to integers.

    Returns an int array (K, ndim) of pixel indices. Truncation (``int(centroid)``) follows
    LCFCN's ``blobs2points``; the centroid of a non-convex blob may fall outside the blob but
    always inside the image, which is all GAME needs.
    """
    m = _np_binary(mask, "mask")
    labels = _sk_label(m, connectivity=_connectivity(connectivity, m.ndim))
    n = int(labels.max())
    if n == 0:
        return np.zeros((0, m.ndim), dtype=np.int64)
    centroids = ndimage.center_of_mass(m, labels, index=np.arange(1, n + 1))
    return np.floor(np.asarray(centroids, dtype=np.float64)).astype(np.int64)


def counting_mae(pred_counts: Iterable[float], true_counts: Iterable[float]) -> float:
    """Mean absolute counting error over images: ``mean |pred_i - true_i|`` (P2 Tables 7-8)."""
    p = np.asarray(list(pred_counts), dtype=np.float64)
    t = np.asarray(list(true_counts), dtype=np.float64)
    if p.shape != t.shape or p.ndim != 1:
        raise ValueError(f"counting_mae: got {p.size} predicted and {t.size} true counts")
    if p.size == 0:
        raise ValueError("counting_mae: no images")
    return float(np.abs(p - t).mean())


def _points(points: Points, shape: tuple[int, ...], name: str) -> np.ndarray:
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, len(shape)), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != len(shape):
        raise ValueError(
            f"{name}: expected points of shape (K, {len(shape)}) as (row, col[, ...]) pixel "
            f"indices, got an array of shape {arr.shape}"
        )
    idx = np.floor(arr).astype(np.int64)
    bad = ((idx < 0) | (idx >= np.asarray(shape))).any(axis=1)
    if bad.any():
        raise ValueError(
            f"{name}: point {arr[bad][0].tolist()} lies outside an image of shape {shape}"
        )
    return idx


def grid_counts(points: Points, shape: Sequence[int], L: int) -> np.ndarray:
    """Number of points in each cell of a ``2^L`` per axis grid (4^L cells in 2-D).

    Cell borders follow ``numpy.array_split``: when an axis of length n is not divisible by
    ``2^L`` the first ``n % 2^L`` cells are one pixel longer. Points are (row, col[, ...])
    pixel indices; fractional coordinates are truncated to the pixel they fall in.
    """
    shape = tuple(int(s) for s in shape)
    if L < 0 or int(L) != L:
        raise ValueError(f"GAME level L must be an integer >= 0, got {L}")
    if any(s <= 0 for s in shape):
        raise ValueError(f"shape must be positive, got {shape}")
    idx = _points(points, shape, "points")
    k = 2 ** int(L)
    cells = []
    for axis, n in enumerate(shape):
        starts = np.array([part[0] for part in np.array_split(np.arange(n), k) if part.size])
        cells.append(np.searchsorted(starts, idx[:, axis], side="right") - 1)
    counts = np.zeros((k,) * len(shape), dtype=np.int64)
    np.add.at(counts, tuple(cells), 1)
    return counts


def game(
    pred_points: Points,
    true_points: Points,
    shape: Sequence[int],
    L: int,
) -> float:
    """Grid Average Mean absolute Error of one image, GAME(L) (Guerrero-Gomez-Olmedo 2015).

    ``GAME(L) = sum over the 4^L cells of |pred count - true count|`` (P2 Sec. 4.4 uses
    L=4); average it over images with :func:`mean_game`. ``GAME(0)`` is the absolute
    counting error. Predicted objects are given as points; for a predicted mask use
    ``blob_points(mask)`` (one centroid per blob, as LCFCN does).
    """
    shape = tuple(int(s) for s in shape)
    diff = grid_counts(pred_points, shape, L) - grid_counts(true_points, shape, L)
    return float(np.abs(diff).sum())


def mean_game(
    pred_points: Sequence[Points],
    true_points: Sequence[Points],
    shapes: Sequence[int] | Sequence[Sequence[int]],
    L: int,
) -> float:
    """GAME(L) averaged over images; ``shapes`` is one shape for all or one per image."""
    if len(pred_points) != len(true_points):
        raise ValueError(
            f"mean_game: got {len(pred_points)} predicted and {len(true_points)} true point sets"
        )
    if len(pred_points) == 0:
        raise ValueError("mean_game: no images")
    if all(isinstance(s, int | np.integer) for s in shapes):
        per_image = [tuple(shapes)] * len(pred_points)  # type: ignore[arg-type]
    else:
        per_image = [tuple(s) for s in shapes]  # type: ignore[union-attr]
        if len(per_image) != len(pred_points):
            raise ValueError(
                f"mean_game: got {len(per_image)} shapes for {len(pred_points)} images"
            )
    values = [game(p, t, s, L) for p, t, s in zip(pred_points, true_points, per_image, strict=True)]
    return float(np.mean(values))


def counting_scores(
    pred_masks: Sequence[ArrayLike],
    true_points: Sequence[Points],
    levels: Iterable[int] = (0, 1, 2, 3, 4),
    connectivity: int | None = None,
) -> dict[str, float]:
    """MAE and GAME(L) of predicted masks against true points, averaged over images.

    Each predicted blob counts as one object located at its centroid (:func:`blob_points`).
    Returns ``{"mae": ..., "game0": ..., "game1": ..., ...}``.
    """
    if len(pred_masks) != len(true_points):
        raise ValueError(
            f"counting_scores: got {len(pred_masks)} masks and {len(true_points)} point sets"
        )
    preds = [blob_points(m, connectivity) for m in pred_masks]
    shapes = [tuple(np.shape(m)) for m in pred_masks]
    trues = [_points(t, s, "true_points") for t, s in zip(true_points, shapes, strict=True)]
    out = {"mae": counting_mae([len(p) for p in preds], [len(t) for t in trues])}
    for L in levels:
        out[f"game{L}"] = mean_game(preds, trues, shapes, L)
    return out


def lung_containment(pred_masks: Sequence[ArrayLike], lung_masks: Sequence[ArrayLike]) -> float:
    """Share of the predicted infection pixels that lie inside the lung mask, pooled over
    images: ``sum |pred & lung| / sum |pred|`` (P2 Sec. 4.3.1: CB "produces masks that are
    more contained in the region of interest (the lungs)"). ``nan`` when nothing is predicted.
    """
    if len(pred_masks) != len(lung_masks):
        raise ValueError(
            f"lung_containment: got {len(pred_masks)} predictions and {len(lung_masks)} lung masks"
        )
    inside = total = 0
    for i, (pred, lung) in enumerate(zip(pred_masks, lung_masks, strict=True)):
        p, lu = _np_binary(pred, f"pred_masks[{i}]"), _np_binary(lung, f"lung_masks[{i}]")
        if p.shape != lu.shape:
            raise ValueError(
                f"lung_containment: image {i} has prediction shape {p.shape} and lung shape "
                f"{lu.shape}"
            )
        inside += int(np.count_nonzero(p & lu))
        total += int(np.count_nonzero(p))
    return inside / total if total else math.nan


def summarize(values: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, float]]:
    """``{name: (mean, std)}`` of per-volume values (nan skipped), e.g. HD per test volume."""
    out = {}
    for name, vals in values.items():
        arr = np.asarray(vals, dtype=np.float64)
        ok = arr[~np.isnan(arr)]
        out[name] = (float(ok.mean()), float(ok.std())) if ok.size else (math.nan, math.nan)
    return out


def per_class_dice(pred: ArrayLike, label: ArrayLike, classes: Sequence[int]) -> dict[int, float]:
    """Dice of each class ``c`` of two class maps, ``pred == c`` against ``label == c`` (P3
    Sec. III reports the heart's; both empty -> 1.0 as in :func:`scores`)."""
    if tuple(pred.shape) != tuple(label.shape):
        raise ValueError(f"per_class_dice: prediction {tuple(pred.shape)} != label "
                         f"{tuple(label.shape)}")
    return {int(c): scores(confusion(pred == c, label == c))["dice"] for c in classes}


def example_dice(pseudo: np.ndarray, truth: np.ndarray, smooth: float = 1.0) -> np.ndarray:
    """Smoothed Dice of each example (axis 0): ``(2 |P & T| + s) / (|P| + |T| + s)``, ``s =
    smooth`` so that an empty prediction of an empty truth scores 1 instead of 0 / 0 (P4's
    true quality of a pseudo-label, the mechanism probe of its re-weighting)."""
    p = np.asarray(pseudo) > 0
    t = np.asarray(truth) > 0
    if p.shape != t.shape or p.ndim < 2:
        raise ValueError(f"example_dice: pseudo {p.shape} and truth {t.shape} must be equal "
                         "arrays of examples (N, ...)")
    axes = tuple(range(1, p.ndim))
    inter = (p & t).sum(axis=axes)
    return (2.0 * inter + smooth) / (p.sum(axis=axes) + t.sum(axis=axes) + smooth)
