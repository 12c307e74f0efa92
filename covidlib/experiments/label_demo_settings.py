"""The typed settings of the "Label your own slices" chapter (:mod:`covidlib.experiments.
label_demo`): one frozen dataclass, the profiles declared as instances, :func:`settings`
validates names and values (:mod:`covidlib.experiments.typed_settings`).

A run's cache key holds ``dataclasses.asdict`` of its settings (the fields in this order), so
a field added, renamed or reordered here changes every cached run's key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from covidlib.experiments.typed_settings import SettingsError, check_fields, from_profile

__all__ = ["PROFILES", "LabelDemoSettings", "settings"]

PAPER = "label_demo"


@dataclass(frozen=True)
class LabelDemoSettings:
    """One profile of the chapter: the session (P1's region loop on the widget's model), the
    simulated annotator's run and the warm start.

    Session: ``n_regions`` K regions per slice (a perfect square), ``size`` px the slices are
    resized to, ``n_mc`` MC-dropout samples (P1 Eq. 2), ``regions_per_cycle`` questions per
    cycle (one region of each of that many images), ``epochs``/``lr``/``batch_size`` each
    cycle's training, ``regions`` "body" (only regions on the lungs) or "grid" (P1's full
    grid), ``point_weight`` a click's weight in the point loss against a background pixel.
    Run: ``pool`` slices to ask about, ``eval`` held-out slices scored after each cycle,
    ``initial_images`` images answered in full first (P1 Sec. 3), ``cycles``.
    Warm start: the model first trained on the full masks (``infection_weight`` on infection
    pixels) of ``warm_slices`` slices of the first ``warm_volumes`` train volumes for
    ``warm_epochs`` at ``warm_lr`` (``warm_volumes`` 0 or ``warm_epochs`` 0: none).
    ``target_dice``: the Dice the summary counts answers to (None: 90 % of the best final).
    """

    n_regions: int
    size: int
    n_mc: int
    pool: int
    eval: int
    initial_images: int
    regions_per_cycle: int
    cycles: int
    epochs: int
    lr: float
    batch_size: int
    regions: Literal["body", "grid"]
    warm_volumes: int
    warm_slices: int
    warm_epochs: int
    warm_lr: float
    infection_weight: float
    point_weight: float
    target_dice: float | None

    def __post_init__(self) -> None:
        check_fields(self, PAPER)
        _check_ranges(self)


def _fail(name: str, value: Any, expected: str) -> SettingsError:
    return SettingsError(f"{PAPER} setting {name}={value!r}: {expected}")


def _check_ranges(s: LabelDemoSettings) -> None:
    """The value ranges of :class:`LabelDemoSettings` (types: :func:`check_fields`)."""
    for name in ("n_regions", "n_mc", "pool", "eval", "regions_per_cycle", "cycles",
                 "epochs", "batch_size"):
        if getattr(s, name) < 1:
            raise _fail(name, getattr(s, name), "expected an integer >= 1")
    for name in ("initial_images", "warm_volumes", "warm_slices", "warm_epochs"):
        if getattr(s, name) < 0:
            raise _fail(name, getattr(s, name), "expected an integer >= 0")
    if math.isqrt(s.n_regions) ** 2 != s.n_regions:
        raise _fail("n_regions", s.n_regions, "must be a perfect square (a k x k grid)")
    if s.size < 8:
        raise _fail("size", s.size, "expected an integer >= 8 (pixels)")
    if s.initial_images > s.pool:
        raise _fail("initial_images", s.initial_images, f"more than the pool ({s.pool})")
    for name in ("lr", "infection_weight", "point_weight"):
        if not getattr(s, name) > 0:
            raise _fail(name, getattr(s, name), "must be > 0")
    if s.warm_lr < 0 or (s.warm_volumes and s.warm_epochs and not s.warm_lr > 0):
        raise _fail("warm_lr", s.warm_lr, "must be > 0 when there is a warm start")
    if s.warm_volumes and s.warm_epochs and s.warm_slices < 1:
        raise _fail("warm_slices", s.warm_slices, "expected >= 1 when there is a warm start")
    if s.target_dice is not None and not 0 < s.target_dice <= 1:
        raise _fail("target_dice", s.target_dice, "None or a Dice in (0, 1]")


_CPU = LabelDemoSettings(
    n_regions=16, size=64, n_mc=4, pool=32, eval=48, initial_images=0, regions_per_cycle=5,
    cycles=6, epochs=5, lr=3e-4, batch_size=4, regions="body", warm_volumes=2,
    warm_slices=48, warm_epochs=15, warm_lr=3e-3, infection_weight=10.0, point_weight=10.0,
    target_dice=None)

PROFILES: dict[str, LabelDemoSettings] = {
    # seconds per cycle on 2 CPU cores: 64 px slices, a 3-level U-Net with 8 channels.
    # warm_*: the warm start, the same model trained on full masks of other volumes (the
    # first warm_volumes volumes of the split's train part; the pool comes from the others).
    # Each cycle fine-tunes the warm model gently (5 epochs, lr 3e-4): 15 epochs at 1e-3 on
    # a handful of clicks forgot the warm start (held-out Dice fell from 0.25 to 0.13 on
    # ma20-slices, measured).
    "cpu": _CPU,
    # the published reference run: the cpu settings (the demo measures clicks, not
    # convergence) with three seeds (book/plan.yml)
    "reference": _CPU,
    "gpu": LabelDemoSettings(
        n_regions=64, size=128, n_mc=8, pool=200, eval=100, initial_images=0,
        regions_per_cycle=5, cycles=10, epochs=10, lr=3e-4, batch_size=8, regions="body",
        warm_volumes=2, warm_slices=200, warm_epochs=20, warm_lr=3e-3, infection_weight=10.0,
        point_weight=10.0, target_dice=None),
    # P1 Implementation Details: K = 64 regions, 352 px, 5 initial images fully answered,
    # 5 images x 1 region per cycle, at most 40 epochs, Adam lr 1e-4, batch size 1, every
    # region of the grid (P1 runs 100 cycles with FCN8-VGG16; the widget keeps its small
    # U-Net). No warm start (warm_volumes 0): P1 starts from ImageNet weights only.
    "paper": LabelDemoSettings(
        n_regions=64, size=352, n_mc=8, pool=368, eval=100, initial_images=5,
        regions_per_cycle=5, cycles=100, epochs=40, lr=1e-4, batch_size=1, regions="grid",
        warm_volumes=0, warm_slices=0, warm_epochs=0, warm_lr=0.0, infection_weight=1.0,
        point_weight=1.0, target_dice=None),
}
"""The chapter's profiles (``reference`` is the cpu profile, run with three seeds)."""


def settings(profile: str, overrides: Mapping[str, Any] | None = None) -> LabelDemoSettings:
    """Profile ``profile`` with ``overrides`` (setting name -> value) applied and validated.

    Unknown profile or override key -> :class:`SettingsError` naming it and the valid ones;
    a bad value -> :class:`SettingsError` naming the setting and the value.
    """
    return from_profile(PROFILES, profile, overrides, PAPER)
