"""Region acquisition of P1 (Laradji et al.): heuristics, region scores and the selection rule.

Every image is cut into the K equal rectangles of :func:`covidlib.data.oracle.region_grid`
(P1 Sec. 3, Fig. 4; K = 64 in P1). A trained network with dropout gives I Monte-Carlo samples
``S_ij = f(x_i, theta_j)`` (P1 Eq. 2, :func:`covidlib.models.mc_predict`), and

* :func:`entropy_of_mean`: the per-pixel uncertainty of P1, the entropy of the mean of the I
  draws, ``U_i = -sum_c S^_ic log S^_ic`` (P1 prints the sum without its minus sign; the
  entropy is meant, as in Gal and Ghahramani / Gal et al. 2017 [19, 20]);
* :func:`bald`: the mutual information between prediction and weights (Houlsby et al. [25],
  Gal et al. [20]): entropy of the mean minus the mean entropy of the draws;
* ``random``: no model; regions are drawn at random (:func:`select_random_regions`).

:func:`region_scores` reduces a pixel map to one score per region: the maximum (P1 "Model
Training": "The score of each unlabeled region is the maximum pixel entropy within that
region", the default) or the mean (P1 Fig. 4 caption and "Region-Selection methods": "the
regions with the highest mean per-pixel entropy"). :func:`select_regions` is P1's rule: an
image scores as its best unlabelled region, the ``n`` highest-ranked images are picked and each
gives that region. Ties go to the lower image index, then the lower region index.

:func:`score_images` runs the model (head only, see :func:`covidlib.models.mc_predict`) and
returns the region scores of a set of images; :func:`score_pool` adds the selection and is the
entry point of the scoring benchmark (``make bench``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from covidlib.data.oracle import Box, region_grid
from covidlib.models import mc_predict

__all__ = [
    "HEURISTICS",
    "REDUCTIONS",
    "PoolSelection",
    "bald",
    "entropy",
    "entropy_of_mean",
    "expected_entropy",
    "image_scores",
    "infected_share",
    "pixel_uncertainty",
    "region_scores",
    "score_images",
    "score_pool",
    "select_random_regions",
    "select_regions",
]

Heuristic = Literal["random", "entropy", "bald"]
Reduction = Literal["max", "mean"]

HEURISTICS: tuple[str, ...] = ("random", "entropy", "bald")
"""Region-selection heuristics: P1's ``random`` and ``entropy`` (Sec. 3), and ``bald``."""
REDUCTIONS: tuple[str, ...] = ("max", "mean")
"""Region score from pixel scores: ``max`` (P1 "Model Training") or ``mean`` (P1 Fig. 4)."""


# --------------------------------------------------------------------------------------------
# Heuristics on MC samples (pure functions)
# --------------------------------------------------------------------------------------------


def _as_samples(samples: torch.Tensor | np.ndarray, who: str, kind: str, expected: str
                ) -> torch.Tensor:
    """``samples`` as a floating-point tensor (``kind``) of at least 3 axes (passes first);
    the errors name ``who`` and the ``expected`` layout."""
    x = torch.as_tensor(samples)
    if not x.is_floating_point():
        raise TypeError(f"{who}: samples must be {kind}, got {x.dtype}")
    if x.ndim < 3:
        raise ValueError(f"{who}: samples of shape {tuple(x.shape)}; expected {expected}")
    return x


def _check_samples(samples: torch.Tensor | np.ndarray, who: str) -> torch.Tensor:
    x = _as_samples(samples, who, "floating-point probabilities",
                    "(I, B, C, *spatial) softmax probabilities as covidlib.models.mc_predict "
                    "returns them")
    if x.shape[0] < 1 or x.shape[2] < 2:
        raise ValueError(
            f"{who}: samples of shape {tuple(x.shape)}; need I >= 1 draws and C >= 2 classes"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{who}: samples hold nan or inf")
    if bool((x < 0).any()) or bool((x > 1).any()):
        raise ValueError(f"{who}: samples must be probabilities in [0, 1]")
    return x


def entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy ``-sum_c p_c log p_c`` (nats) along ``dim``, with ``0 log 0 = 0``."""
    p = torch.as_tensor(probs).double()
    return -torch.special.xlogy(p, p).sum(dim=dim)


def entropy_of_mean(samples: torch.Tensor | np.ndarray) -> torch.Tensor:
    """P1's pixel uncertainty: the entropy of the mean of the I MC-dropout draws (P1 Eq. 2 and
    the ``U_i`` formula after it). ``samples`` ``(I, B, C, *spatial)`` -> ``(B, *spatial)``
    float64, in nats (0 for a certain pixel, ``log C`` at most)."""
    x = _check_samples(samples, "entropy_of_mean")
    return entropy(x.double().mean(dim=0), dim=1)


def expected_entropy(samples: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Mean over the I draws of each draw's entropy, ``(B, *spatial)`` float64 (nats)."""
    x = _check_samples(samples, "expected_entropy")
    return entropy(x.double(), dim=2).mean(dim=0)


def bald(samples: torch.Tensor | np.ndarray) -> torch.Tensor:
    """BALD (Houlsby et al., Gal et al. 2017): entropy of the mean minus the mean entropy of
    the draws, the mutual information between the prediction and the weights; ``(B,
    *spatial)`` float64, >= 0 (clamped at 0 against rounding)."""
    return (entropy_of_mean(samples) - expected_entropy(samples)).clamp_min(0.0)


def pixel_uncertainty(samples: torch.Tensor | np.ndarray, heuristic: str = "entropy"
                      ) -> torch.Tensor:
    """The pixel map of ``heuristic`` (``"entropy"`` or ``"bald"``) from MC samples."""
    if heuristic == "entropy":
        return entropy_of_mean(samples)
    if heuristic == "bald":
        return bald(samples)
    if heuristic == "random":
        raise ValueError("pixel_uncertainty: heuristic 'random' has no pixel map; use "
                         "select_random_regions")
    raise ValueError(f"pixel_uncertainty: unknown heuristic {heuristic!r}; choose one of "
                     f"{HEURISTICS}")


# --------------------------------------------------------------------------------------------
# Region scores and the selection rule
# --------------------------------------------------------------------------------------------


def _grid_cuts(boxes: Sequence[Box]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]] | None:
    """Row and column bands when ``boxes`` form a raster-ordered grid, else None."""
    rows = sorted({(b[0], b[1]) for b in boxes})
    cols = sorted({(b[2], b[3]) for b in boxes})
    expected = [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]
    return (rows, cols) if [tuple(b) for b in boxes] == expected else None


def region_scores(
    uncertainty: torch.Tensor | np.ndarray,
    regions: int | Sequence[Box] = 64,
    reduce: str = "max",
) -> torch.Tensor:
    """One score per region: ``reduce`` (``"max"`` or ``"mean"``) of the pixel map inside it.

    Args:
        uncertainty: ``(B, H, W)`` (or ``(H, W)``) pixel scores.
        regions: K (the :func:`~covidlib.data.oracle.region_grid` of the map) or a list of
            boxes ``(y0, y1, x0, x1)``.
        reduce: ``"max"`` (P1 "Model Training", default) or ``"mean"`` (P1 Fig. 4).

    Returns:
        ``(B, K)`` float64 (``(K,)`` for a 2-D map), regions in the order of ``regions``.
    """
    u = torch.as_tensor(uncertainty)
    single = u.ndim == 2
    if single:
        u = u[None]
    if u.ndim != 3:
        raise ValueError(f"region_scores: uncertainty of shape {tuple(u.shape)}; expected "
                         "(B, H, W) or (H, W)")
    if reduce not in REDUCTIONS:
        raise ValueError(f"region_scores: reduce={reduce!r}; choose one of {REDUCTIONS}")
    if not bool(torch.isfinite(u).all()):
        raise ValueError("region_scores: uncertainty holds nan or inf")
    h, w = int(u.shape[1]), int(u.shape[2])
    boxes = region_grid((h, w), regions) if isinstance(regions, int | np.integer) else [
        tuple(int(v) for v in b) for b in regions]
    if not boxes:
        raise ValueError("region_scores: no regions")
    for b in boxes:
        if len(b) != 4 or not (0 <= b[0] < b[1] <= h and 0 <= b[2] < b[3] <= w):
            raise ValueError(f"region_scores: box {b} is not a non-empty box inside ({h}, {w})")
    u = u.double()
    cuts = _grid_cuts(boxes)
    if cuts is None:  # arbitrary boxes: one reduction each
        op = (lambda t: t.amax(dim=(1, 2))) if reduce == "max" else (
            lambda t: t.mean(dim=(1, 2)))
        out = torch.stack([op(u[:, y0:y1, x0:x1]) for y0, y1, x0, x1 in boxes], dim=1)
    else:  # a grid: reduce row bands, then column bands (2 sqrt(K) slicing steps)
        rows, cols = cuts
        parts = []
        for y0, y1 in rows:
            band = u[:, y0:y1].amax(dim=1) if reduce == "max" else u[:, y0:y1].sum(dim=1)
            for x0, x1 in cols:
                if reduce == "max":
                    parts.append(band[:, x0:x1].amax(dim=1))
                else:
                    parts.append(band[:, x0:x1].sum(dim=1) / ((y1 - y0) * (x1 - x0)))
        out = torch.stack(parts, dim=1)
    return out[0] if single else out


def _as_scores(scores: torch.Tensor | np.ndarray, who: str) -> np.ndarray:
    s = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    s = s.astype(np.float64)
    if s.ndim != 2:
        raise ValueError(f"{who}: scores of shape {s.shape}; expected (N images, K regions)")
    if np.isnan(s).any():
        raise ValueError(f"{who}: scores hold nan")
    return s


def _as_labelled(labelled: np.ndarray | torch.Tensor | None, shape: tuple[int, int], who: str
                 ) -> np.ndarray:
    if labelled is None:
        return np.zeros(shape, dtype=bool)
    lab = np.asarray(labelled.cpu() if isinstance(labelled, torch.Tensor) else labelled)
    if lab.shape != shape:
        raise ValueError(f"{who}: labelled of shape {lab.shape}; expected {shape}")
    if lab.dtype != bool:
        raise ValueError(f"{who}: labelled must be a boolean (N, K) array, got {lab.dtype}")
    return lab


def _check_count(n: int, who: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"{who}: n_images={n!r} must be an integer >= 0")
    return int(n)


def image_scores(scores: torch.Tensor | np.ndarray,
                 labelled: np.ndarray | torch.Tensor | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """P1: "The score of an image is the score of the region with maximum score", over its
    *unlabelled* regions. Returns ``(best_region (N,) int, best_score (N,) float64)``; a fully
    labelled image gets region -1 and score ``-inf``. Ties: the lowest region index."""
    s = _as_scores(scores, "image_scores")
    lab = _as_labelled(labelled, s.shape, "image_scores")
    masked = np.where(lab, -np.inf, s)
    best = np.argmax(masked, axis=1)
    best_score = masked[np.arange(s.shape[0]), best]
    best = np.where(lab.all(axis=1), -1, best)
    return best.astype(np.int64), best_score


def select_regions(scores: torch.Tensor | np.ndarray, n_images: int,
                   labelled: np.ndarray | torch.Tensor | None = None) -> list[tuple[int, int]]:
    """P1's selection ("Model Training"): rank the images with unlabelled regions by their
    best unlabelled region's score, pick the ``n_images`` highest and label that region of each.

    Returns ``[(image, region), ...]`` highest first (fewer when fewer images have unlabelled
    regions); ties go to the lower image index.
    """
    n = _check_count(n_images, "select_regions")
    best, best_score = image_scores(scores, labelled)
    order = np.lexsort((np.arange(best.size), -best_score))  # score desc, index asc
    picked = [int(i) for i in order if best[i] >= 0][:n]
    return [(i, int(best[i])) for i in picked]


def select_random_regions(labelled: np.ndarray | torch.Tensor, n_images: int,
                          rng: np.random.Generator) -> list[tuple[int, int]]:
    """P1's random heuristic: ``n_images`` images drawn uniformly among those with unlabelled
    regions (P1 Implementation Details: "5 images are sampled ... a single region gets
    selected"), and one of each image's unlabelled regions drawn uniformly. Sorted by image."""
    n = _check_count(n_images, "select_random_regions")
    lab = np.asarray(labelled.cpu() if isinstance(labelled, torch.Tensor) else labelled)
    if lab.ndim != 2 or lab.dtype != bool:
        raise ValueError(f"select_random_regions: labelled must be a boolean (N, K) array, got "
                         f"shape {lab.shape} dtype {lab.dtype}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"select_random_regions: rng must be a numpy Generator, got "
                        f"{type(rng).__name__}")
    candidates = np.flatnonzero(~lab.all(axis=1))
    k = min(n, candidates.size)
    images = np.sort(rng.choice(candidates, size=k, replace=False)) if k else candidates[:0]
    out = []
    for i in images:
        free = np.flatnonzero(~lab[i])
        out.append((int(i), int(free[rng.integers(free.size)])))
    return out


# --------------------------------------------------------------------------------------------
# Scoring a set of images with a model
# --------------------------------------------------------------------------------------------


def _image_batches(images: Any, batch_size: int) -> tuple[int, Iterator[torch.Tensor]]:
    """``(number of batches, batches)`` of ``images``: a (N, C, H, W) tensor, a sequence of
    (C, H, W) tensors or a dataset of dicts with "image" (read lazily, batch by batch)."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"score_images: images of shape {tuple(images.shape)}; expected "
                             "(N, C, H, W)")
        parts = torch.split(images, batch_size)
        return len(parts), iter(parts)
    if not isinstance(images, Dataset | Sequence):
        raise TypeError(f"score_images: images must be a tensor, a sequence of tensors or a "
                        f"dataset of dicts, got {type(images).__name__}")
    n = len(images)  # type: ignore[arg-type]

    def image(i: int) -> torch.Tensor:
        item = images[i]
        img = item["image"] if isinstance(item, Mapping) else item
        if not isinstance(img, torch.Tensor) or img.ndim != 3:
            raise ValueError(f"score_images: image {i} is not a (C, H, W) tensor")
        return img

    def gen() -> Iterator[torch.Tensor]:
        for s in range(0, n, batch_size):
            yield torch.stack([image(i) for i in range(s, min(n, s + batch_size))])

    return -(-n // batch_size), gen()


def score_images(
    model: nn.Module,
    images: torch.Tensor | Sequence[torch.Tensor] | Dataset,
    n_samples: int,
    *,
    heuristic: str = "entropy",
    n_regions: int | Sequence[Box] = 64,
    reduce: str = "max",
    head_only: bool = True,
    seed: int | None = 0,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    return_maps: bool = False,
    progress: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Region scores ``(N, K)`` (float64) of ``images`` under ``heuristic`` with I =
    ``n_samples`` MC-dropout draws (P1 Eq. 2).

    With ``head_only`` the backbone runs once per batch and only the dropout head I times
    (:func:`covidlib.models.mc_predict`); ``head_only=False`` re-runs the whole network, the
    naive way. With ``seed``, draw ``i`` of batch ``b`` uses ``torch.manual_seed(seed + b * I +
    i)`` on both paths, so the dropout masks, and hence the scores and the selected regions,
    are identical. ``device`` defaults to the model's. ``return_maps`` also returns the pixel
    maps ``(N, H, W)`` (float32), e.g. for a Fig. 4-style heat map.
    """
    if heuristic not in ("entropy", "bald"):
        raise ValueError(f"score_images: heuristic={heuristic!r} needs no model or is unknown; "
                         "use 'entropy' or 'bald' ('random': select_random_regions)")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"score_images: n_samples={n_samples!r} must be an integer >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"score_images: batch_size={batch_size!r} must be an integer >= 1")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"score_images: seed={seed!r} must be an integer >= 0 or None")
    if device is None:
        param = next(iter(model.parameters()), None)
        dev = param.device if param is not None else torch.device("cpu")
    else:
        dev = torch.device(device)
        model.to(dev)
    n_batches, batches = _image_batches(images, batch_size)
    scores, maps = [], []
    bar = tqdm(batches, total=n_batches, desc="MC scoring", leave=False, disable=not progress)
    for b, x in enumerate(bar):
        s = None if seed is None else seed + b * n_samples
        samples = mc_predict(model, x.to(dev), n_samples, head_only=head_only, seed=s)
        u = pixel_uncertainty(samples.float(), heuristic)
        scores.append(region_scores(u, n_regions, reduce).cpu())
        if return_maps:
            maps.append(u.float().cpu())
    if not scores:
        raise ValueError("score_images: no images to score")
    out = torch.cat(scores).numpy()
    return (out, torch.cat(maps).numpy()) if return_maps else out


@dataclass(frozen=True)
class PoolSelection:
    """What :func:`score_pool` chose: ``selected`` ``[(image, region), ...]`` highest first,
    the ``scores`` ``(N, K)`` of every region, and the settings used."""

    selected: list[tuple[int, int]]
    scores: np.ndarray
    n_samples: int
    head_only: bool
    heuristic: str
    reduce: str


def score_pool(
    model: nn.Module,
    images: torch.Tensor | Sequence[torch.Tensor] | Dataset,
    n_samples: int,
    head_only: bool = True,
    seed: int | None = 0,
    *,
    n_select: int = 5,
    labelled: np.ndarray | None = None,
    heuristic: str = "entropy",
    n_regions: int = 64,
    reduce: str = "max",
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> PoolSelection:
    """Score a pool and pick ``n_select`` regions by P1's rule: :func:`score_images` then
    :func:`select_regions` (``labelled``: ``(N, K)`` regions never to pick). The scoring
    benchmark times this with ``head_only`` True and False."""
    if n_select is None or isinstance(n_select, bool) or not isinstance(n_select, int):
        raise ValueError(f"score_pool: n_select={n_select!r} must be an integer >= 0")
    scores = score_images(model, images, n_samples, heuristic=heuristic, n_regions=n_regions,
                          reduce=reduce, head_only=head_only, seed=seed, batch_size=batch_size,
                          device=device)
    assert isinstance(scores, np.ndarray)
    return PoolSelection(select_regions(scores, n_select, labelled), scores, n_samples,
                         bool(head_only), heuristic, reduce)



def infected_share(masks: np.ndarray, boxes: Sequence[Box],
                   picks: Sequence[tuple[int, int]]) -> float:
    """The share of the picked regions ``[(image, region), ...]`` that hold infection (any
    non-zero pixel of ``masks[image]`` inside ``boxes[region]``); nan for no picks.

    P1 Sec. 5.1 explains entropy's win over random by this share: random selection mostly
    picks background regions (high specificity, few points), entropy picks regions with
    infection.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"infected_share: masks must be (N, H, W), got shape {masks.shape}")
    if len(picks) == 0:
        return float("nan")
    hits = 0
    for i, k in picks:
        if not (0 <= int(i) < masks.shape[0] and 0 <= int(k) < len(boxes)):
            raise IndexError(f"infected_share: pick ({i}, {k}) outside {masks.shape[0]} images "
                             f"x {len(boxes)} regions")
        y0, y1, x0, x1 = boxes[int(k)]
        hits += bool(np.any(masks[int(i), y0:y1, x0:x1]))
    return hits / len(picks)


# --------------------------------------------------------------------------------------------
# P3 (Rahimi et al.): volume acquisition by MC-dropout variance (pure functions)
# --------------------------------------------------------------------------------------------

__all__ += ["mc_variance_score", "score_error_correlation", "select_random", "select_top_k",
            "volume_variance_score"]


def mc_variance_score(
    samples: torch.Tensor | np.ndarray, *, class_axis: int = 2, ddof: int = 0
) -> torch.Tensor:
    """Per-voxel uncertainty of P3 Eq. 1, ``V_i = 1/C sum_c Var_t P_(i,t)(c)``.

    ``samples``: T MC-dropout class probabilities with the pass axis first, e.g.
    ``(T, B, C, *spatial)`` as :func:`covidlib.models.mc_predict` returns (``class_axis=2``),
    or ``(T, C, *spatial)`` with ``class_axis=1``. ``ddof``: 0 for the population variance
    (divide by T, the default), 1 for the unbiased one; P3 does not say which, the ranking
    of volumes is the same. Returns float64 of ``samples``' shape without pass and class axes.
    """
    x = _as_samples(samples, "mc_variance_score", "floating point",
                    "(T, ..., C, ...) with at least a pass axis, a class axis and one voxel axis")
    if not 1 <= class_axis < x.ndim:
        raise ValueError(f"mc_variance_score: class_axis={class_axis} must lie in "
                         f"1..{x.ndim - 1} (axis 0 holds the T passes)")
    if ddof not in (0, 1):
        raise ValueError(f"mc_variance_score: ddof={ddof!r} must be 0 or 1")
    if x.shape[0] < 2:
        raise ValueError(f"mc_variance_score: {x.shape[0]} MC pass(es); the variance over "
                         "passes needs T >= 2 (P3 uses T = 5)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("mc_variance_score: samples hold nan or inf")
    var = x.double().var(dim=0, correction=ddof)  # (..., C, ...) without the pass axis
    return var.mean(dim=class_axis - 1)


def volume_variance_score(samples: torch.Tensor | np.ndarray, *, class_axis: int = 2,
                          ddof: int = 0) -> torch.Tensor:
    """P3's image score (Sec. II, "total uncertainty" of a volume): :func:`mc_variance_score`
    (Eq. 1) summed over the voxels of each volume.

    ``samples`` ``(T, B, C, *spatial)`` (``class_axis=2``) gives B scores; ``(T, C, *spatial)``
    (``class_axis=1``) gives one (a 0-d tensor).
    """
    v = mc_variance_score(samples, class_axis=class_axis, ddof=ddof)
    return v.flatten(class_axis - 1).sum(dim=-1)


def _check_k(k: int, n: int, who: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"{who}: k={k!r} must be an integer >= 0")
    if k > n:
        raise ValueError(f"{who}: k={k} but only {n} unlabelled volume(s) remain")


def select_top_k(scores_by_id: Mapping[str, float], k: int) -> list[str]:
    """The ``k`` ids with the highest score (P3: "select 5 images with the highest total
    uncertainties"); ties go to the smaller id so the choice is deterministic."""
    _check_k(k, len(scores_by_id), "select_top_k")
    for cid, s in scores_by_id.items():
        if not isinstance(s, int | float) or math.isnan(float(s)):
            raise ValueError(f"select_top_k: score of {cid!r} is {s!r}, not a number")
    ranked = sorted(scores_by_id, key=lambda c: (-float(scores_by_id[c]), c))
    return ranked[:k]


def score_error_correlation(scores_by_id: Mapping[str, float],
                            dice_by_id: Mapping[str, float]) -> float:
    """Spearman's rank correlation between each volume's P3 score and the model's error
    ``1 - Dice`` on it (does the score point at the volumes the model gets wrong?).

    Both mappings must name the same volumes. Fewer than 3 volumes, or constant scores or
    errors, give nan (no ranking to compare).
    """
    if set(scores_by_id) != set(dice_by_id):
        raise ValueError(
            "score_error_correlation: scores and Dice name different volumes "
            f"({sorted(set(scores_by_id) ^ set(dice_by_id))})")
    ids = sorted(scores_by_id)
    s = np.array([float(scores_by_id[c]) for c in ids])
    d = np.array([float(dice_by_id[c]) for c in ids])
    for name, arr in (("score", s), ("Dice", d)):
        if not np.isfinite(arr).all():
            bad = [c for c, x in zip(ids, arr, strict=True) if not np.isfinite(x)]
            raise ValueError(f"score_error_correlation: {name} of {bad} is not finite")
    if (d < 0).any() or (d > 1).any():
        raise ValueError("score_error_correlation: Dice values must lie in [0, 1]")
    if len(ids) < 3 or np.ptp(s) == 0 or np.ptp(d) == 0:
        return math.nan
    from scipy.stats import spearmanr

    return float(spearmanr(s, 1.0 - d).statistic)


def select_random(candidates: Sequence[str], k: int, rng: np.random.Generator) -> list[str]:
    """``k`` ids drawn uniformly without replacement (the random baseline of P3 Fig. 2)."""
    if len(set(candidates)) != len(candidates):
        raise ValueError("select_random: candidates hold duplicate ids")
    _check_k(k, len(candidates), "select_random")
    pool = sorted(candidates)
    return sorted(pool[i] for i in rng.choice(len(pool), size=k, replace=False))
