"""Figures drawn from data and predictions (never from typed-in numbers)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from covidlib.data.oracle import point_annotation
from covidlib.data.preprocess import to_uint8
from covidlib.data.types import Case

# label 1 (ground-glass / infection) yellow, 2 (consolidation) red, 3 (effusion) blue
_MASK_COLOURS = ListedColormap([(0, 0, 0, 0), (1.0, 0.85, 0.0, 0.45), (0.9, 0.1, 0.1, 0.5),
                                (0.2, 0.4, 1.0, 0.45)])


def display_view(case: Case, slice2d: np.ndarray) -> np.ndarray:
    """A slice as radiologists view it: volumes read in RAS+ (``[z, y, x]``, y to anterior,
    x to the patient's right) are turned so anterior is up and the patient's right is on
    the left; 8-bit slice sets are already stored that way."""
    return slice2d[::-1, ::-1] if case.intensity == "hu" else slice2d


def pick_slices(cases: Sequence[Case], n: int, seed: int = 0, infected_fraction: float = 0.75
                ) -> list[tuple[int, int]]:
    """``n`` (case index, z) pairs: about ``infected_fraction`` with infection, the rest clean."""
    rng = np.random.default_rng(seed)
    infected, clean = [], []
    for i, case in enumerate(cases):
        if case.mask is None:
            continue
        for z in range(case.n_slices):
            (infected if case.mask[z].any() else clean).append((i, z))
    n_inf = min(len(infected), round(n * infected_fraction))
    n_clean = min(len(clean), n - n_inf)
    n_inf = min(len(infected), n - n_clean)  # fill from infected when clean slices run short
    picks = [infected[k] for k in rng.choice(len(infected), n_inf, replace=False)] if n_inf else []
    picks += [clean[k] for k in rng.choice(len(clean), n_clean, replace=False)] if n_clean else []
    return sorted(picks)


def slice_gallery(cases: Sequence[Case], n: int = 6, seed: int = 0,
                  infection_labels: Sequence[int] | None = None, columns: int = 3) -> Figure:
    """Slices (lung window) with their infection masks and the P2 oracle's points.

    Red crosses: one point per infected region (interior maximum of the distance
    transform); cyan dots: as many background points, sampled uniformly (P2 Sec. 4.1).
    """
    picks = pick_slices(cases, n, seed)
    if not picks:
        raise ValueError("no labelled slices to show")
    rows = int(np.ceil(len(picks) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, (i, z) in zip(axes.flat, picks, strict=False):
        case = cases[i]
        img, mask = display_view(case, to_uint8(case)[z]), display_view(case, case.mask[z])
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.imshow(np.ma.masked_equal(mask, 0), cmap=_MASK_COLOURS, vmin=0, vmax=3,
                  interpolation="nearest")
        points = point_annotation(mask, rng, infection_labels=infection_labels)
        fg = np.array([(p.y, p.x) for p in points if p.label != 0]).reshape(-1, 2)
        bg = np.array([(p.y, p.x) for p in points if p.label == 0]).reshape(-1, 2)
        ax.scatter(bg[:, 1], bg[:, 0], s=10, c="cyan", marker="o", linewidths=0)
        ax.scatter(fg[:, 1], fg[:, 0], s=40, c="red", marker="x", linewidths=1.5)
        ax.set_title(f"{case.case_id} z={z}: {len(fg)} region(s)", fontsize=8)
        ax.set_axis_off()
    for ax in axes.flat[len(picks):]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def slice_contours(case: Case, z: int | None = None) -> Figure:
    """One slice with the contours of its infection mask (yellow) and lung mask (cyan).

    ``z`` defaults to the slice with the most infection. Works for any case with a mask;
    the lung contour is drawn when the case has a lung mask.
    """
    if case.mask is None:
        raise ValueError(f"case {case.case_id} has no mask to outline")
    if z is None:
        z = int(np.argmax((case.mask != 0).reshape(case.n_slices, -1).sum(axis=1)))
    fig, ax = plt.subplots(figsize=(4.5, 4.8))
    ax.imshow(display_view(case, to_uint8(case)[z]), cmap="gray", vmin=0, vmax=255)
    layers = [(case.mask, "gold", "infection")]
    if case.lung is not None:
        layers.append((case.lung, "cyan", "lung"))
    for arr, colour, name in layers:
        ax.contour(display_view(case, (arr[z] != 0).astype(float)), levels=[0.5],
                   colors=colour, linewidths=1.0)
        ax.plot([], [], color=colour, label=name)
    src = case.meta.get("slice_ids")
    ax.set_title(f"{case.case_id} z={z}" + (f" (file {src[z]})" if src else ""), fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_axis_off()
    fig.tight_layout()
    return fig
