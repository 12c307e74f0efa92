"""Networks of the four papers and MC-dropout sampling.

* :class:`FCN8VGG16` - FCN8s on VGG16 with dropout after fc6/fc7 (P1, P2).
* :class:`UNet2D`, :class:`UNet3D` - U-Nets; ``UNet3D`` defaults to P3's MC-dropout 3D U-Net.
* :func:`resunet3d_p4` / :func:`resunet3d_table` - P4's residual 3D U-Net and its Table 1;
  :func:`resunet2d_p4` its 2-D analogue (P4's slice variants).
* :func:`enable_mc_dropout`, :func:`mc_predict` - MC dropout (P1 Eq. 2, P3 Sec. II).
* :func:`build_model` - all of the above by name.
"""

from covidlib.models._common import count_trainable_parameters
from covidlib.models.fcn8 import (
    FCN8VGG16,
    VGG16_IMAGENET_URL,
    FCN8Features,
    linear_to_conv_weight,
    vgg16_checkpoint_path,
    vgg16_to_fcn8_state_dict,
)
from covidlib.models.mc_dropout import dropout_modules, enable_mc_dropout, mc_predict
from covidlib.models.registry import MODEL_NAMES, build_model
from covidlib.models.resunet3d import (
    resunet2d_p4,
    resunet3d_p4,
    resunet3d_table,
)
from covidlib.models.unet import UNet, UNet2D, UNet3D, UNetFeatures

__all__ = [
    "FCN8VGG16",
    "MODEL_NAMES",
    "VGG16_IMAGENET_URL",
    "FCN8Features",
    "UNet",
    "UNet2D",
    "UNet3D",
    "UNetFeatures",
    "build_model",
    "count_trainable_parameters",
    "dropout_modules",
    "enable_mc_dropout",
    "linear_to_conv_weight",
    "mc_predict",
    "resunet2d_p4",
    "resunet3d_p4",
    "resunet3d_table",
    "vgg16_checkpoint_path",
    "vgg16_to_fcn8_state_dict",
]
