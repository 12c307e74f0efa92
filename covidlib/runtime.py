"""Devices, precision and determinism of the training engine (:mod:`covidlib.engine`).

``device="auto"`` picks CUDA when present; the :class:`Acceleration` switch
(:func:`acceleration`, :func:`set_acceleration`, ``$COVIDLIB_ACCELERATION``) forces bf16
autocast, channels_last and/or ``torch.compile`` on any device. Seeds, the one helper for
them: :func:`set_determinism` seeds every global generator and asks torch for deterministic
kernels; :func:`stream_rng` gives the independent NumPy generator of one random stream
(e.g. the batch of one training step).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

__all__ = [
    "Acceleration",
    "acceleration",
    "amp_settings",
    "autocast",
    "resolve_device",
    "set_acceleration",
    "set_determinism",
    "stream_rng",
]



def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; otherwise the named device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r}: not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device!r}: CUDA was requested but torch.cuda.is_available() is False; "
            "use device='auto' or 'cpu'"
        )
    return dev


@dataclass(frozen=True)
class Acceleration:
    """The engine's speed switch. ``amp``: autocast dtype ("bf16", "fp32" = none, or
    "default": bf16 on CUDA only); ``channels_last``: True/False, or None = on CUDA only;
    ``compile``: ``torch.compile`` the training forward of :func:`fit`."""

    amp: str = "default"
    channels_last: bool | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if self.amp not in ("default", "bf16", "fp32"):
            raise ValueError(f"Acceleration.amp={self.amp!r}: expected 'default', 'bf16' or "
                             "'fp32'")


def _env_acceleration() -> Acceleration:
    """``$COVIDLIB_ACCELERATION``: comma-separated ``bf16``, ``fp32``, ``channels_last``,
    ``contiguous``, ``compile`` (empty or unset: the device defaults)."""
    words = [w.strip() for w in os.environ.get("COVIDLIB_ACCELERATION", "").split(",")
             if w.strip()]
    known = {"bf16", "fp32", "channels_last", "contiguous", "compile"}
    bad = sorted(set(words) - known)
    if bad:
        raise ValueError(f"$COVIDLIB_ACCELERATION: unknown word(s) {bad}; known: {sorted(known)}")
    amp = "bf16" if "bf16" in words else "fp32" if "fp32" in words else "default"
    cl = True if "channels_last" in words else False if "contiguous" in words else None
    return Acceleration(amp, cl, "compile" in words)


_ACCEL = _env_acceleration()


def set_acceleration(acc: Acceleration | None = None, **fields: Any) -> Acceleration:
    """Set the process-wide :class:`Acceleration` (``acc``, or the current one with
    ``fields`` replaced); returns the previous one."""
    global _ACCEL
    previous = _ACCEL
    _ACCEL = replace(acc or _ACCEL, **fields)
    return previous


@contextlib.contextmanager
def acceleration(**fields: Any) -> Iterator[Acceleration]:
    """Within the block, :func:`fit`, :func:`predict` and :func:`amp_settings` use the
    :class:`Acceleration` ``fields`` (e.g. ``amp="bf16", channels_last=True`` on a CPU: the
    code path a GPU takes)."""
    previous = set_acceleration(**fields)
    try:
        yield _ACCEL
    finally:
        set_acceleration(previous)


def amp_settings(
    device: str | torch.device, spatial_dims: int = 2
) -> tuple[torch.dtype | None, torch.memory_format]:
    """Autocast dtype and memory format for ``device``: pure, needs no GPU to call.

    CUDA: ``(torch.bfloat16, channels_last)`` for 2-D, ``channels_last_3d`` for 3-D data.
    Anything else: ``(None, contiguous_format)``, i.e. plain float32. The
    :class:`Acceleration` switch (:func:`acceleration`) overrides either on any device.
    """
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    cuda = torch.device(device).type == "cuda"
    acc = _ACCEL
    dtype = {"bf16": torch.bfloat16, "fp32": None}.get(acc.amp, torch.bfloat16 if cuda else None)
    last = cuda if acc.channels_last is None else acc.channels_last
    fmt = {2: torch.channels_last, 3: torch.channels_last_3d}.get(spatial_dims) if last else None
    return dtype, fmt or torch.contiguous_format


def autocast(
    device: str | torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) and request deterministic kernels.

    Calls ``torch.use_deterministic_algorithms(True, warn_only=True)`` (a warning, not an
    error, for ops without a deterministic kernel) and disables the cuDNN autotuner. For
    deterministic cuBLAS on CUDA, ``CUBLAS_WORKSPACE_CONFIG`` must be set before CUDA is first
    used; this sets it to ``:4096:8`` when unset (set it in the environment to be safe).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    # the legacy global NumPy generator is what third-party augmentation code draws from
    np.random.seed(seed)  # noqa: NPY002
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def stream_rng(seed: int, *stream: int) -> np.random.Generator:
    """The NumPy generator of random stream ``stream`` of run ``seed`` (e.g. ``(seed, 1,
    step)``: the batch of one training step), independent of every other stream and of the
    global generators, so a resumed run draws what an uninterrupted one drew."""
    return np.random.default_rng([int(seed), *[int(v) for v in stream]])


def _epoch_seed(seed: int, epoch: int) -> int:
    """Well-mixed 32-bit seed of the data order of ``epoch`` (independent of other epochs)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _seed_worker(worker_id: int) -> None:
    """DataLoader worker init: derive NumPy/Python seeds from the worker's torch seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)  # noqa: NPY002
    random.seed(s)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }


def _restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))

