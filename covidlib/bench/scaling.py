"""How acquisition time grows: with the pool size, with P1's region count K, with volume size.

* AL cycle (P1, :mod:`covidlib.active`): one region-AL cycle over a pool of N slices is
  (1) training a fixed number of steps with P1's point loss (:func:`covidlib.engine.fit`,
  :func:`covidlib.active.make_loss`), (2) scoring every slice with I head-only MC-dropout
  samples, the entropy of their mean and its maximum in each of K regions
  (:func:`covidlib.acquisition.score_images`) and (3) choosing the regions
  (:func:`covidlib.acquisition.select_regions`). The three parts are timed for N in ``pools``
  at the default K, and for K in ``regions`` at one pool size, each with a fresh network of
  the same seed. Only scoring and selection depend on N and K.
* 3D scoring (P3): the summed MC-dropout variance (P3 Eq. 1) of one D^3 volume by the P3 3D
  U-Net with T samples, for D in ``volume_sizes``.

Each series gets a least-squares line in log-log coordinates, ``log t = log a + b log n``
(:func:`fit_exponent`): the exponent b says how the time grows (1: linear).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from covidlib.acquisition import score_images, select_regions, volume_variance_score
from covidlib.bench.measure import PeakMemory, synchronize
from covidlib.bench.settings import AlScalingBench, VolumeScalingBench
from covidlib.data.oracle import IGNORE
from covidlib.models import UNet3D, mc_predict


def fit_exponent(sizes: Sequence[float], seconds: Sequence[float]) -> dict[str, float]:
    """Least-squares fit of ``log t = log a + b log n``: ``{"exponent": b, "prefactor": a,
    "r2": coefficient of determination in log space}``. Needs two or more distinct positive
    sizes and positive times."""
    x = np.asarray(sizes, dtype=np.float64)
    y = np.asarray(seconds, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"fit_exponent: sizes {x.shape} and seconds {y.shape} must be two "
                         "lists of the same length")
    if len(np.unique(x)) < 2:
        raise ValueError(f"fit_exponent: need two or more distinct sizes, got {x.tolist()}")
    if (x <= 0).any() or (y <= 0).any() or not np.isfinite(np.r_[x, y]).all():
        raise ValueError(f"fit_exponent: sizes {x.tolist()} and seconds {y.tolist()} must be "
                         "finite and > 0 (log-log fit)")
    lx, ly = np.log(x), np.log(y)
    b, log_a = np.polyfit(lx, ly, 1)
    resid = ly - (log_a + b * lx)
    total = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else 1.0
    return {"exponent": float(b), "prefactor": float(math.exp(log_a)), "r2": r2}


class PointSlices(Dataset):
    """``n`` random slices ``(3, S, S)`` with P1 point labels: one infection point and one
    background point per slice, every other pixel IGNORE (what a fresh cycle trains on)."""

    def __init__(self, n: int, size: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=gen)
        self.points = torch.full((n, size, size), IGNORE, dtype=torch.int64)
        yx = torch.randint(0, size, (n, 2, 2), generator=gen)
        for i in range(n):
            self.points[i, yx[i, 0, 0], yx[i, 0, 1]] = 1
            self.points[i, yx[i, 1, 0], yx[i, 1, 1]] = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "points": self.points[i]}


@contextmanager
def _keep_global_torch_state() -> Iterator[None]:
    """Restore the deterministic-algorithms flags and cuDNN autotuner that ``fit`` sets, so
    later benchmarks run as they would have."""
    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    bench = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.backends.cudnn.benchmark = bench


def al_cycle(
    settings: AlScalingBench, pool: torch.Tensor, n_regions: int, device: torch.device,
) -> tuple[list[tuple[int, int]], dict[str, float]]:
    """One P1 cycle on ``pool`` ``(N, 3, S, S)`` with a fresh network: train
    ``train_steps`` steps, score every slice, select ``al_select`` regions. Returns the
    selection and the seconds of ``train_seconds``, ``score_seconds``, ``select_seconds``."""
    from covidlib.active import ALConfig, make_loss, make_model
    from covidlib.engine import fit

    seed = settings.seed
    cfg = ALConfig(model="unet2d", model_kwargs={"base_width": settings.al_width,
                                                 "depth": 3, "dropout": 0.5},
                   size=settings.al_image_size, n_regions=n_regions,
                   n_samples=settings.al_samples, score_batch_size=settings.al_batch,
                   batch_size=settings.train_batch, seed=seed)
    torch.manual_seed(seed)
    model = make_model(cfg)
    train = PointSlices(settings.train_batch * settings.train_steps, cfg.size, seed)
    synchronize(device)
    t0 = time.perf_counter()
    with _keep_global_torch_state():
        fit(model, make_loss(cfg.loss_balance, cfg.n_regions), train, None, epochs=1, lr=cfg.lr,
            batch_size=cfg.batch_size, device=device, seed=seed, progress=False)
    synchronize(device)
    t1 = time.perf_counter()
    scores = score_images(model, pool, cfg.n_samples, n_regions=n_regions, seed=seed,
                          batch_size=cfg.score_batch_size, device=device)
    synchronize(device)
    t2 = time.perf_counter()
    picked = select_regions(scores, min(settings.al_select, len(pool)))
    t3 = time.perf_counter()
    return picked, {"train_seconds": t1 - t0, "score_seconds": t2 - t1, "select_seconds": t3 - t2}


def _al_row(n: int, k: int, settings: AlScalingBench, device: torch.device
            ) -> dict[str, Any]:
    s = settings.al_image_size
    gen = torch.Generator().manual_seed(settings.seed + n)
    pool = torch.randn(n, 3, s, s, generator=gen).to(device)
    with PeakMemory(device) as mem:
        picked, parts = al_cycle(settings, pool, k, device)
    return {"pool": n, "K": k, "seconds": sum(parts.values()),
            "acquisition_seconds": parts["score_seconds"] + parts["select_seconds"],
            **parts, "selected": len(picked), **mem.record()}


def _fits(rows: list[Mapping[str, Any]], key: str) -> dict[str, dict[str, float]]:
    xs = [r[key] for r in rows]
    return {"cycle": fit_exponent(xs, [r["seconds"] for r in rows]),
            "acquisition": fit_exponent(xs, [r["acquisition_seconds"] for r in rows]),
            "select": fit_exponent(xs, [max(r["select_seconds"], 1e-9) for r in rows])}


def bench_al_scaling(settings: AlScalingBench, device: torch.device,
                     progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """AL cycle time against pool size (at K = ``default_regions``) and against K (at pool
    ``k_pool``), with fitted exponents of the whole cycle, of its acquisition part (scoring +
    selection) and of the selection alone."""
    k0, pools, regions = settings.default_regions, settings.pools, settings.regions
    progress("scaling: AL warm-up")
    _al_row(min(8, *pools), k0, settings, device)
    pool_rows = []
    for n in pools:
        progress(f"scaling: AL pool {n}")
        pool_rows.append(_al_row(int(n), k0, settings, device))
    k_rows = []
    for k in regions:
        progress(f"scaling: AL K={k}")
        k_rows.append(_al_row(settings.k_pool, int(k), settings, device))
    return {
        "what": (f"one P1 region-AL cycle (covidlib.active/acquisition): {settings.train_steps}"
                 f" training steps of batch {settings.train_batch} with the point loss, then "
                 f"head-only MC dropout (I={settings.al_samples}) of every pool slice by a "
                 f"UNet2D (width {settings.al_width}, depth 3, dropout 0.5) at "
                 f"{settings.al_image_size} px, entropy of the mean, max per region, and the "
                 f"best region of the {settings.al_select} best slices"),
        "pool": {"rows": pool_rows, "fit": _fits(pool_rows, "pool")},
        "regions": {"rows": k_rows, "fit": _fits(k_rows, "K")},
    }


def bench_volume_scaling(settings: VolumeScalingBench, device: torch.device,
                         progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """P3 scoring time (T MC samples + Eq. 1 summed) of one D^3 volume against D."""
    torch.manual_seed(settings.seed)
    model = UNet3D(1, 6, base_width=settings.volume_width, depth=3, dropout=0.5)
    model = model.to(device)
    t_samples = settings.volume_samples

    def score(d: int) -> float:
        vol = torch.randn(1, 1, d, d, d, generator=torch.Generator().manual_seed(d)).to(device)
        return float(volume_variance_score(mc_predict(model, vol, t_samples, seed=0))[0])

    sizes = [int(d) for d in settings.volume_sizes]
    progress("scaling: 3D warm-up")
    score(min(sizes))
    rows = []
    for d in sizes:
        progress(f"scaling: 3D {d}^3")
        with PeakMemory(device) as mem:
            synchronize(device)
            t0 = time.perf_counter()
            score(d)
            synchronize(device)
            seconds = time.perf_counter() - t0
        rows.append({"size": d, "voxels": d**3, "seconds": seconds, **mem.record()})
    return {
        "what": (f"P3 volume score (T={t_samples} head-only MC-dropout samples, Eq. 1 summed "
                 f"over voxels) of one D^3 volume by the P3 3D U-Net (width "
                 f"{settings.volume_width}, depth 3, dropout 0.5, 6 classes)"),
        "rows": rows,
        "fit": fit_exponent([r["voxels"] for r in rows], [r["seconds"] for r in rows]),
    }
