"""Training throughput (images per second) of the papers' networks, per precision mode.

One training step is what :func:`covidlib.engine.fit` does per batch: forward, cross-entropy
loss (float32), backward and an Adam update. Networks (random weights, random inputs and labels:
the time does not depend on their values):

* ``fcn8_vgg16``: FCN8-VGG16 of P1/P2 (``layout="same"``, fc 4096) on 2D slices of S x S;
* ``unet2d``: :class:`covidlib.models.UNet2D` (base width 32, depth 4) on the same slices;
* ``resunet3d_p4``: P4's MONAI residual 3D U-Net (Table 1) on D^3 volumes.

Modes: ``fp32_eager`` (float32, contiguous: what the engine does on CPU by default); on a CPU
also ``fp32_channels_last``, ``fp32_compile`` and ``fp32_channels_last_compile`` (what the
engine's :class:`~covidlib.engine.Acceleration` switch turns on, ``COVIDLIB_ACCELERATION=
channels_last,compile``; ``first_step_s`` holds the first step's time, compilation included);
on CUDA ``bf16_channels_last`` (bf16 autocast + channels_last / channels_last_3d, what the
engine does on CUDA, see :func:`covidlib.engine.amp_settings`) and
``bf16_channels_last_compile`` (the same under ``torch.compile``). The speed-up of each mode
is its images/s over ``fp32_eager``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from covidlib.bench.measure import PeakMemory, synchronize
from covidlib.bench.settings import TrainBench
from covidlib.engine import amp_settings, autocast
from covidlib.models import FCN8VGG16, UNet2D, resunet3d_p4

CPU_MODES = ("fp32_eager", "fp32_channels_last", "fp32_compile", "fp32_channels_last_compile")
CUDA_MODES = ("fp32_eager", "bf16_channels_last", "bf16_channels_last_compile")


def build(name: str, settings: TrainBench) -> tuple[nn.Module, tuple[int, ...]]:
    """The network ``name`` and the shape of one input item ``(C, *spatial)``."""
    s, d = settings.image_size, settings.volume_size
    if name == "fcn8_vgg16":
        return FCN8VGG16(2, fc_channels=settings.fc_channels, layout="same"), (3, s, s)
    if name == "unet2d":
        return UNet2D(3, 2, base_width=settings.unet_width), (3, s, s)
    if name == "resunet3d_p4":
        return resunet3d_p4(1, 2), (1, d, d, d)
    raise ValueError(f"bench train: unknown network {name!r}; "
                     "choose fcn8_vgg16, unet2d or resunet3d_p4")


def train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str,
                  device: torch.device) -> Callable[[], float]:
    """A closure doing one training step of ``model`` on ``(x, y)`` in ``mode``."""
    if mode not in CUDA_MODES + CPU_MODES:
        raise ValueError(f"bench train: unknown mode {mode!r}; choose one of "
                         f"{sorted(set(CUDA_MODES + CPU_MODES))}")
    if mode.startswith("bf16") and device.type != "cuda":
        raise ValueError(f"bench train: mode {mode!r} is measured on CUDA only")
    if mode.startswith("bf16"):
        dtype, fmt = amp_settings(device, x.ndim - 2)
    else:
        dtype = None
        fmt = ({4: torch.channels_last, 5: torch.channels_last_3d}[x.ndim]
               if "channels_last" in mode else torch.contiguous_format)
    model.to(device)
    if fmt is not torch.contiguous_format:
        model.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
    x, y = x.to(device), y.to(device)
    net = torch.compile(model) if mode.endswith("_compile") else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def measure_throughput(name: str, mode: str, settings: TrainBench, device: torch.device
                       ) -> dict[str, Any]:
    """Images/s of ``warmup`` untimed then ``steps`` timed training steps of ``name``."""
    torch.manual_seed(settings.seed)
    model, item = build(name, settings)
    batch = settings.batch_3d if len(item) == 4 else settings.batch_2d
    x = torch.randn(batch, *item)
    y = torch.randint(0, 2, (batch, *item[1:]))
    step = train_step_fn(model, x, y, mode, device)
    t_first = time.perf_counter()
    for _ in range(max(1, settings.warmup)):
        step()
        synchronize(device)
        if t_first > 0:  # the first step: compilation included
            first = time.perf_counter() - t_first
            t_first = 0.0
    steps = settings.steps
    with PeakMemory(device) as mem:
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        seconds = time.perf_counter() - t0
    return {"network": name, "mode": mode, "input": list(item), "batch": batch, "steps": steps,
            "seconds": seconds, "images_per_s": steps * batch / seconds,
            "first_step_s": first, **mem.record()}


def bench_train(settings: TrainBench, device: torch.device,
                progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Training throughput of each network in each mode of this device; see the module
    docstring. A mode that fails (e.g. ``torch.compile`` without a compiler) is recorded with
    its error instead of a figure. ``settings.compile_networks`` (default: all): the
    networks whose ``*_compile`` modes run on a CPU; the others get a row saying so."""
    modes = CUDA_MODES if device.type == "cuda" else (settings.cpu_modes or CPU_MODES)
    compiled = (settings.networks if settings.compile_networks is None
                else settings.compile_networks)
    rows = []
    for name in settings.networks:
        for mode in modes:
            if mode.endswith("_compile") and device.type != "cuda" and name not in compiled:
                rows.append({"network": name, "mode": mode, "skipped": (
                    f"torch.compile is measured on the CPU for {', '.join(compiled)} only "
                    "(its compile time on a CPU would not fit make bench's 10 minutes)")})
                continue
            progress(f"train: {name} {mode}")
            try:
                rows.append(measure_throughput(name, mode, settings, device))
            except Exception as exc:  # recorded, the other figures still count
                if mode == "fp32_eager":
                    raise
                rows.append({"network": name, "mode": mode,
                             "error": f"{type(exc).__name__}: {exc}"[:500]})
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {
        "what": ("training images per second (forward + cross-entropy + backward + Adam step), "
                 "random weights and inputs"),
        "settings": settings.record(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "modes": list(modes),
        "cuda_measured": device.type == "cuda",
        "rows": rows,
        "speedup": train_speedups(rows),
    }


def train_speedups(rows: list[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{network: {mode: images_per_s(mode) / images_per_s(fp32_eager)}}`` for the modes
    that produced a figure (the fp32 baseline itself is left out)."""
    base = {r["network"]: float(r["images_per_s"]) for r in rows
            if r["mode"] == "fp32_eager" and "images_per_s" in r}
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["mode"] != "fp32_eager" and "images_per_s" in r and r["network"] in base:
            out.setdefault(r["network"], {})[r["mode"]] = float(r["images_per_s"]) / base[
                r["network"]]
    return out
