"""Backbones and weights for the builders: torchvision's own backbone builders
(any ResNet-family or MobileNet name), and ``weights=`` as a torchvision
weights enum or the path of a checkpoint file on disk."""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor, _validate_trainable_layers
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

Weights = Union[None, str, os.PathLike, torchvision.models.WeightsEnum]

_RESNETS = ("resnet", "resnext", "wide_resnet")
_MOBILENETS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")


def is_path(weights: Weights) -> bool:
    return isinstance(weights, (str, os.PathLike))


def resolve(weights: Weights, num_classes: Optional[int], weights_backbone, tv_enum, backbone_name: str):
    """torchvision's builder preamble: the weights enum (None for a path), the
    number of classes, the backbone weights and whether the model is trained.
    The builders' default backbone weights are ResNet-50's: another
    ``backbone_name`` drops them (random initialisation)."""
    if backbone_name != "resnet50" and weights_backbone == torchvision.models.ResNet50_Weights.IMAGENET1K_V1:
        weights_backbone = None
    if is_path(weights):
        return None, 91 if num_classes is None else num_classes, None, True
    weights = tv_enum.verify(weights)
    if weights is not None:
        weights_backbone = None
        expected = len(weights.meta["categories"])
        if num_classes is not None and num_classes != expected:
            raise ValueError(f"num_classes must be {expected} with weights {weights}, got {num_classes}")
        num_classes = expected
    elif num_classes is None:
        num_classes = 91
    return weights, num_classes, weights_backbone, weights is not None or weights_backbone is not None


def backbone(
    backbone_name: str,
    *,
    weights_backbone,
    progress: bool,
    trainable_layers: Optional[int],
    is_trained: bool,
    norm_layer: Optional[Callable[..., nn.Module]],
    fpn_norm_layer: Optional[Callable[..., nn.Module]] = None,
    retinanet: bool = False,
    retinanet_p6p7_from_c5: bool = False,
) -> nn.Module:
    """A torchvision backbone with FPN, as torchvision's builders make them.

    ``norm_layer=None`` picks torchvision's default: FrozenBatchNorm2d when the
    model or backbone is trained, BatchNorm2d otherwise. ResNet-family names
    give 5 levels (R-CNN: C2-C5 + pool; RetinaNet: C3-C5 + P6, P7); MobileNet
    names give 3 (the last two stages + pool), for R-CNN and RetinaNet alike.
    """
    if norm_layer is None:
        norm_layer = misc_nn_ops.FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
    if backbone_name.startswith(_RESNETS):
        trainable_layers = _validate_trainable_layers(is_trained, trainable_layers, 5, 3)
        body = torchvision.models.get_model(backbone_name, weights=weights_backbone, progress=progress,
                                            norm_layer=norm_layer)
        if not retinanet:
            return _resnet_fpn_extractor(body, trainable_layers, norm_layer=fpn_norm_layer)
        c5 = body.fc.in_features
        extra = LastLevelP6P7(c5, 256) if retinanet_p6p7_from_c5 else LastLevelP6P7(256, 256)
        return _resnet_fpn_extractor(body, trainable_layers, returned_layers=[2, 3, 4], extra_blocks=extra,
                                     norm_layer=fpn_norm_layer)
    if backbone_name in _MOBILENETS:
        trainable_layers = _validate_trainable_layers(is_trained, trainable_layers, 6, 3)
        body = torchvision.models.get_model(backbone_name, weights=weights_backbone, progress=progress,
                                            norm_layer=norm_layer)
        return _mobilenet_extractor(body, True, trainable_layers, norm_layer=fpn_norm_layer)
    raise ValueError(
        f"backbone_name must name a torchvision ResNet-family or MobileNet model ({', '.join(_RESNETS)}*, "
        f"{', '.join(_MOBILENETS)}), got {backbone_name!r}"
    )


def is_mobilenet(backbone_name: str) -> bool:
    return backbone_name in _MOBILENETS


def load_weights(model: nn.Module, weights: Weights, progress: bool, zero_eps: bool) -> None:
    """Load ``weights``: a path (torchvision's checkpoint file, or a dict holding it
    under ``"model"``) or a torchvision weights enum (downloaded, or read from
    torch.hub's cache). ``zero_eps``: the COCO_V1 checkpoints' FrozenBatchNorm2d eps of 0,
    as torchvision's builders set it."""
    if weights is None:
        return
    if is_path(weights):
        state = torch.load(os.fspath(weights), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
    else:
        state = weights.get_state_dict(progress=progress, check_hash=True)
    model.load_state_dict(state)
    if zero_eps:
        from torchvision.models.detection._utils import overwrite_eps

        overwrite_eps(model, 0.0)

