"""Numbers the P2 chapters' prose cites, glued rather than typed.

P2's own settings come from ``covidlib/report/paper_values/p2.yaml`` (artifact ``P2-S``, P2
Sec. 4.1.1 and 4.2); the profiles' sizes from :data:`covidlib.experiments.p2_settings.PROFILES`.
Also the table of scores the "use your own data" chapter shows (:func:`scores_table`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from covidlib.data.manifest import load_manifest
from covidlib.experiments.p2_settings import PROFILES, P2Settings
from covidlib.report import paper_values

__all__ = ["SCORE_COLUMNS", "learning_rate_text", "prose_values", "scores_table"]

SCORE_COLUMNS: tuple[str, ...] = ("n_volumes", "n_slices", "dice", "iou", "sens", "spec",
                                  "lung_containment")
"""The columns of :func:`scores_table`: sizes of the test set, then its scores."""


def learning_rate_text(lr: float) -> str:
    """A learning rate as the papers print it: ``1e-4`` for 0.0001, ``0.01`` for 0.01."""
    if not lr > 0:
        raise ValueError(f"learning rate {lr!r}: expected a positive number")
    if lr >= 1e-3:
        return f"{lr:g}"
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _width(s: P2Settings) -> int:
    kwargs = s.model_kwargs or {}
    if "base_width" not in kwargs:
        raise ValueError(f"P2 profile model {s.model!r} has no base_width in model_kwargs "
                         f"{kwargs!r}: no channel count to cite")
    return int(kwargs["base_width"])


def prose_values(profiles: Mapping[str, P2Settings] | None = None) -> dict[str, Any]:
    """Glue values (name -> text) for the P2 chapters' prose: P2's batch size, epochs,
    learning rate and image size (Sec. 4.2), COVID-19-C-Sep's volumes per part and the
    *mixed* splits' shares of each volume's slices (Sec. 4.1.1), GAME's level L and its 4^L
    grid cells (Sec. 4.4), the ``cpu`` profile's slice size, U-Net width, consistency weight
    (P2 Eq. 1's lambda), the ``paper`` profile's COVID-19-C centre crop (the authors' code),
    the ``gpu`` profile's size, and ``ma20-slices``' volumes and its *sep* split (its manifest)."""
    profiles = PROFILES if profiles is None else profiles
    paper = paper_values.artifact("P2-S")["values"]
    c_sep = [int(paper["c_sep"][p]) for p in ("train", "val", "test")]
    cpu, gpu = profiles["cpu"], profiles["gpu"]
    sep = load_manifest("ma20-slices").splits["sep"]
    c_sep_ours = [len(getattr(sep, p) or ()) for p in ("train", "val", "test")]
    return {
        "p2_paper_batch_size": str(paper["batch_size"]),
        "p2_paper_epochs": str(paper["epochs"]),
        "p2_paper_learning_rate": learning_rate_text(float(paper["learning_rate"])),
        "p2_paper_image_size": f"{paper['image_size']} x {paper['image_size']}",
        "p2_paper_c_sep": " / ".join(map(str, c_sep)),
        "p2_paper_c_volumes": str(sum(c_sep)),
        "p2_cpu_image_size": f"{cpu.size} x {cpu.size}",
        "p2_cpu_channels": str(_width(cpu)),
        "p2_cpu_lambda": f"{cpu.lam:g}",
        "p2_paper_profile_crop": f"{100 * profiles['paper'].crop:.0f}%",
        "p2_data_c_sep": " / ".join(map(str, c_sep_ours)),
        "p2_data_c_volumes": str(sum(c_sep_ours)),
        "p2_paper_game_level": str(int(paper["game_level"])),
        "p2_paper_game_cells": str(4 ** int(paper["game_level"])),
        "p2_gpu_image_size": f"{gpu.size} x {gpu.size}",
        **{f"p2_paper_mixed_{p}": f"{100 * float(paper['mixed_fractions'][p]):.0f}%"
           for p in ("train", "val", "test")},
    }


def scores_table(scores: Mapping[str, Mapping[str, Any]],
                 columns: Sequence[str] = SCORE_COLUMNS, digits: int = 3) -> pd.DataFrame:
    """One row per test set of a trained P2 model (``TrainedP2.scores``: test-set name ->
    scores), ``columns`` only, as floats rounded to ``digits``."""
    if not scores:
        raise ValueError("scores_table: no test set was scored")
    frame = pd.DataFrame(scores).T
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"scores_table: the scores lack {missing} (have {list(frame.columns)})")
    return frame[list(columns)].astype(float).round(digits)
