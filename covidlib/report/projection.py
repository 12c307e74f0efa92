"""Projected time and memory of the gpu and paper profiles, from what this machine measures.

No GPU is needed to plan a GPU run: the work of one training step is a number of floating
point operations (FLOPs) that depends only on the network, the input size and the batch
(:func:`step_flops` counts them with :class:`torch.utils.flop_counter.FlopCounterMode` on the
``meta`` device, so even P2's VGG16-FCN8 at 352 px costs no compute). :func:`measure_rate`
times a few real training steps of a small network on this CPU and turns them into a
sustained FLOP rate; a step of a bigger network is then projected at ``FLOPs / rate``. A GPU's
rate cannot be measured here: :data:`ASSUMED_GPU_TFLOPS` is a stated assumption (sustained
bf16 throughput of one H100-class GPU on these convolutional networks), never a measurement,
and every table says so. :func:`train_memory_bytes` estimates the training memory of a step
(fp32 weights, gradients, Adam's two moments and the forward activations autograd keeps).
The FLOP counter counts convolutions and matrix products (the bulk of these networks), not
element-wise operations: the projections are lower bounds of the work.

:func:`book_networks` lists the network of each paper's chapters in each profile (read from
the experiment modules' ``PROFILES``) with the training steps of one run where the profile
fixes them (P2: epochs x batches of the capped training set; P4: teacher + student steps;
P1: cycles x epochs x items per epoch); :func:`projection_table` puts it all in one frame.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["ASSUMED_GPU_TFLOPS", "StepSpec", "book_networks", "measure_rate",
           "projection_table", "step_flops", "train_memory_bytes"]

ASSUMED_GPU_TFLOPS = 200.0
"""Assumed sustained training throughput of one H100-class GPU (bf16 autocast) on these
networks, in TFLOP/s (about a fifth of its dense bf16 peak). An assumption, not a measurement."""

_CHANNELS_IN = {"fcn8_vgg16": 3, "unet2d": 3, "unet3d_p3": 1, "resunet3d_p4": 1}


@dataclass(frozen=True)
class StepSpec:
    """One training step: a network of :mod:`covidlib.models` (``model`` + ``kwargs``), the
    shape of one input sample ``(C, H, W)`` or ``(C, D, H, W)``, the batch size and, when
    the profile fixes them, the training steps of one run (``steps_per_run``)."""

    name: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    sample_shape: tuple[int, ...] = (3, 64, 64)
    batch_size: int = 1
    steps_per_run: int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if len(self.sample_shape) not in (3, 4) or min(self.sample_shape) < 1:
            raise ValueError(f"StepSpec {self.name!r}: sample_shape={self.sample_shape!r}, "
                             "expected (C, H, W) or (C, D, H, W) of positive sizes")
        if isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"StepSpec {self.name!r}: batch_size={self.batch_size!r}, "
                             "expected an integer >= 1")


def _build(spec: StepSpec) -> nn.Module:
    """The network with random weights (shape-only: ImageNet weights are never loaded)."""
    from covidlib.models import build_model

    kw = dict(spec.kwargs)
    if "weights" in kw:
        kw["weights"] = None
    return build_model(spec.model, **kw)


def _one_step(model: nn.Module, x: torch.Tensor) -> None:
    out = model(x)
    out = out[0] if isinstance(out, tuple | list) else out
    out.float().square().mean().backward()


def step_flops(spec: StepSpec | nn.Module, x_shape: Sequence[int] | None = None) -> int:
    """FLOPs of one training step (forward + backward; a multiply-add counts 2), counted on
    the ``meta`` device (no compute). ``spec``: a :class:`StepSpec`, or a module with the
    batch's shape ``x_shape``."""
    with torch.device("meta"):
        model = _build(spec) if isinstance(spec, StepSpec) else spec.to("meta")
        shape = (spec.batch_size, *spec.sample_shape) if isinstance(spec, StepSpec) \
            else tuple(x_shape or ())
        x = torch.randn(*shape)
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        _one_step(model, x)
    return int(counter.get_total_flops())


def train_memory_bytes(spec: StepSpec) -> dict[str, int]:
    """Estimated training memory of one step (fp32): ``params`` (weights + gradients + Adam's
    two moments = 4 x the weights), ``activations`` (every leaf module's output, kept for
    the backward pass) and ``total``. bf16 autocast roughly halves the activations."""
    with torch.device("meta"):
        model = _build(spec)
        x = torch.randn(spec.batch_size, *spec.sample_shape)
    held = [0]

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        outs = out if isinstance(out, tuple | list) else (out,)
        held[0] += sum(o.numel() * 4 for o in outs if isinstance(o, torch.Tensor))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        model.train()
        model(x)
    finally:
        for h in handles:
            h.remove()
    params = 4 * 4 * sum(p.numel() for p in model.parameters())
    return {"params": params, "activations": held[0], "total": params + held[0]}


def measure_rate(spec: StepSpec | None = None, steps: int = 3, warmup: int = 1,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """This CPU's sustained training rate: ``steps`` real steps (forward, backward, Adam) of
    ``spec`` (default: the cpu profile's small U-Net, 64 px, batch 4) after ``warmup``.
    Returns ``seconds_per_step``, ``flops_per_step`` and ``flops_per_second``."""
    spec = spec or StepSpec("cpu probe", "unet2d", {"base_width": 8, "depth": 3, "out_channels": 2},
                            (3, 64, 64), 4)
    if steps < 1 or warmup < 0:
        raise ValueError(f"measure_rate: steps={steps} (>= 1), warmup={warmup} (>= 0)")
    model = _build(spec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(spec.batch_size, *spec.sample_shape, generator=torch.Generator().manual_seed(0))
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            t0 = clock()
        opt.zero_grad(set_to_none=True)
        _one_step(model, x)
        opt.step()
    seconds = (clock() - t0) / steps
    flops = step_flops(spec)
    return {"seconds_per_step": seconds, "flops_per_step": float(flops),
            "flops_per_second": flops / seconds if seconds > 0 else math.inf}


def _get(s: Any, key: str) -> Any:
    """A setting of a profile: a mapping or a typed settings dataclass."""
    return s[key] if isinstance(s, Mapping) else getattr(s, key)


def _fcn_or_unet(s: Any) -> tuple[str, dict[str, Any]]:
    model = _get(s, "model")
    extra = {"n_classes": 2} if model == "fcn8_vgg16" else {"out_channels": 2}
    return model, {**dict(_get(s, "model_kwargs")), **extra}


def _p2(profile: str) -> StepSpec:
    from covidlib.experiments.p2 import settings

    s = settings(profile)
    model, kw = _fcn_or_unet(s)
    n, batch, size = _get(_get(s, "max_slices"), "train"), _get(s, "batch_size"), _get(s, "size")
    steps = _get(s, "epochs") * math.ceil(n / batch) if n else None
    return StepSpec(f"P2 {profile}", model, kw, (3, size, size), batch, steps,
                    "epochs x batches of the training slices" if n else
                    "epochs x batches of every training slice (depends on the data)")


def _p1(profile: str) -> StepSpec:
    from covidlib.experiments.p1 import settings

    s = settings(profile)
    model, kw = _fcn_or_unet(s)
    items, batch, size = _get(s, "epoch_items"), _get(s, "batch_size"), _get(s, "size")
    steps = _get(s, "cycles") * _get(s, "epochs") * math.ceil(items / batch) if items else None
    return StepSpec(f"P1 {profile}", model, kw, (3, size, size), batch, steps,
                    "one AL run: cycles x epochs x batches (without MC scoring)" if items
                    else "one AL run: grows with the labelled set (depends on the data)")


def _p3(profile: str) -> StepSpec:
    from covidlib.experiments.p3 import settings

    s = settings(profile)
    shape = tuple(_get(s, "patch") or _get(s, "grid"))
    kw = {"base_width": _get(s, "base_width"), "depth": _get(s, "depth"),
          "out_channels": 1 + len(_get(s, "organs"))}
    return StepSpec(f"P3 {profile}", "unet3d_p3", kw, (1, *shape), _get(s, "batch_size"), None,
                    "steps depend on the labelled volumes of each iteration")


def _p4(profile: str) -> StepSpec:
    from covidlib.experiments.p4 import settings

    s = settings(profile)
    return StepSpec(f"P4 {profile}", "resunet3d_p4", {}, (1, *_get(s, "patch")),
                    int(_get(s, "batch")), _get(s, "teacher_steps") + _get(s, "student_steps"),
                    "teacher + one student, one fold (an RGS step costs about 3 plain steps)")


def book_networks(profiles: Sequence[str] = ("gpu", "paper"),
                  papers: Sequence[str] = ("P1", "P2", "P3", "P4")) -> list[StepSpec]:
    """The training step of each paper's chapters in each profile (see the module docstring).

    An unknown paper raises ``ValueError``; a profile a paper does not define is skipped.
    """
    makers = {"P1": _p1, "P2": _p2, "P3": _p3, "P4": _p4}
    bad = [p for p in papers if p not in makers]
    if bad:
        raise ValueError(f"book_networks: unknown paper(s) {bad}; choose from {sorted(makers)}")
    out = []
    for paper in papers:
        for profile in profiles:
            try:
                out.append(makers[paper](profile))
            except ValueError:  # the paper has no such profile
                continue
    return out


def projection_table(specs: Sequence[StepSpec], cpu_flops_per_second: float,
                     gpu_tflops: float = ASSUMED_GPU_TFLOPS) -> Any:
    """One row per step: GFLOPs per step, projected seconds per step on this CPU (measured
    rate) and on a GPU (assumed rate), the steps of one run, the projected minutes of one
    run on each, and the estimated training memory (GiB)."""
    import pandas as pd

    if not cpu_flops_per_second > 0 or not gpu_tflops > 0:
        raise ValueError(f"projection_table: rates must be > 0, got cpu={cpu_flops_per_second}"
                         f", gpu={gpu_tflops} TFLOP/s")
    rows = []
    for s in specs:
        flops = step_flops(s)
        mem = train_memory_bytes(s)
        cpu_s, gpu_s = flops / cpu_flops_per_second, flops / (gpu_tflops * 1e12)
        steps = s.steps_per_run
        rows.append({
            "step": s.name, "network": s.model,
            "input": "x".join(map(str, s.sample_shape[1:])), "batch": s.batch_size,
            "GFLOP/step": flops / 1e9, "CPU s/step": cpu_s, "GPU s/step (assumed)": gpu_s,
            "steps/run": steps,
            "CPU min/run": None if steps is None else steps * cpu_s / 60,
            "GPU min/run (assumed)": None if steps is None else steps * gpu_s / 60,
            "memory GiB": mem["total"] / 2**30, "what a run is": s.note})
    return pd.DataFrame(rows).set_index("step")
