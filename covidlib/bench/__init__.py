"""Benchmarks of covidlib: speed, memory and scaling, measured side by side in one run.

``python -m covidlib.bench --out bench_results/bench.json [--quick]`` (``make bench``) runs
:func:`covidlib.bench.run.run_suite`; the book's "Performance" page
(``notebooks/performance.ipynb``, helpers in :mod:`covidlib.bench.report`) renders the file.

* :mod:`~covidlib.bench.mc`: MC-dropout acquisition speed (P1 Eq. 2), head-only vs naive vs baal.
* :mod:`~covidlib.bench.train`: training images/s, fp32 eager vs bf16 + channels_last (CUDA).
* :mod:`~covidlib.bench.scaling`: AL cycle time vs pool size and K, 3D scoring vs volume size.
* :mod:`~covidlib.bench.determinism`: a seeded experiment run twice gives identical results.
* :mod:`~covidlib.bench.responsive`: the labelling widget's click-to-disk latency and cycle time.
* :mod:`~covidlib.bench.endtoend`: the book's per-chapter times recorded by ``covidlib book``.
* :mod:`~covidlib.bench.measure`: timers, peak memory (RSS, CUDA) and the machine's name.
* :mod:`~covidlib.bench.settings`: the typed settings of each section (full and ``--quick``).
"""


from __future__ import annotations

from typing import Any

# Defined here, not in :mod:`covidlib.bench.run`: the Performance page (:mod:`~.report`) reads
# results files without importing torch and the benchmark sections (kernel start of its chapter).
SCHEMA = "covidlib.bench/1"
SECTIONS = ("mc", "train", "al_scaling", "volume_scaling", "determinism", "responsiveness")

__all__ = ["SCHEMA", "SECTIONS", "run_suite"]


def __getattr__(name: str) -> Any:
    """``run_suite`` on first use (it imports torch and every benchmark section)."""
    if name == "run_suite":
        from covidlib.bench.run import run_suite

        return run_suite
    raise AttributeError(f"module 'covidlib.bench' has no attribute {name!r}")
