"""Typed settings of the benchmark suite: one frozen dataclass per section, grouped in
:class:`BenchSettings`, with the full run (:data:`FULL`, :data:`FULL_CUDA` on a GPU) and the
test suite's tiny run (:data:`QUICK`).

A field left at ``None`` takes the section's own default (e.g. every CPU mode of
:mod:`~covidlib.bench.train`); :meth:`Section.record` leaves such fields out, so the
``settings`` a results file records hold exactly the keys that were set. No torch import here:
the Performance page reads results files without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

__all__ = ["FULL", "FULL_CUDA", "QUICK", "AlScalingBench", "BenchSettings", "DeterminismBench",
           "McBench", "ResponsiveBench", "TrainBench", "VolumeScalingBench"]


def _plain(value: Any) -> Any:
    """JSON-shaped copy: tuples become lists, mappings dicts (what a results file holds)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Section:
    """Base of the section settings: checks the numbers and records the fields that are set.
    A list given for a sequence field is stored as a tuple."""

    _may_be_empty: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            items = value if isinstance(value, tuple) else (value,)
            for v in items:
                if isinstance(v, int) and not isinstance(v, bool) and v < 0:
                    raise ValueError(f"{type(self).__name__}.{f.name}={value!r}: must be >= 0")
            if isinstance(value, tuple) and not value and f.name not in self._may_be_empty:
                raise ValueError(f"{type(self).__name__}.{f.name}: must not be empty")

    def record(self) -> dict[str, Any]:
        """The fields that are set (not ``None``), as the results file records them."""
        return {k: _plain(v) for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class McBench(Section):
    """MC-dropout acquisition speed (:mod:`~covidlib.bench.mc`, P1 Eq. 2)."""

    image_size: int
    fc_channels: int
    batch: int
    samples: tuple[int, ...]
    n_regions: int
    seed: int = 0
    baal: bool = True


@dataclass(frozen=True)
class TrainBench(Section):
    """Training throughput (:mod:`~covidlib.bench.train`). ``cpu_modes``: ``None`` = every
    CPU mode; ``compile_networks``: ``None`` = every network."""

    networks: tuple[str, ...]
    image_size: int
    volume_size: int
    fc_channels: int
    unet_width: int
    batch_2d: int
    batch_3d: int
    warmup: int
    steps: int
    seed: int = 0
    compile_networks: tuple[str, ...] | None = None
    cpu_modes: tuple[str, ...] | None = None

    _may_be_empty: ClassVar[frozenset[str]] = frozenset({"compile_networks"})  # compile none


@dataclass(frozen=True)
class AlScalingBench(Section):
    """AL cycle time vs pool size and region count K (:func:`~covidlib.bench.scaling.
    bench_al_scaling`)."""

    pools: tuple[int, ...]
    regions: tuple[int, ...]
    default_regions: int
    k_pool: int
    al_image_size: int
    al_width: int
    al_samples: int
    al_select: int
    al_batch: int
    train_steps: int
    train_batch: int
    seed: int = 0


@dataclass(frozen=True)
class VolumeScalingBench(Section):
    """P3 3D scoring time vs volume size (:func:`~covidlib.bench.scaling.
    bench_volume_scaling`)."""

    volume_sizes: tuple[int, ...]
    volume_width: int
    volume_samples: int
    seed: int = 0


@dataclass(frozen=True)
class DeterminismBench(Section):
    """The seeded experiment run twice (:func:`~covidlib.bench.determinism.check_determinism`);
    ``None`` fields keep :data:`~covidlib.bench.determinism.DEFAULTS`."""

    seed: int = 0
    slices: int | None = None
    size: int | None = None
    width: int | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None

    def overrides(self) -> dict[str, int]:
        """The experiment settings that are set (keyword arguments of ``check_determinism``)."""
        return {k: v for k, v in self.record().items() if k != "seed"}


@dataclass(frozen=True)
class ResponsiveBench(Section):
    """The labelling widget's click latency and cycle time (:mod:`~covidlib.bench.responsive`).
    ``overrides``: changes to the label chapter's cpu settings (``None``: none)."""

    clicks: int
    threads: int
    seed: int = 0
    overrides: Mapping[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class BenchSettings:
    """The settings of every section of one suite run (field names are the section names)."""

    mc: McBench
    train: TrainBench
    al_scaling: AlScalingBench
    volume_scaling: VolumeScalingBench
    determinism: DeterminismBench
    responsiveness: ResponsiveBench

    def section(self, name: str) -> Section:
        """The settings of section ``name`` (``ValueError`` naming the sections otherwise)."""
        names = [f.name for f in fields(self)]
        if name not in names:
            raise ValueError(f"bench: unknown section {name!r}; choose from {names}")
        return getattr(self, name)

    def record(self, sections: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``{section: its recorded settings}`` for ``sections``, in that order."""
        return {s: self.section(s).record() for s in sections}


FULL = BenchSettings(
    # P1's network at P1's resolution; one slice per batch on CPU (about a minute per sampler)
    mc=McBench(image_size=352, fc_channels=4096, batch=1, samples=(5, 10, 20), n_regions=64,
               seed=0, baal=True),
    train=TrainBench(networks=("fcn8_vgg16", "unet2d", "resunet3d_p4"), image_size=352,
                     volume_size=96, fc_channels=4096, unet_width=32, batch_2d=1, batch_3d=1,
                     warmup=1, steps=2, seed=0,
                     # torch.compile on the CPU: the U-Net the cpu profile trains (compiling
                     # the GPU profiles' FCN8 and 3-D U-Net for the CPU would take minutes each)
                     compile_networks=("unet2d",)),
    al_scaling=AlScalingBench(pools=(100, 400, 1600), regions=(16, 64, 256, 1024),
                              default_regions=64, k_pool=400, al_image_size=64, al_width=8,
                              al_samples=5, al_select=5, al_batch=50, train_steps=5,
                              train_batch=8, seed=0),
    volume_scaling=VolumeScalingBench(volume_sizes=(16, 24, 32, 48, 64), volume_width=32,
                                      volume_samples=5, seed=0),
    determinism=DeterminismBench(seed=0),
    # the label chapter's cpu settings, trained on 2 threads (the goal is for 2 cores)
    responsiveness=ResponsiveBench(clicks=20, threads=2, seed=0),
)
# what changes on a GPU: batches that fill it, more timed steps, larger volumes
FULL_CUDA = replace(
    FULL,
    mc=replace(FULL.mc, batch=8),
    train=replace(FULL.train, batch_2d=8, batch_3d=2, warmup=3, steps=10),
    volume_scaling=replace(FULL.volume_scaling, volume_sizes=(32, 48, 64, 96, 128)),
)
# tiny sizes for the test suite: checks the plumbing, the figures mean nothing
QUICK = BenchSettings(
    mc=McBench(image_size=32, fc_channels=16, batch=1, samples=(2, 3), n_regions=16, seed=0,
               baal=True),
    train=TrainBench(networks=("fcn8_vgg16", "unet2d", "resunet3d_p4"), image_size=32,
                     volume_size=16, fc_channels=16, unet_width=4, batch_2d=1, batch_3d=2,
                     warmup=0, steps=1, seed=0, cpu_modes=("fp32_eager", "fp32_channels_last")),
    al_scaling=AlScalingBench(pools=(4, 8, 16), regions=(4, 16, 64), default_regions=16,
                              k_pool=8, al_image_size=32, al_width=4, al_samples=3, al_select=2,
                              al_batch=8, train_steps=1, train_batch=2, seed=0),
    volume_scaling=VolumeScalingBench(volume_sizes=(8, 16), volume_width=4, volume_samples=2,
                                      seed=0),
    determinism=DeterminismBench(seed=0, slices=8, size=32, epochs=1, steps=2),
    responsiveness=ResponsiveBench(clicks=3, threads=1, seed=0,
                                   overrides={"pool": 8, "size": 32, "n_mc": 2, "epochs": 1}),
)
