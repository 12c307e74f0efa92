"""The 3D residual U-Net of P4 (Table 1; Sec. 4 "Implementation Details"), built from MONAI.

P4 uses "a modified version of 3D UNet (Çiçek et al., 2016) ... which has residual connections
around the convolutional blocks as in (Kerfoot et al., 2018)"; Kerfoot et al.'s network is MONAI's
``UNet`` with residual units. Table 1 pins the configuration, and this one reproduces every row:

    monai.networks.nets.UNet(spatial_dims=3, in_channels=1, out_channels=2,
        channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), kernel_size=3, up_kernel_size=3,
        num_res_units=2, act="PRELU", norm=("batch", {"affine": False}))

* encoder units: two 3^3 convs (the first with stride 2) + a 3^3 stride-2 residual conv, e.g.
  row 1: conv 1->16 (432 + 16) + PReLU (1) + residual conv (432 + 16) = 897;
* bottleneck: 128->256 with a 1^3 residual conv: 884,736 + 256 + 1 + 33,024 = 918,017;
* decoder: 3^3 stride-2 transposed conv on the concatenation (e.g. (256 + 128) * 64 * 27 + 64 + 1
  = 663,617) and one residual sub-unit with an identity shortcut; the last one is a bare conv
  (2 * 2 * 27 + 2 = 110).
* Total 4,806,481 trainable parameters.

Why ``affine=False``: Table 1 marks batch norm in every block, but its counts include no
normalisation parameters; with affine batch norm the count would be 4,808,917 (+2,436 = two per
channel of each of the 18 normalisation layers). A normalisation without learnable scale/shift
matches the paper exactly. MONAI's default ``norm="INSTANCE"`` (no affine either) gives the same
4,806,481 and may be what the authors ran (PyTorch 1.6-era MONAI); pass ``norm="instance"`` to get
it. Table 1 books each residual conv's parameters in the first conv row of its unit; the
``params_p4`` column of :func:`resunet3d_table` does the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from covidlib.models._common import check_sizes, count_trainable_parameters

P4_CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 256)
P4_STRIDES: tuple[int, ...] = (2, 2, 2, 2)
P4_INPUT_SHAPE: tuple[int, ...] = (1, 1, 96, 96, 96)  # P4 Table 1 input 96^3 x 1
_NORMS: dict[str, Any] = {"batch": ("batch", {"affine": False}), "instance": "instance"}


def resunet3d_p4(
    in_channels: int = 1,
    out_channels: int = 2,
    *,
    norm: str = "batch",
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI residual 3D U-Net with P4 Table 1's configuration (4,806,481 parameters for
    ``in_channels=1, out_channels=2``). ``norm``: ``"batch"`` (non-affine batch norm, as the
    table's BN column) or ``"instance"`` (MONAI's default; same count)."""
    from monai.networks.nets import UNet

    if norm not in _NORMS:
        raise ValueError(f"resunet3d_p4: norm={norm!r} must be one of {tuple(_NORMS)}")
    check_sizes("resunet3d_p4", dropout, in_channels=in_channels, out_channels=out_channels)
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=P4_CHANNELS,
        strides=P4_STRIDES,
        kernel_size=3,
        up_kernel_size=3,
        num_res_units=2,
        act="PRELU",
        norm=_NORMS[norm],
        dropout=dropout,
    )


def resunet2d_p4(in_channels: int = 1, out_channels: int = 2) -> nn.Module:
    """The 2-D analogue of P4's network (Table 1 with 3 x 3 kernels): MONAI residual
    ``UNet``, channels 16-256, four stride-2 levels, two residual units, PReLU, non-affine
    batch norm. P4's slices variants (COVID-SemiSeg, ma20-slices) train it on single slices."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                channels=P4_CHANNELS, strides=P4_STRIDES, kernel_size=3,
                up_kernel_size=3, num_res_units=2, act="PRELU",
                norm=("batch", {"affine": False}))


def _kernel(conv: nn.Module) -> str:
    if not hasattr(conv, "kernel_size"):
        return "I"
    return "x".join(str(k) for k in conv.kernel_size)


def _stride(conv: nn.Module) -> int | str:
    stride = getattr(conv, "stride", None)
    if stride is None:
        return "-"
    return int(stride[0]) if len(set(stride)) == 1 else "x".join(map(str, stride))


def _block_rows(model: nn.Module) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One row per MONAI convolution block and residual shortcut, in P4 Table 1's order, and
    the index of each residual unit's first conv row."""
    from monai.networks.blocks import Convolution, ResidualUnit

    modules = dict(model.named_modules())
    rows: list[dict[str, Any]] = []
    unit_first_row: dict[str, int] = {}
    block, n_enc, n_dec = "", 0, 0
    for name, module in modules.items():
        parent_name = name.rpartition(".")[0]
        if isinstance(module, ResidualUnit):
            in_decoder = isinstance(modules.get(parent_name), nn.Sequential) and any(
                isinstance(c, Convolution) and c.is_transposed
                for c in modules[parent_name].children()
            )
            if not in_decoder:
                first = next(c for c in module.conv.children() if isinstance(c, Convolution))
                if _stride(first.conv) not in (1, "-"):
                    n_enc += 1
                    block = f"encoder {n_enc}"
                else:
                    block = "bottleneck"
            continue
        if isinstance(module, Convolution):
            if module.is_transposed:
                n_dec += 1
                block = f"decoder {n_enc + 1 - n_dec}"
            adn = getattr(module, "adn", None)
            act = getattr(adn, "A", None) if adn is not None else None
            norm = getattr(adn, "N", None) if adn is not None else None
            unit = parent_name.rpartition(".")[0]  # ResidualUnit owning "<unit>.conv.unitK"
            if isinstance(modules.get(unit), ResidualUnit) and unit not in unit_first_row:
                unit_first_row[unit] = len(rows)
            rows.append(
                {
                    "block": block,
                    "layer": name,
                    "type": "ConvTranspose3D" if module.is_transposed else "Conv3D",
                    "kernel": _kernel(module.conv),
                    "stride": _stride(module.conv),
                    "activation": type(act).__name__ if act is not None else "-",
                    "norm": type(norm).__name__ if norm is not None else "-",
                    "module": module,
                }
            )
        elif name.endswith(".residual") and isinstance(modules.get(parent_name), ResidualUnit):
            rows.append(
                {
                    "block": block,
                    "layer": name,
                    "type": "Conv3D-Res",
                    "kernel": _kernel(module),
                    "stride": _stride(module),
                    "activation": "-",
                    "norm": "-",
                    "module": module,
                    "unit": parent_name,
                }
            )
    return rows, unit_first_row


def _forward_shapes(model: nn.Module, rows: list[dict[str, Any]], shape: tuple[int, ...]
                    ) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Input/output shape (without batch) of each row's module, from one forward pass."""
    shapes: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def _hook(index: int):
        def hook(_m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            shapes[index] = (tuple(args[0].shape[1:]), tuple(out.shape[1:]))

        return hook

    handles = [row["module"].register_forward_hook(_hook(i)) for i, row in enumerate(rows)]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        x = torch.zeros(shape, device=param.device if param is not None else "cpu")
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes


def _fill_params(rows: list[dict[str, Any]],
                 shapes: dict[int, tuple[tuple[int, ...], tuple[int, ...]]],
                 unit_first_row: dict[str, int]) -> None:
    """Shapes and parameter counts per row; residual parameters booked as P4 does."""
    for i, row in enumerate(rows):
        module = row.pop("module")
        row["input"], row["output"] = shapes.get(i, ((), ()))
        row["params"] = count_trainable_parameters(module)
        row["params_p4"] = row["params"]
    for row in rows:
        unit = row.pop("unit", None)
        if unit is not None and unit in unit_first_row:
            rows[unit_first_row[unit]]["params_p4"] += row["params"]
            row["params_p4"] = 0


def _total_row(total: int) -> dict[str, Any]:
    """The table's closing ``Total`` row."""
    return {
        "block": "",
        "layer": "Total",
        "type": "",
        "kernel": "",
        "stride": "",
        "activation": "",
        "norm": "",
        "input": "",
        "output": "",
        "params": total,
        "params_p4": total,
    }


def resunet3d_table(
    model: nn.Module, input_shape: Sequence[int] = P4_INPUT_SHAPE
) -> pd.DataFrame:
    """P4 Table 1 computed from ``model`` (a MONAI residual ``UNet``) by forward hooks.

    One row per convolution block (conv + norm + PReLU) and per residual shortcut, in the
    table's order, then a ``Total`` row. Columns: block, layer (module path), type, kernel,
    stride, activation, norm, input / output (shape without the batch axis), params (the module's
    own trainable parameters) and params_p4 (residual parameters booked in the first conv row of
    their unit, as P4 does). Both totals equal the model's trainable parameter count.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 5 or min(shape) < 1:
        raise ValueError(f"resunet3d_table: input_shape={shape} must be (B, C, D, H, W)")
    rows, unit_first_row = _block_rows(model)
    if not rows:
        raise ValueError(
            f"resunet3d_table: {type(model).__name__} has no MONAI Convolution blocks; "
            "expected a monai.networks.nets.UNet"
        )

    shapes = _forward_shapes(model, rows, shape)
    _fill_params(rows, shapes, unit_first_row)
    total = count_trainable_parameters(model)
    covered = sum(r["params"] for r in rows)
    if covered != total:
        raise RuntimeError(
            f"resunet3d_table: the rows cover {covered} of the model's {total} trainable "
            "parameters; the model has layers outside MONAI Convolution/residual blocks"
        )
    rows.append(_total_row(total))
    return pd.DataFrame(rows)
