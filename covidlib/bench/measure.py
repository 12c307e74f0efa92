"""Measuring tools of the benchmark suite: wall time, peak memory and the machine's name.

* :func:`time_runs` times a callable after warm-up calls, synchronising CUDA around each run
  so asynchronous kernels are counted.
* :class:`PeakMemory` records the peak resident set size (RSS) of this process while a block
  runs, by sampling ``/proc/self/statm`` from a background thread (torch kernels release the
  GIL, so the sampler keeps running during them), and on CUDA ``torch.cuda.max_memory_allocated``
  after ``reset_peak_memory_stats``. Where ``/proc`` is missing (macOS, Windows) the lifetime
  peak ``ru_maxrss`` is reported instead and the record says so.
* :func:`machine_info` names the machine every figure was measured on.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MB = 1024.0 * 1024.0


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA kernels (no-op on CPU), so a clock read after it is honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(torch.device(device))


def time_runs(
    fn: Callable[[], Any],
    *,
    repeats: int = 1,
    warmup: int = 1,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"time_runs: {name}={value!r} must be an integer >= {low}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def summarize(seconds: list[float]) -> dict[str, float]:
    """Median, min and max of a list of timings (seconds), rounded to the microsecond."""
    if not seconds:
        raise ValueError("summarize: no timings")
    return {
        "seconds": round(statistics.median(seconds), 6),
        "seconds_min": round(min(seconds), 6),
        "seconds_max": round(max(seconds), 6),
        "repeats": len(seconds),
    }


def current_rss_bytes() -> int | None:
    """Resident set size of this process in bytes (``None`` without ``/proc``)."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _lifetime_peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux: KiB


class PeakMemory:
    """Context manager measuring peak memory while its block runs.

    After the block, :meth:`record` gives ``peak_rss_mb`` (highest RSS seen), ``rss_start_mb``
    (RSS when the block started; the difference is what the block added, approximately, since
    the allocator may keep freed memory), ``rss_method`` and, on CUDA, ``cuda_max_allocated_mb``
    (``torch.cuda.max_memory_allocated`` since the block started; ``None`` on CPU).
    """

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.002) -> None:
        self.device = torch.device(device)
        self.interval_s = float(interval_s)
        self._peak = 0
        self._start = 0
        self._cuda_peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._method = "proc-statm-sampling" if current_rss_bytes() is not None else "ru_maxrss"

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = current_rss_bytes()
            if rss is not None and rss > self._peak:
                self._peak = rss

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        if self._method == "ru_maxrss":
            self._start = self._peak = _lifetime_peak_rss_bytes()
            return self
        self._start = self._peak = current_rss_bytes() or 0
        self._thread = threading.Thread(target=self._sample, name="covidlib-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self._cuda_peak = int(torch.cuda.max_memory_allocated(self.device))
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            last = current_rss_bytes() or 0
            self._peak = max(self._peak, last)
        else:
            self._peak = _lifetime_peak_rss_bytes()

    def record(self) -> dict[str, Any]:
        """The measured peaks in MB (see the class docstring)."""
        return {
            "peak_rss_mb": round(self._peak / MB, 1),
            "rss_start_mb": round(self._start / MB, 1),
            "rss_method": self._method,
            "cuda_max_allocated_mb": (
                None if self._cuda_peak is None else round(self._cuda_peak / MB, 1)
            ),
        }


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``None`` where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Name, CPU, cores, torch threads, CUDA device, versions and date of this run."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    return {
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if cuda else None,
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_start": load_average(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
