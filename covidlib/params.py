"""The run parameters every chapter and the CLI share, validated in one place.

Every notebook takes ``profile``, ``dataset``, ``device`` and ``seeds`` (papermill
parameters); ``covidlib book`` takes ``--profile`` and ``--device``. :func:`validate` checks
them all before any work starts and returns them typed, so a typo (``device="gpux"``,
``seeds=[]``, ``profile="fast"``) stops the run at once with a message naming the parameter,
the value and what is allowed -- instead of failing minutes later, or being recorded as is.
A notebook's first code cell calls::

    from covidlib.params import validate
    params = validate(profile=profile, device=device, seeds=seeds, dataset=dataset)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DATASET_ALIASES", "PROFILES", "ParameterError", "Params", "check_dataset",
           "check_device", "check_profile", "check_seeds", "validate"]

PROFILES = ("cpu", "reference", "gpu", "paper")
"""The run profiles, smallest first (each paper module defines what they mean)."""

DATASET_ALIASES = ("auto",)
"""Dataset values that are not manifest names: ``auto`` picks the paper's data when present."""

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


class ParameterError(ValueError):
    """A run parameter with a value that is not allowed (names it, the value and the choices)."""

    def __init__(self, name: str, value: Any, reason: str):
        self.name = name
        self.value = value
        super().__init__(f"{name}={value!r}: {reason}")


@dataclass(frozen=True)
class Params:
    """Validated run parameters."""

    profile: str
    device: str
    seeds: tuple[int, ...]
    dataset: str | None


def check_profile(profile: Any, allowed: Sequence[str] = PROFILES) -> str:
    """``profile`` if it is one of ``allowed``."""
    if not isinstance(profile, str) or profile not in allowed:
        raise ParameterError("profile", profile, f"choose one of {', '.join(allowed)}")
    return profile


def check_device(device: Any, available: bool = True) -> str:
    """``device`` if it is ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; with
    ``available`` a CUDA device must also exist on this machine."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ParameterError("device", device, "choose auto, cpu, cuda, cuda:N or mps")
    if available and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ParameterError("device", device, "no CUDA device was found on this machine; "
                                 "use device='auto' or 'cpu'")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ParameterError("device", device, f"this machine has "
                                 f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def check_seeds(seeds: Any) -> tuple[int, ...]:
    """``seeds`` as a tuple: a non-empty list of distinct integers >= 0."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Iterable):
        raise ParameterError("seeds", seeds, "give a list of integers >= 0, e.g. [0, 1]")
    out = list(seeds)
    if not out:
        raise ParameterError("seeds", out, "give at least one seed, e.g. [0]")
    bad = [s for s in out if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ParameterError("seeds", out, f"{bad} are not integers >= 0")
    if len(set(out)) != len(out):
        raise ParameterError("seeds", out, "a seed is repeated")
    return tuple(int(s) for s in out)


def check_dataset(dataset: Any, allowed: Sequence[str] | None = None) -> str:
    """``dataset`` if it is a manifest name (``covidlib data list``) or in ``allowed``
    (a chapter's own choices, e.g. ``auto``, ``real``)."""
    from covidlib.data.manifest import list_datasets

    choices = list(DATASET_ALIASES if allowed is None else allowed)
    known = [*choices, *(n for n in list_datasets() if n not in choices)]
    if not isinstance(dataset, str) or dataset not in known:
        raise ParameterError("dataset", dataset, f"choose one of {', '.join(known)}")
    return dataset


def validate(profile: Any = "cpu", device: Any = "auto", seeds: Any = (0,),
             dataset: Any = None, *, profiles: Sequence[str] = PROFILES,
             datasets: Sequence[str] | None = None, device_available: bool = True) -> Params:
    """Check every run parameter (see the module docstring); ``dataset=None`` skips it.

    ``profiles`` and ``datasets`` narrow or extend the choices for one chapter.
    """
    return Params(
        profile=check_profile(profile, profiles),
        device=check_device(device, device_available),
        seeds=check_seeds(seeds),
        dataset=None if dataset is None else check_dataset(dataset, datasets),
    )
