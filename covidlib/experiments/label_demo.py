"""The "Label your own slices" chapter: the labelling widget on a dataset, and a simulated run.

:func:`demo` opens a :class:`~covidlib.widgets.LabelSession` on a pool of training slices,
lets P1's simulated annotator (:class:`~covidlib.widgets.MaskOracle`) answer the proposed
regions for a few cycles (after P1's fully answered initial images) and returns the session,
ready to be shown as a widget, with the history of the cycles. The history and the
annotations are cached by the full configuration (:class:`covidlib.cache.ResultCache`); on a
cache hit the annotations and the final weights (``<hash>.pt`` beside the cached result) are
restored, so the chapter shows the same model and proposals as the run that made them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidlib.cache import ResultCache
from covidlib.data.api import Dataset
from covidlib.data.splits import make_split
from covidlib.engine import atomic_save
from covidlib.widgets import LabelSession, MaskOracle, choose_pool, simulate

__all__ = ["PROFILES", "DemoRun", "demo", "history_frame", "own_session", "plot_history",
           "plot_query", "settings"]

PROFILES: dict[str, dict[str, Any]] = {
    # seconds per cycle on 2 CPU cores: 64 px slices, a 3-level U-Net with 8 channels
    "cpu": {"n_regions": 16, "size": 64, "n_mc": 4, "pool": 32, "eval": 16,
            "initial_images": 5, "regions_per_cycle": 5, "cycles": 3, "epochs": 15,
            "lr": 1e-3, "batch_size": 4},
    "gpu": {"n_regions": 64, "size": 128, "n_mc": 8, "pool": 200, "eval": 100,
            "initial_images": 5, "regions_per_cycle": 5, "cycles": 10, "epochs": 40,
            "lr": 1e-3, "batch_size": 8},
    # P1 Implementation Details: K = 64 regions, 352 px, 5 initial images fully answered,
    # 5 images x 1 region per cycle, at most 40 epochs, Adam lr 1e-4, batch size 1
    # (P1 runs 100 cycles with FCN8-VGG16; the widget keeps its small U-Net).
    "paper": {"n_regions": 64, "size": 352, "n_mc": 8, "pool": 368, "eval": 100,
              "initial_images": 5, "regions_per_cycle": 5, "cycles": 100, "epochs": 40,
              "lr": 1e-4, "batch_size": 1},
}


def settings(profile: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The profile's settings with ``overrides`` merged over them.

    Unknown profile or override key -> ``ValueError`` naming it.
    """
    if profile not in PROFILES:
        raise ValueError(f"label_demo: unknown profile {profile!r}; choose one of "
                         f"{sorted(PROFILES)}")
    out = copy.deepcopy(PROFILES[profile])
    unknown = sorted(set(overrides or {}) - set(out))
    if unknown:
        raise ValueError(f"label_demo: unknown override key(s) {unknown}; known: {sorted(out)}")
    out.update(copy.deepcopy(dict(overrides or {})))
    return out


@dataclass
class DemoRun:
    session: LabelSession
    history: list[dict[str, Any]]
    cached: bool
    config: dict[str, Any]


def _split(ds: Dataset, cases: list) -> dict[str, list]:
    """The dataset's first split (P2's for COVID-SemiSeg, ``sep`` for the phantom)."""
    names = list(ds.manifest.splits)
    name = "sep" if "sep" in names else names[0]
    return make_split(cases, ds.manifest.split(name))


def demo(ds: Dataset, profile: str, overrides: Mapping[str, Any] | None, results_dir: str | Path,
         annotations_path: str | Path, seed: int = 0, device: str = "cpu") -> DemoRun:
    """Simulated labelling on ``ds`` (see the module docstring); ``annotations_path`` is
    replaced by the run's annotations."""
    s = settings(profile, overrides)
    groups = ds.labelled_groups
    cases = ds.cases(groups if len(groups) > 1 else None)
    split = _split(ds, cases)
    pool = choose_pool(cases, split["train"], n=s["pool"], seed=seed)
    held_out = split["test"] or split["val"]
    eval_refs = choose_pool(cases, held_out, n=s["eval"], seed=seed + 1)
    config = {"dataset": ds.name, "seed": seed, "device": device, "settings": s,
              "pool": [list(r) for r in pool], "eval": [list(r) for r in eval_refs],
              "model": "unet2d(base_width=8, depth=3, dropout=0.5)",
              "session": {"reduce": "max", "warm_start": True, "loss": "point (P2 Eq. 2)"}}
    cache = ResultCache(results_dir)
    path = Path(annotations_path)
    path.unlink(missing_ok=True)
    stored = cache.get("label_demo", config)
    if stored is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(stored["annotations"])
    session = _session(cases, path, config)
    weights = cache.path("label_demo", config).with_suffix(".pt")
    if stored is not None and weights.exists():
        session.restore_model(torch.load(weights, map_location="cpu", weights_only=True),
                              cycle=len(stored["history"]))
        return DemoRun(session, stored["history"], True, config)
    if stored is not None:  # weights lost: run again from an empty file
        path.unlink()
        session = _session(cases, path, config)
    hist = simulate(session, MaskOracle(cases, ds.manifest.infection_labels, seed=seed),
                    cycles=s["cycles"], initial_images=s["initial_images"], seed=seed)
    history = [h.to_dict() for h in hist]
    weights.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({k: v.cpu() for k, v in session.model.state_dict().items()}, weights)
    cache.put("label_demo", config, {"history": history, "annotations": path.read_text()})
    return DemoRun(session, history, False, config)


def _session(cases: list, path: Path, config: Mapping[str, Any]) -> LabelSession:
    s, opts = config["settings"], config["session"]
    return LabelSession(cases, path, n_regions=s["n_regions"], n_mc=s["n_mc"],
                        slices=[tuple(r) for r in config["pool"]], size=s["size"],
                        regions_per_cycle=s["regions_per_cycle"], epochs=s["epochs"],
                        lr=s["lr"], batch_size=s["batch_size"],
                        eval_slices=[tuple(r) for r in config["eval"]],
                        dataset=config["dataset"], seed=config["seed"],
                        device=config["device"], reduce=opts["reduce"],
                        warm_start=opts["warm_start"])


def own_session(ds: Dataset, run: DemoRun, annotations_path: str | Path) -> LabelSession:
    """A session for a person on the demo's pool and settings, labels kept in
    ``annotations_path`` (restored when it exists); the model starts untrained."""
    groups = ds.labelled_groups
    cases = ds.cases(groups if len(groups) > 1 else None)
    return _session(cases, Path(annotations_path), run.config)


def history_frame(history: list[dict[str, Any]]):
    """The cycles as a table: labels, annotator time and Dice on held-out slices."""
    import pandas as pd

    frame = pd.DataFrame(history)
    cols = {"cycle": "cycle", "labels": "labels", "points": "points",
            "backgrounds": "background tags", "slices": "slices touched",
            "cost_seconds": "annotator seconds", "train_seconds": "training seconds",
            "test_dice": "test Dice", "test_sens": "test sensitivity",
            "test_spec": "test specificity"}
    return frame[[c for c in cols if c in frame]].rename(columns=cols).round(3)


def plot_history(history: list[dict[str, Any]]):
    """Dice on held-out slices against the annotator's seconds (3 s per answer, P1 Sec 5.3)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=110)
    x = [h["cost_seconds"] for h in history]
    ax.plot(x, [h.get("test_dice", np.nan) for h in history], "o-", label="Dice")
    ax.plot(x, [h.get("test_sens", np.nan) for h in history], "s--", label="sensitivity",
            alpha=0.7)
    ax.set_xlabel("annotator time (s): 3 s per click or background tag")
    ax.set_ylabel("held-out score")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", frameon=False)
    ax.set_title("Simulated annotator: held-out scores after each cycle")
    fig.tight_layout()
    return fig


def plot_query(session: LabelSession):
    """What the widget shows, as a figure: the slice with the region asked about and the
    labels given on it, beside the model's MC-dropout entropy."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cur = session.current()
    if cur is None:
        raise ValueError("plot_query: every region of the pool is answered")
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.2), dpi=110)
    axes[0].imshow(cur.image, cmap="gray", vmin=0, vmax=255)
    for a in cur.labels:
        if a.kind == "background":
            y0, y1, x0, x1 = a.box
            axes[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=True,
                                        color="deepskyblue", alpha=0.25))
        else:
            axes[0].plot(a.x, a.y, "+", color="yellow", ms=12, mew=2.5)
    y0, y1, x0, x1 = cur.box
    for ax in axes:
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor="red", lw=2))
        ax.set_axis_off()
    im = axes[1].imshow(cur.uncertainty, cmap="inferno", vmin=0, vmax=float(np.log(2)))
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04, label="entropy (nats)")
    axes[0].set_title(f"case {cur.case_id}, slice {cur.z}: the region asked about (red)")
    axes[1].set_title("MC-dropout entropy of the current model")
    fig.tight_layout()
    return fig
