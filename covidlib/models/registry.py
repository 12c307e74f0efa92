"""``build_model(name, **kw)``: the networks of P1-P4 by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from covidlib.models.fcn8 import FCN8VGG16
from covidlib.models.resunet3d import resunet3d_p4
from covidlib.models.unet import UNet2D, UNet3D

MODELS: dict[str, Callable[..., nn.Module]] = {
    "fcn8_vgg16": FCN8VGG16,  # P1, P2
    "unet2d": UNet2D,
    "resunet3d_p4": resunet3d_p4,  # P4 Table 1
    "unet3d_p3": UNet3D,  # P3
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name`` (one of :data:`MODEL_NAMES`) with its keyword arguments."""
    if name not in MODELS:
        raise ValueError(f"build_model: unknown model {name!r}; choose one of {MODEL_NAMES}")
    factory = MODELS[name]
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(
            f"build_model({name!r}): unknown argument(s) {unknown}; accepted: {sorted(params)}"
        )
    return factory(**kwargs)


def build_segmenter(name: str, n_classes: int, **kwargs: Any) -> nn.Module:
    """A 2-D segmentation network of P1 / P2 with ``n_classes`` output channels:
    ``"unet2d"`` (``out_channels``) or ``"fcn8_vgg16"`` (``n_classes``; no download progress
    bar unless ``progress=True``)."""
    if name == "unet2d":
        return build_model("unet2d", out_channels=n_classes, **kwargs)
    if name == "fcn8_vgg16":
        return build_model("fcn8_vgg16", n_classes=n_classes, **{"progress": False, **kwargs})
    raise ValueError(f"build_segmenter: model {name!r} is not a 2-D segmentation network of "
                     "P1 / P2; use 'unet2d' or 'fcn8_vgg16'")
