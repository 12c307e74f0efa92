"""Where a number came from: profile, data, hardware, software and date."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path


def hardware(device: str = "auto") -> str:
    """A short human name of the machine the computation ran on."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def git_commit(repo: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, text=True,
                             capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "uncommitted"


def provenance(profile: str, dataset: str, device: str = "auto", real_data: bool | None = None
               ) -> dict[str, str]:
    """The facts the book states next to every table: profile, data, hardware, versions, date."""
    import torch

    import covidlib

    return {
        "profile": profile,
        "dataset": dataset,
        "data": ("real" if real_data else "synthetic") if real_data is not None else "",
        "hardware": hardware(device),
        "torch": torch.__version__,
        "covidlib": covidlib.__version__,
        "commit": git_commit(Path(__file__).resolve().parents[2]),
        "date": _dt.date.today().isoformat(),
    }
