"""Consistency-based (CB) loss, P2 Eq. 1, Eq. 3 and Alg. 1.

.. math::
    \\mathcal{L} = \\mathcal{L}_P(X_i, Y_i) + \\mathcal{L}_P(t_k(X_i), t_k(Y_i))
        + \\lambda \\sum_{j \\in \\mathcal{P}_i} |t_k(f_\\theta(X_i))_j - f_\\theta(t_k(X_i))_j|

with :math:`t_k` drawn uniformly from :math:`T`, independently for every image (Alg. 1
lines 6-7). :math:`f_\\theta` is the per-pixel probability map S (softmax over classes,
P2 Sec 3), so the L1 distance is taken between probabilities and summed over classes and
pixels; ``space="logits"`` compares raw scores instead, as the authors' code does.

Transform sets (every element is an exact pixel permutation, so labels map without
interpolation):

* ``"flip"``: :math:`T = \\{\\text{hflip}\\}` (P2's CB(Flip)).
* ``"flip_rot"``: :math:`T = \\{\\text{hflip}\\} \\times \\{0, 90, 180, 270\\}` (P2's
  CB(Flip, Rot)): four elements, each a horizontal flip followed by a rotation. This is the
  issue's product taken literally and what the authors' ``rot_point_loss`` does (it always
  flips, then rotates by a uniformly drawn multiple of 90 degrees).
* ``"d4"``: all eight flips/rotations of the square (``{none, hflip} x rotations``, including
  the identity, for which the consistency term is 0). Not used by the papers.

Normalisation: ``reduction="mean"`` (default) divides the L1 sum by the number of elements
``B * C * H * W`` (the authors' ``torch.mean(torch.abs(...))``); ``"sum"`` is P2 Eq. 3 summed
over the batch. The point loss is any callable ``(logits, labels) -> scalar``, by default
:class:`~covidlib.losses.point.PointLoss` (``"mean"``); pass an
:class:`~covidlib.losses.lcfcn.LCFCNLoss` for CB-LCFCN (P2 Sec 4.4).

Alg. 1 lists only :math:`\\mathcal{L}_P(X_i, Y_i)`, while the text and Fig. 2 apply the point
loss to both branches; ``both_branches=False`` gives the Alg. 1 form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from covidlib.losses._checks import check_choice, check_label_map, check_logits
from covidlib.losses.point import IGNORE, PointLoss

__all__ = [
    "TRANSFORM_SETS",
    "ConsistencyLoss",
    "Transform",
    "consistency_term",
    "sample_transforms",
    "transform_batch",
]


@dataclass(frozen=True)
class Transform:
    """``t(x) = rot90(hflip(x) if flip else x, k)`` on the last two axes (H, W).

    ``k`` counts counter-clockwise quarter turns (``torch.rot90`` with dims ``(-2, -1)``).
    Works on images ``(..., H, W)``, logits/probabilities and integer label maps alike.
    """

    flip: bool
    k: int

    def __post_init__(self) -> None:
        if self.k not in (0, 1, 2, 3):
            raise ValueError(f"Transform k={self.k!r}: quarter turns must be 0, 1, 2 or 3")

    @property
    def name(self) -> str:
        rot = f"rot{90 * self.k}"
        return f"hflip+{rot}" if self.flip else rot

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            x = torch.flip(x, dims=(-1,))
        if self.k:
            x = torch.rot90(x, self.k, dims=(-2, -1))
        return x

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`__call__`."""
        if self.k:
            x = torch.rot90(x, -self.k, dims=(-2, -1))
        if self.flip:
            x = torch.flip(x, dims=(-1,))
        return x


TRANSFORM_SETS: dict[str, tuple[Transform, ...]] = {
    "flip": (Transform(True, 0),),
    "flip_rot": tuple(Transform(True, k) for k in range(4)),
    "d4": tuple(Transform(f, k) for f in (False, True) for k in range(4)),
}
"""Named transform sets T of P2 (see the module docstring)."""


def _resolve(transforms: str | Sequence[Transform]) -> tuple[Transform, ...]:
    if isinstance(transforms, str):
        check_choice("transforms", transforms, tuple(TRANSFORM_SETS))
        return TRANSFORM_SETS[transforms]
    out = tuple(transforms)
    if not out or not all(isinstance(t, Transform) for t in out):
        raise ValueError(
            f"transforms={transforms!r}: expected a name in {tuple(TRANSFORM_SETS)} or a "
            "non-empty sequence of Transform"
        )
    return out


def sample_transforms(
    batch_size: int, n_transforms: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices into T, drawn uniformly and independently per image (P2 Alg. 1, line 7)."""
    return torch.randint(n_transforms, (batch_size,), generator=generator)


def transform_batch(
    x: torch.Tensor, transform_index: torch.Tensor, transforms: Sequence[Transform]
) -> torch.Tensor:
    """Apply ``transforms[transform_index[i]]`` to ``x[i]`` for every image of the batch."""
    if transform_index.shape != (x.shape[0],):
        raise ValueError(
            f"transform_index: shape {tuple(transform_index.shape)} does not match batch size "
            f"{x.shape[0]}"
        )
    return torch.stack([transforms[int(k)](xi) for xi, k in zip(x, transform_index, strict=True)])


def consistency_term(
    a: torch.Tensor, b: torch.Tensor, *, reduction: Literal["mean", "sum"] = "mean"
) -> torch.Tensor:
    """L1 distance of P2 Eq. 3: ``sum |a - b|`` (``"sum"``) or its mean over all elements."""
    check_choice("reduction", reduction, ("mean", "sum"))
    if a.shape != b.shape:
        raise ValueError(f"consistency_term: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = (a - b).abs()
    return diff.sum() if reduction == "sum" else diff.mean()


class ConsistencyLoss(nn.Module):
    """CB loss + point loss on both branches (P2 Eq. 1, 3, Alg. 1, Fig. 2).

    ``total, parts = loss(model, images, point_labels, generator=None)`` where ``parts`` holds
    ``"point"`` (PL on f(x) with y), ``"point_transformed"`` (PL on f(t(x)) with t(y); 0 when
    ``both_branches=False``), ``"consistency"`` (the L1 term before lambda) and ``"total"``.

    Args:
        transforms: ``"flip"``, ``"flip_rot"``, ``"d4"`` or a sequence of :class:`Transform`.
        lam: weight lambda of the consistency term (P2 Eq. 1).
        point_loss: callable ``(logits, labels) -> scalar``; default ``PointLoss("mean")``.
        space: ``"probs"`` (softmax S, as P2 defines f) or ``"logits"`` (authors' code).
        reduction: of the consistency term, ``"mean"`` or ``"sum"`` (P2 Eq. 3).
        both_branches: apply the point loss to the transformed branch too.
        ignore_index: checked against the label values.
    """

    def __init__(
        self,
        transforms: str | Sequence[Transform] = "flip",
        lam: float = 1.0,
        point_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        *,
        space: Literal["probs", "logits"] = "probs",
        reduction: Literal["mean", "sum"] = "mean",
        both_branches: bool = True,
        ignore_index: int = IGNORE,
    ) -> None:
        super().__init__()
        check_choice("space", space, ("probs", "logits"))
        check_choice("reduction", reduction, ("mean", "sum"))
        if not lam >= 0:
            raise ValueError(f"lam={lam!r}: the consistency weight must be >= 0")
        self.transforms = _resolve(transforms)
        self.lam = float(lam)
        self.point_loss = point_loss if point_loss is not None else PointLoss("mean")
        self.space = space
        self.reduction = reduction
        self.both_branches = both_branches
        self.ignore_index = ignore_index

    def forward(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        point_labels: torch.Tensor,
        generator: torch.Generator | None = None,
        transform_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run both branches and return ``(total, parts)``.

        ``transform_index`` (``(B,)`` indices into the transform set) overrides the random
        draw; otherwise it is sampled with ``generator``.
        """
        if images.ndim != 4:
            raise ValueError(f"images: expected shape (B, C, H, W), got {tuple(images.shape)}")
        batch, _, height, width = images.shape
        if transform_index is None:
            transform_index = sample_transforms(batch, len(self.transforms), generator)
        else:
            transform_index = torch.as_tensor(transform_index, dtype=torch.long).cpu()
            if transform_index.shape != (batch,) or bool(
                ((transform_index < 0) | (transform_index >= len(self.transforms))).any()
            ):
                raise ValueError(
                    f"transform_index={transform_index.tolist()}: need {batch} indices in "
                    f"0..{len(self.transforms) - 1}"
                )
        if height != width and any(self.transforms[int(k)].k % 2 for k in transform_index):
            raise ValueError(
                f"images: quarter-turn rotations need square images, got H={height}, "
                f"W={width}; pad or resize to a square, or use transforms='flip'"
            )

        logits = _call_model(model, images)
        check_logits(logits)
        check_label_map(point_labels, logits, ignore_index=self.ignore_index)
        t_images = transform_batch(images, transform_index, self.transforms)
        t_logits = _call_model(model, t_images)
        t_labels = transform_batch(point_labels, transform_index, self.transforms)

        if self.space == "probs":
            out, t_out = F.softmax(logits, dim=1), F.softmax(t_logits, dim=1)
        else:
            out, t_out = logits, t_logits
        # t_k(f(x)) against f(t_k(x)); gradients reach theta through both branches.
        cons = consistency_term(
            transform_batch(out, transform_index, self.transforms), t_out, reduction=self.reduction
        )
        pl = self.point_loss(logits, point_labels)
        pl_t = self.point_loss(t_logits, t_labels) if self.both_branches else torch.zeros_like(pl)
        total = pl + pl_t + self.lam * cons
        return total, {"point": pl, "point_transformed": pl_t, "consistency": cons, "total": total}

    def extra_repr(self) -> str:
        names = ", ".join(t.name for t in self.transforms)
        return f"T=[{names}], lam={self.lam}, space={self.space!r}, reduction={self.reduction!r}"


def _call_model(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"model returned {type(out).__name__}; ConsistencyLoss needs a model that returns "
            "one logits tensor (B, C, H, W)"
        )
    if out.shape[0] != x.shape[0] or out.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"model output shape {tuple(out.shape)} does not match input {tuple(x.shape)} "
            "in batch size or spatial size; the consistency loss needs dense same-size logits"
        )
    return out
