"""The labelling widget's model and warm start: the small U-Net, pretraining, the slice pool
and its checks.

See :class:`covidlib.widgets.session.LabelSession` (``init_state=`` takes :func:`pretrain`'s
weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from covidlib import acquisition as acq
from covidlib.data.errors import DataError
from covidlib.data.preprocess import to_uint8
from covidlib.data.types import Case
from covidlib.widgets.session_loop import torch_threads
from covidlib.widgets.session_types import REGION_MODES, STRATEGIES, Ref

__all__ = ["SMALL_UNET", "check_settings", "choose_pool", "gray_slices", "pretrain",
           "small_unet"]

SMALL_UNET: dict[str, int] = {"base_width": 8, "depth": 3}
"""The widget's U-Net: channels at its first level and number of levels."""


def small_unet(dropout: float = 0.5) -> nn.Module:
    """The CPU-sized model of the widget: a 2D U-Net (:data:`SMALL_UNET`: 8 channels, 3
    levels) with MC dropout p = 0.5 in its decoder (P1 Implementation Details: dropout rate
    0.5)."""
    from covidlib.models import UNet2D

    return UNet2D(3, 2, **SMALL_UNET, dropout=dropout)


def pretrain(cases: Sequence[Case] | Mapping[str, Case], refs: Iterable[Ref], *,
             model_factory: Callable[[], nn.Module] | None = None, size: int = 64,
             epochs: int = 15, lr: float = 3e-3, batch_size: int = 4, seed: int = 0,
             device: str = "cpu", threads: int | None = 1, infection_weight: float = 10.0,
             progress: bool = False) -> dict[str, torch.Tensor]:
    """Weights for a warm start (``LabelSession(init_state=...)``): the widget's model trained
    with cross-entropy on the full masks of slices ``refs`` (other volumes than the pool's),
    so the first questions are informed rather than the untrained model's noise. Infection
    pixels weigh ``infection_weight`` (about 1 % of a slice is infection: unweighted, the
    small model first learns to predict background everywhere)."""
    from covidlib.data.torch_datasets import SliceDataset
    from covidlib.engine import fit, supervised_loss

    refs = [(str(c), int(z)) for c, z in refs]
    if not refs:
        raise ValueError("pretrain: no slices given")
    data = SliceDataset(cases, refs, size=size, progress=False)
    if "mask" not in data[0]:
        raise DataError(refs[0][0], "pretrain needs infection masks on its slices")
    torch.manual_seed(seed)
    model = (model_factory or small_unet)()
    with torch_threads(threads):
        weight = torch.tensor([1.0, float(infection_weight)])
        fit(model, supervised_loss(nn.CrossEntropyLoss(weight=weight)), data, None,
            epochs=epochs, lr=lr,
            batch_size=min(batch_size, len(data)), device=device, seed=seed,
            progress=progress)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def choose_pool(cases: Sequence[Case], refs: Iterable[Ref] | None = None, n: int = 48,
                seed: int = 0) -> list[Ref]:
    """``n`` slices drawn at random (seeded) among ``refs`` (default: every slice) that show
    lung; a case without a lung mask counts every slice. Returned in ``(case_id, z)`` order."""
    by_id = {c.case_id: c for c in cases}
    if refs is None:
        refs = [(c.case_id, z) for c in cases for z in range(c.n_slices)]
    refs = [(str(c), int(z)) for c, z in refs]
    for cid, _ in refs:
        if cid not in by_id:
            raise DataError(cid, "slice reference to a case that is not loaded")
    usable = [(c, z) for c, z in refs
              if by_id[c].lung is None or bool(np.asarray(by_id[c].lung[z]).any())]
    if not usable:
        raise ValueError("choose_pool: no slice shows lung among the given slices")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"choose_pool: n={n!r} must be a positive integer")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(usable), size=min(n, len(usable)), replace=False)
    return sorted(usable[i] for i in pick)


def check_settings(*, n_mc: int, size: int, regions_per_cycle: int, epochs: int,
                    batch_size: int, reduce: str, regions: str, strategy: str,
                    point_weight: float) -> None:
    """A clear ``ValueError`` for a bad setting of a labelling session."""
    for name, value, lo in (("n_mc", n_mc, 1), ("size", size, 8),
                            ("regions_per_cycle", regions_per_cycle, 1),
                            ("epochs", epochs, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"LabelSession: {name}={value!r} must be an integer >= {lo}")
    for name, value, allowed in (("reduce", reduce, acq.REDUCTIONS),
                                 ("regions", regions, REGION_MODES),
                                 ("strategy", strategy, STRATEGIES)):
        if value not in allowed:
            raise ValueError(f"LabelSession: {name}={value!r}; choose one of {allowed}")
    if not float(point_weight) > 0:
        raise ValueError(f"LabelSession: point_weight={point_weight!r} must be > 0")


def gray_slices(cases: Mapping[str, Case], refs: Sequence[Ref],
                 window: tuple[float, float]) -> dict[Ref, np.ndarray]:
    """The pool's slices in the lung window, uint8, original pixels (what the person sees)."""
    out: dict[Ref, np.ndarray] = {}
    for cid in dict.fromkeys(c for c, _ in refs):
        u8 = to_uint8(cases[cid], window=window)
        for c, z in refs:
            if c == cid:
                out[(c, z)] = u8[z]
    return out
