"""U-Net (Ronneberger et al., 2015) in 2D, and the 3D U-Net (Çiçek et al., 2016) of P3.

One N-d implementation: at each level two 3x3(x3) convolutions with batch norm and ReLU, 2x max
pooling down, 2x transposed convolution up, skip concatenation, a 1x1 classifier. The width
doubles per level from ``base_width``.

MC dropout (P3 Sec. II, "Image Uncertainty Scoring"; P3 uses p = 0.5 and T = 5 samples): when
``dropout > 0`` an ``nn.Dropout(dropout)`` follows the bottleneck and every decoder block, and
nowhere in the encoder. The encoder is therefore deterministic, which gives the same split as
FCN8: ``backbone_features(x)`` (padding + encoder + bottleneck) and ``head(features)`` (the
dropout layers and decoder); ``forward(x) == head(backbone_features(x))``. MC sampling runs the
encoder once and the decoder T times (:func:`covidlib.models.mc_predict`).

Inputs of any size are zero-padded at the high end to a multiple of ``2**depth`` and the output is
cropped back, so the output always has the input's spatial size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from covidlib.models._common import check_input, check_sizes, crop_to, pad_to_multiple

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


class UNetFeatures(NamedTuple):
    """Output of :meth:`UNet.backbone_features`: encoder skips, bottleneck, input size."""

    skips: tuple[torch.Tensor, ...]  # encoder outputs, finest first
    bottom: torch.Tensor
    size: tuple[int, ...]


def _double_conv(dims: int, c_in: int, c_out: int) -> nn.Sequential:
    conv, norm = _CONV[dims], _NORM[dims]
    return nn.Sequential(
        conv(c_in, c_out, 3, padding=1, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
        conv(c_out, c_out, 3, padding=1, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
    )


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


class UNet(nn.Module):
    """N-d U-Net returning logits ``(B, C, *spatial)`` of the input's spatial size.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: input channels and classes C.
        base_width: channels of the first level (doubling per level).
        depth: number of 2x down-samplings (the bottleneck works at 1 / 2**depth).
        dropout: MC-dropout probability after the bottleneck and each decoder block (0: none).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        base_width: int = 32,
        depth: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if spatial_dims not in (2, 3):
            raise ValueError(f"{name}: spatial_dims={spatial_dims!r} must be 2 or 3")
        check_sizes(name, dropout, in_channels=in_channels, out_channels=out_channels,
                    base_width=base_width, depth=depth)
        self.spatial_dims = spatial_dims
        self.in_channels, self.out_channels = in_channels, out_channels
        self.depth, self.dropout = depth, float(dropout)
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.widths = tuple(widths)

        self.encoder = nn.ModuleList()
        c_in = in_channels
        for w in widths[:-1]:
            self.encoder.append(_double_conv(spatial_dims, c_in, w))
            c_in = w
        self.pool = _POOL[spatial_dims](2)
        self.bottleneck = _double_conv(spatial_dims, widths[-2], widths[-1])
        self.drop_bottom = _dropout(self.dropout)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.drop_decoder = nn.ModuleList()
        for w_low, w in zip(reversed(widths[1:]), reversed(widths[:-1]), strict=True):
            self.up.append(_CONVT[spatial_dims](w_low, w, 2, stride=2))
            self.decoder.append(_double_conv(spatial_dims, 2 * w, w))
            self.drop_decoder.append(_dropout(self.dropout))
        self.classifier = _CONV[spatial_dims](widths[0], out_channels, 1)

    def backbone_features(self, x: torch.Tensor) -> UNetFeatures:
        """Pad, run the encoder and the bottleneck (deterministic: no dropout)."""
        check_input(
            x, spatial_dims=self.spatial_dims, in_channels=self.in_channels, who=type(self).__name__
        )
        size = tuple(int(s) for s in x.shape[2:])
        h = pad_to_multiple(x, 2**self.depth)
        skips = []
        for block in self.encoder:
            h = block(h)
            skips.append(h)
            h = self.pool(h)
        return UNetFeatures(tuple(skips), self.bottleneck(h), size)

    def head(self, feats: UNetFeatures) -> torch.Tensor:
        """Dropout + decoder + classifier; logits cropped to the input size."""
        h = self.drop_bottom(feats.bottom)
        for up, block, drop, skip in zip(
            self.up, self.decoder, self.drop_decoder, reversed(feats.skips), strict=True
        ):
            h = drop(block(torch.cat([skip, up(h)], dim=1)))
        return crop_to(self.classifier(h), feats.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)``."""
        return self.head(self.backbone_features(x))


class UNet2D(UNet):
    """2D U-Net for CT slices; ``base_width`` is small (8-16) in the cpu profile."""

    def __init__(self, in_channels: int = 3, out_channels: int = 2, *, base_width: int = 32,
                 depth: int = 4, dropout: float = 0.0) -> None:
        super().__init__(2, in_channels, out_channels, base_width=base_width, depth=depth,
                         dropout=dropout)


class UNet3D(UNet):
    """3D U-Net of P3 (Çiçek et al.: three down-samplings, 32 channels at the first level)
    with MC dropout p = 0.5 (P3 Sec. III). P3 segments C = 6 classes (background and the five
    AAPM 2017 organs)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 6, *, base_width: int = 32,
                 depth: int = 3, dropout: float = 0.5) -> None:
        super().__init__(3, in_channels, out_channels, base_width=base_width, depth=depth,
                         dropout=dropout)
