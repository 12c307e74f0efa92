"""FCN8s on a VGG16 backbone, the segmentation network of P1 and P2.

P1 (Sec. 3, "Region-Selection methods") and P2 (Sec. 5, "Implementation Details") both use an
ImageNet-pretrained VGG16 FCN8 (Long et al., 2015). P1 adds a dropout layer (p = 0.5) after fc6
and after fc7 and draws I predictions with MC dropout (P1 Eq. 2). This module mirrors the
authors' ``FCN8VGG16``: VGG16 ``features`` (torchvision layout), fc6 as a 7x7 convolution and fc7
as a 1x1 convolution with 4096 channels, ``nn.Dropout(0.5)`` after each, ``score_fr``, a 2x
up-sampling fused with ``score_pool4``, a 2x up-sampling fused with ``score_pool3``, and an 8x
up-sampling back to the input size. Score layers start at zero and the transposed convolutions
start as bilinear interpolation (both as in Long et al. and the authors' code).

The forward pass is split in two so MC dropout can reuse the deterministic part:
``backbone_features(x)`` (VGG16 up to pool5, then fc6 + ReLU: everything before the first
dropout) and ``head(features)`` (drop6, fc7 ... upscore8, holding the only two dropout layers);
``forward(x) == head(backbone_features(x))``. fc6 is a third of the network's multiply-adds, so
keeping it out of the head is what makes I MC samples cost little more than one pass.

Two layouts, same parameter shapes (so the same ImageNet weights load into both):

* ``"classic"`` (default, as the authors' code): conv1_1 pads the input by 100 pixels, fc6 has no
  padding, and the fused maps are aligned with Long et al.'s crop offsets 5, 9 and 31. Works for
  any input size.
* ``"same"``: conv1_1 pads by 1, fc6 pads by 3 and every up-sampling doubles exactly; the input is
  zero-padded to a multiple of 32 and the output is cropped back. About 2.4x fewer backbone
  FLOPs at 352 x 352 than ``"classic"`` (no 100-pixel border), with pixel-aligned skips.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from covidlib.models._common import check_input, check_sizes, crop_to, pad_to_multiple

Layout = Literal["classic", "same"]
LAYOUTS: tuple[str, ...] = ("classic", "same")

VGG16_IMAGENET_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
"""URL of torchvision's ``VGG16_Weights.IMAGENET1K_V1`` checkpoint."""

# Indices into torchvision's ``vgg16().features``: [0, 17) ends with pool3 (1/8, 256 channels),
# [17, 24) with pool4 (1/16, 512 channels), [24, 31) with pool5 (1/32, 512 channels).
_POOL3_END, _POOL4_END, _POOL5_END = 17, 24, 31
_VGG_CLASSIFIER_KEYS = {
    "fc6.weight": "classifier.0.weight",
    "fc6.bias": "classifier.0.bias",
    "fc7.weight": "classifier.3.weight",
    "fc7.bias": "classifier.3.bias",
}


class FCN8Features(NamedTuple):
    """Output of :meth:`FCN8VGG16.backbone_features`: the deterministic part of the network."""

    pool3: torch.Tensor  # (B, 256, ~H/8, ~W/8)
    pool4: torch.Tensor  # (B, 512, ~H/16, ~W/16)
    fc6: torch.Tensor  # (B, fc_channels, ~H/32, ~W/32): relu6(fc6(pool5)), before drop6
    size: tuple[int, int]  # input (H, W) the head crops its output back to


def bilinear_upsampling_weight(channels: int, kernel_size: int) -> torch.Tensor:
    """Weight ``(channels, channels, k, k)`` making a ConvTranspose2d a per-channel bilinear
    up-sampler (Long et al.'s initialisation of the FCN up-sampling layers)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = np.ogrid[:kernel_size, :kernel_size]
    filt = (1 - np.abs(og[0] - center) / factor) * (1 - np.abs(og[1] - center) / factor)
    weight = np.zeros((channels, channels, kernel_size, kernel_size), dtype=np.float32)
    weight[range(channels), range(channels)] = filt
    return torch.from_numpy(weight)


def linear_to_conv_weight(weight: torch.Tensor, in_channels: int, kernel_size: int) -> torch.Tensor:
    """Reshape a Linear weight ``(out, in_channels * k * k)`` into a conv weight
    ``(out, in_channels, k, k)``.

    A Linear layer on a flattened ``(in_channels, k, k)`` map is the same map as this k x k
    convolution evaluated at one position, which is how FCN turns VGG16's fc6/fc7 into fc6/fc7
    convolutions that slide over larger inputs.
    """
    expected = in_channels * kernel_size * kernel_size
    if weight.ndim != 2 or weight.shape[1] != expected:
        raise ValueError(
            f"Linear weight of shape {tuple(weight.shape)} cannot become a "
            f"{kernel_size}x{kernel_size} convolution over {in_channels} channels "
            f"(expected (out, {expected}))"
        )
    return weight.reshape(weight.shape[0], in_channels, kernel_size, kernel_size)


def vgg16_to_fcn8_state_dict(vgg_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a torchvision VGG16 state dict onto :class:`FCN8VGG16` parameter names.

    ``features.*`` keep their names; ``classifier.0`` (fc6, Linear 25088 -> F) becomes the 7x7
    conv ``fc6`` and ``classifier.3`` (fc7, Linear F -> F) the 1x1 conv ``fc7``. The ImageNet
    classifier ``classifier.6`` is dropped.
    """
    missing = [k for k in _VGG_CLASSIFIER_KEYS.values() if k not in vgg_state]
    if missing or not any(k.startswith("features.") for k in vgg_state):
        raise ValueError(f"not a VGG16 state dict: missing {missing or ['features.*']}")
    out = {k: v for k, v in vgg_state.items() if k.startswith("features.")}
    out["fc6.weight"] = linear_to_conv_weight(vgg_state["classifier.0.weight"], 512, 7)
    out["fc6.bias"] = vgg_state["classifier.0.bias"]
    fc7 = vgg_state["classifier.3.weight"]
    out["fc7.weight"] = linear_to_conv_weight(fc7, fc7.shape[1] if fc7.ndim == 2 else -1, 1)
    out["fc7.bias"] = vgg_state["classifier.3.bias"]
    return out


def vgg16_checkpoint_path() -> str:
    """Where torch hub looks for (and stores) the VGG16 ImageNet checkpoint."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(VGG16_IMAGENET_URL))


def load_vgg16_imagenet_state_dict(progress: bool = True) -> dict[str, torch.Tensor]:
    """torchvision's VGG16 ImageNet weights (IMAGENET1K_V1): from the torch hub cache, else
    downloaded there. Raises ``RuntimeError`` naming the URL, the cache path and the reason when
    neither works (e.g. no internet)."""
    path = vgg16_checkpoint_path()
    try:
        return torch.hub.load_state_dict_from_url(
            VGG16_IMAGENET_URL, progress=progress, check_hash=True, map_location="cpu"
        )
    except Exception as err:
        where = (
            f"the file {path} exists but could not be read"
            if os.path.exists(path)
            else f"it is not in the torch hub cache ({path}) and could not be downloaded"
        )
        raise RuntimeError(
            f"weights='imagenet': cannot load the VGG16 ImageNet weights from "
            f"{VGG16_IMAGENET_URL}: {where} ({type(err).__name__}: {err}). Without internet, "
            f"download vgg16-397923af.pth elsewhere and place it by hand at {path} "
            f"(the folder is $TORCH_HOME/hub/checkpoints, TORCH_HOME defaulting to "
            f"~/.cache/torch), or use weights=None for random initialisation."
        ) from err


class FCN8VGG16(nn.Module):
    """FCN8s with a VGG16 backbone (P1, P2); MC-dropout sites after fc6 and fc7 (P1 Eq. 2).

    Args:
        n_classes: output channels C (logits, ``(B, C, H, W)``, same H, W as the input).
        in_channels: input channels (3 for ImageNet weights; CT slices are repeated to RGB).
        fc_channels: width of fc6/fc7 (4096 as in VGG16; smaller only for fast tests).
        dropout: dropout probability after fc6 and fc7 (P1: 0.5).
        weights: ``None`` (random init) or ``"imagenet"`` (torchvision VGG16 IMAGENET1K_V1).
        layout: ``"classic"`` (100-pixel padding and crops, as the authors) or ``"same"``.
    """

    def __init__(
        self,
        n_classes: int,
        *,
        in_channels: int = 3,
        fc_channels: int = 4096,
        dropout: float = 0.5,
        weights: Literal["imagenet"] | None = None,
        layout: Layout = "classic",
        progress: bool = True,
    ) -> None:
        super().__init__()
        _check_args(n_classes, in_channels, fc_channels, dropout, weights, layout)
        from torchvision.models.vgg import cfgs, make_layers

        self.n_classes, self.in_channels, self.layout = n_classes, in_channels, layout
        self.fc_channels = fc_channels
        # torchvision's vgg16().features without building its 120M-parameter classifier
        self.features = make_layers(cfgs["D"], batch_norm=False)
        if in_channels != 3:
            self.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3)
        self.features[0].padding = (100, 100) if layout == "classic" else (1, 1)
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                m.ceil_mode = True
            elif isinstance(m, nn.Conv2d):  # torchvision's VGG initialisation
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

        self.fc6 = nn.Conv2d(512, fc_channels, 7, padding=0 if layout == "classic" else 3)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(fc_channels, n_classes, 1)
        self.score_pool4 = nn.Conv2d(512, n_classes, 1)
        self.score_pool3 = nn.Conv2d(256, n_classes, 1)
        same = layout == "same"
        self.upscore2 = nn.ConvTranspose2d(
            n_classes, n_classes, 4, stride=2, padding=1 if same else 0, bias=False
        )
        self.upscore_pool4 = nn.ConvTranspose2d(
            n_classes, n_classes, 4, stride=2, padding=1 if same else 0, bias=False
        )
        self.upscore8 = nn.ConvTranspose2d(
            n_classes, n_classes, 16, stride=8, padding=4 if same else 0, bias=False
        )
        self._init_head()
        if weights == "imagenet":
            self.load_vgg16_state_dict(load_vgg16_imagenet_state_dict(progress=progress))

    def _init_head(self) -> None:
        for conv in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        for conv in (self.score_fr, self.score_pool4, self.score_pool3):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        for up in (self.upscore2, self.upscore_pool4, self.upscore8):
            up.weight.data.copy_(bilinear_upsampling_weight(self.n_classes, up.kernel_size[0]))

    def load_vgg16_state_dict(self, vgg_state: dict[str, torch.Tensor]) -> None:
        """Load a torchvision VGG16 state dict into the backbone and fc6/fc7 (see
        :func:`vgg16_to_fcn8_state_dict`); score and up-sampling layers keep their init."""
        if self.in_channels != 3:
            raise ValueError(
                f"VGG16 ImageNet weights expect in_channels=3, got in_channels={self.in_channels}"
            )
        state = vgg16_to_fcn8_state_dict(vgg_state)
        own = self.state_dict()
        for key, value in state.items():
            if key not in own:
                raise ValueError(f"VGG16 state dict: unexpected parameter {key!r}")
            if own[key].shape != value.shape:
                hint = " (fc_channels must match the checkpoint)" if key.startswith("fc") else ""
                raise ValueError(
                    f"VGG16 state dict: {key!r} has shape {tuple(value.shape)}, the model "
                    f"expects {tuple(own[key].shape)}{hint}; model fc_channels={self.fc_channels}"
                )
        missing = sorted(k for k in own if k.startswith(("features.", "fc6.", "fc7.")))
        missing = [k for k in missing if k not in state]
        if missing:
            raise ValueError(f"VGG16 state dict: missing parameters {missing}")
        self.load_state_dict(state, strict=False)

    def backbone_features(self, x: torch.Tensor) -> FCN8Features:
        """VGG16 to pool5, fc6 and ReLU: the deterministic part (no dropout) of the network."""
        check_input(x, spatial_dims=2, in_channels=self.in_channels, who="FCN8VGG16")
        size = (int(x.shape[2]), int(x.shape[3]))
        h = pad_to_multiple(x, 32) if self.layout == "same" else x
        pool3 = self.features[:_POOL3_END](h)
        pool4 = self.features[_POOL3_END:_POOL4_END](pool3)
        pool5 = self.features[_POOL4_END:_POOL5_END](pool4)
        return FCN8Features(pool3, pool4, self.relu6(self.fc6(pool5)), size)

    def head(self, feats: FCN8Features) -> torch.Tensor:
        """drop6-fc7-relu-drop7-score_fr, then FCN8 skip fusion with pool4 and pool3 and 8x
        up-sampling; logits ``(B, C, H, W)``. Holds the only dropout layers."""
        h = self.drop6(feats.fc6)
        h = self.drop7(self.relu7(self.fc7(h)))
        return self._fuse(self.score_fr(h), self.score_pool4(feats.pool4),
                          self.score_pool3(feats.pool3), feats.size)

    def head_samples(self, feats: FCN8Features, n_samples: int, seed: int | None = None,
                     max_batch: int = 32) -> torch.Tensor:
        """``n_samples`` MC-dropout passes of :meth:`head` at once: logits ``(I, B, C, H, W)``.

        Sample i's masks are drawn as :meth:`head` draws them (drop6 then drop7, same shapes,
        the numbers ``torch.manual_seed(seed + i)`` gives when ``seed`` is given; see
        :meth:`draw_masks`), so the result equals I calls of ``head`` (P1 Eq. 2's I
        predictions). fc7, score_fr and the up-sampling then
        run on up to ``max_batch`` maps per call (one larger GEMM instead of I small ones),
        and the skip scores of pool3 / pool4, which no dropout precedes, are computed once.
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"head_samples: n_samples={n_samples!r} must be a positive integer")
        b = int(feats.fc6.shape[0])
        chunk = max(1, int(max_batch) // max(1, b))
        sp4, sp3 = self.score_pool4(feats.pool4), self.score_pool3(feats.pool3)
        out = []
        for start in range(0, n_samples, chunk):
            c = min(n_samples, start + chunk) - start
            # the masks of the chunk's samples, drawn in place (fc7 is 1x1: its output has
            # fc6's shape): no per-sample tensors to stack, no multiplication by ones
            m6 = feats.fc6.new_empty((c, *feats.fc6.shape))
            m7 = torch.empty_like(m6)
            self.draw_masks(m6, m7, seed, start)
            h = m6.mul_(feats.fc6.unsqueeze(0)).flatten(0, 1)  # (c * B, F, h, w)
            h = self.relu7(self.fc7(h)).mul_(m7.flatten(0, 1))
            logits = self._fuse(self.score_fr(h), sp4.repeat(c, 1, 1, 1),
                                sp3.repeat(c, 1, 1, 1), feats.size)
            out.append(logits.unflatten(0, (c, b)))
        return out[0] if len(out) == 1 else torch.cat(out)

    def draw_masks(self, m6: torch.Tensor, m7: torch.Tensor, seed: int | None,
                    start: int) -> None:
        """Fill ``m6[j]``, ``m7[j]`` with sample ``start + j``'s drop6 and drop7 masks.

        With a ``seed`` on a CPU, sample i draws from its own generator seeded ``seed + i``
        (the numbers ``torch.manual_seed(seed + i)`` gives the global one; the global state is
        left alone) and, with more than one torch thread, the samples are drawn in parallel:
        ATen draws Bernoulli numbers on one thread, so they would otherwise leave the other
        cores idle. Else in sequence from the global generator, as :meth:`head` draws them.
        """
        own = (seed is not None and m6.device.type == "cpu"
               and all(isinstance(d, nn.Dropout) for d in (self.drop6, self.drop7)))

        def draw(j: int) -> None:
            gen = torch.Generator().manual_seed(seed + start + j) if own else None
            if seed is not None and not own:
                torch.manual_seed(seed + start + j)
            _dropout_mask_(self.drop6, m6[j], gen)
            _dropout_mask_(self.drop7, m7[j], gen)

        workers = min(torch.get_num_threads(), m6.shape[0]) if own else 1
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(draw, range(m6.shape[0])))
        else:
            for j in range(m6.shape[0]):
                draw(j)

    def _fuse(self, score_fr: torch.Tensor, score_pool4: torch.Tensor,
              score_pool3: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """FCN8's skip fusion and up-sampling of the fc7 scores to logits of ``size``."""
        upscore2 = self.upscore2(score_fr)
        if self.layout == "classic":  # Long et al.'s crop offsets for the 100-pixel padding
            score_pool4 = _crop_at(score_pool4, 5, upscore2.shape[2:])
            upscore_pool4 = self.upscore_pool4(score_pool4 + upscore2)
            score_pool3 = _crop_at(score_pool3, 9, upscore_pool4.shape[2:])
            out = self.upscore8(score_pool3 + upscore_pool4)
            return _crop_at(out, 31, size)
        upscore_pool4 = self.upscore_pool4(score_pool4 + upscore2)
        out = self.upscore8(score_pool3 + upscore_pool4)
        return crop_to(out, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, H, W)`` for images ``(B, in_channels, H, W)``."""
        return self.head(self.backbone_features(x))


def _dropout_mask_(layer: nn.Module, out: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``out`` with the scaled mask ``layer`` (an ``nn.Dropout``) would multiply an input
    of ``out``'s shape by: what ``layer(torch.ones_like(out))`` returns, drawing the same
    random numbers. On a CPU, ATen's dropout is ``bernoulli_(1 - p)`` then ``div_(1 - p)``
    (none when the layer is off or p is 0 or 1), done here in place; other devices have a
    fused kernel with its own draws, so the layer itself runs on ones there (global
    generator). ``generator``: the CPU generator to draw from (default: the global one)."""
    if out.device.type != "cpu" or not isinstance(layer, nn.Dropout):
        return out.copy_(layer(torch.ones_like(out)))
    p = float(layer.p)
    if not layer.training or p == 0.0:
        return out.fill_(1.0)
    if p == 1.0:
        return out.fill_(0.0)
    return out.bernoulli_(1.0 - p, generator=generator).div_(1.0 - p)


def _crop_at(x: torch.Tensor, offset: int, size: tuple[int, ...] | torch.Size) -> torch.Tensor:
    h, w = int(size[0]), int(size[1])
    return x[:, :, offset : offset + h, offset : offset + w].contiguous()


def _check_args(
    n_classes: int,
    in_channels: int,
    fc_channels: int,
    dropout: float,
    weights: object,
    layout: object,
) -> None:
    check_sizes("FCN8VGG16", dropout, n_classes=n_classes, in_channels=in_channels,
                fc_channels=fc_channels)
    if weights not in (None, "imagenet"):
        raise ValueError(f"FCN8VGG16: weights={weights!r} must be None or 'imagenet'")
    if weights == "imagenet" and in_channels != 3:
        raise ValueError(
            f"FCN8VGG16: weights='imagenet' needs in_channels=3, got in_channels={in_channels}"
        )
    if layout not in LAYOUTS:
        raise ValueError(f"FCN8VGG16: layout={layout!r} must be one of {LAYOUTS}")
