"""The losses in the engine's ``loss_fn(model, batch) -> (loss, parts)`` form.

Batches are the dicts of :class:`covidlib.data.torch_datasets.SliceDataset`: ``image``
``(B, 3, H, W)``, ``mask`` ``(B, H, W)`` and, for weak supervision, ``points`` ``(B, H, W)``
with :data:`~covidlib.losses.point.IGNORE` on unlabelled pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from covidlib.losses.consistency import ConsistencyLoss
from covidlib.losses.point import PointLoss


def _need(batch: Mapping[str, Any], key: str, what: str) -> torch.Tensor:
    if key not in batch:
        raise KeyError(f"{what} needs batch[{key!r}]; the batch has {sorted(batch)}")
    return batch[key]


class PointBatchLoss(nn.Module):
    """PL (P2 Eq. 2) on ``batch["points"]``."""

    def __init__(self, point_loss: nn.Module | None = None, key: str = "points") -> None:
        super().__init__()
        self.point_loss = point_loss if point_loss is not None else PointLoss("mean")
        self.key = key

    def forward(self, model: nn.Module, batch: Mapping[str, Any]
                ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(_need(batch, "image", "PointBatchLoss"))
        loss = self.point_loss(logits, _need(batch, self.key, "PointBatchLoss"))
        return loss, {"point": float(loss.detach())}


class ConsistencyBatchLoss(nn.Module):
    """CB + PL (P2 Eq. 1, Alg. 1) with its own seeded transform generator.

    The generator that draws t_k ~ T is part of :meth:`state_dict`, so a checkpointed
    ``fit`` resumes with exactly the transforms an uninterrupted run would have drawn.
    """

    def __init__(self, consistency: ConsistencyLoss, seed: int = 0, key: str = "points") -> None:
        super().__init__()
        self.consistency = consistency
        self.key = key
        self.generator = torch.Generator().manual_seed(int(seed))

    def forward(self, model: nn.Module, batch: Mapping[str, Any]
                ) -> tuple[torch.Tensor, dict[str, float]]:
        total, parts = self.consistency(model, _need(batch, "image", "ConsistencyBatchLoss"),
                                        _need(batch, self.key, "ConsistencyBatchLoss"),
                                        generator=self.generator)
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        state = super().state_dict(*args, **kwargs)
        state["generator_state"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True
                        ) -> Any:  # type: ignore[override]
        state = dict(state_dict)
        gen = state.pop("generator_state", None)
        if gen is None and strict:
            raise KeyError("ConsistencyBatchLoss state has no 'generator_state'")
        if gen is not None:
            self.generator.set_state(gen)
        return super().load_state_dict(state, strict)
