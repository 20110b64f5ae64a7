"""Landmark regression networks: Vanilla CNN (Table I), ResNeXt-50, MobileNetV2, CNT model.

Every model takes float images in ``[0, 1]`` of shape ``(N, 3, S, S)``, normalizes
them with the ImageNet mean/std as its first step, and predicts ``(N, L, 2)``
coordinates divided by S. Each is a ``backbone`` (all convolutional layers) plus a
``head``; :class:`CrossProtocolModel` shares one backbone between protocol branches.
"""

from sepbn.models.cross_protocol import (
    BranchFactory,
    CrossProtocolModel,
    LandmarkRegressor,
    is_cross_protocol,
)
from sepbn.models.factory import ARCHS, NORM_LAYERS, branch_factory, build_model, make_norm_layer
from sepbn.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImageNormalize, to_model_input
from sepbn.models.torchvision_backbones import (
    SEPBN_POSITIONS,
    PooledBranch,
    PooledHead,
    bottleneck_norm_positions,
    convert_bottleneck_norms,
    imagenet_weights_path,
    load_imagenet_weights,
    mobilenet_v2,
    mobilenet_v2_backbone,
    resnext50,
    resnext50_backbone,
)
from sepbn.models.vanilla_cnn import (
    BLOCK_CHANNELS,
    VanillaBackbone,
    VanillaBranch,
    VanillaCNN,
    VanillaHead,
)

__all__ = [
    "ARCHS",
    "BLOCK_CHANNELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORM_LAYERS",
    "SEPBN_POSITIONS",
    "BranchFactory",
    "CrossProtocolModel",
    "ImageNormalize",
    "LandmarkRegressor",
    "PooledBranch",
    "PooledHead",
    "VanillaBackbone",
    "VanillaBranch",
    "VanillaCNN",
    "VanillaHead",
    "bottleneck_norm_positions",
    "branch_factory",
    "build_model",
    "convert_bottleneck_norms",
    "imagenet_weights_path",
    "is_cross_protocol",
    "load_imagenet_weights",
    "make_norm_layer",
    "mobilenet_v2",
    "mobilenet_v2_backbone",
    "resnext50",
    "resnext50_backbone",
    "to_model_input",
]
