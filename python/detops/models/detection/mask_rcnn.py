"""Mask R-CNN on detops ops, checkpoint-compatible with torchvision's."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn
from torchvision.models import detection as tvd

from . import _builders as B
from ._rcnn import RCNNMixin, detopsify_rcnn
from .faster_rcnn import _build_rcnn, _set_detops_parts, _split_detops_parts

__all__ = ["MaskRCNN", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"]


class MaskRCNN(RCNNMixin, tvd.MaskRCNN):
    """Mask R-CNN (torchvision's ``MaskRCNN``, same arguments, modules and
    state_dict keys) on detops ops: :class:`FasterRCNN`'s batched detection,
    then one ``MultiScaleRoIAlign`` launch for the masks of all images, the
    mask head's transposed convolution (+ ReLU, fused) on
    ``detops.nn.ConvTranspose2d``, and all masks pasted into their images at once.

    Inputs: as :class:`FasterRCNN`; targets also carry ``masks`` ``[N, H, W]`` uint8.

    Outputs: in training, :class:`FasterRCNN`'s losses plus ``loss_mask``. In
    eval, per image ``boxes``, ``labels``, ``scores`` and ``masks`` ``[N, 1, H, W]``
    probabilities in the original image's size (threshold at 0.5 for binary
    masks): the same as torchvision's model with the same weights. In
    :meth:`export_mode`, one dict of padded batched tensors with ``masks``
    ``[B, D, 1, H, W]``.
    """

    def __init__(self, backbone: nn.Module, num_classes: Optional[int] = None, **kwargs: Any) -> None:
        parts = _split_detops_parts(kwargs)
        super().__init__(backbone, num_classes, **kwargs)
        _set_detops_parts(self, parts)
        detopsify_rcnn(self)


def maskrcnn_resnet50_fpn(
    *,
    weights: B.Weights = None,
    progress: bool = True,
    num_classes: Optional[int] = None,
    weights_backbone=tvd.mask_rcnn.ResNet50_Weights.IMAGENET1K_V1,
    trainable_backbone_layers: Optional[int] = None,
    backbone_name: str = "resnet50",
    **kwargs: Any,
) -> MaskRCNN:
    """torchvision's ``maskrcnn_resnet50_fpn`` as a detops :class:`MaskRCNN`;
    arguments as :func:`fasterrcnn_resnet50_fpn` (checkpoint
    ``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth``)."""
    return _build_rcnn(MaskRCNN, tvd.MaskRCNN_ResNet50_FPN_Weights, False, True, weights=weights,
                       progress=progress, num_classes=num_classes, weights_backbone=weights_backbone,
                       trainable_backbone_layers=trainable_backbone_layers, backbone_name=backbone_name,
                       mask=True, **kwargs)


def maskrcnn_resnet50_fpn_v2(
    *,
    weights: B.Weights = None,
    progress: bool = True,
    num_classes: Optional[int] = None,
    weights_backbone=None,
    trainable_backbone_layers: Optional[int] = None,
    backbone_name: str = "resnet50",
    **kwargs: Any,
) -> MaskRCNN:
    """torchvision's ``maskrcnn_resnet50_fpn_v2`` as a detops :class:`MaskRCNN`;
    arguments as :func:`fasterrcnn_resnet50_fpn` (checkpoint
    ``maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth``)."""
    return _build_rcnn(MaskRCNN, tvd.MaskRCNN_ResNet50_FPN_V2_Weights, True, False, weights=weights,
                       progress=progress, num_classes=num_classes, weights_backbone=weights_backbone,
                       trainable_backbone_layers=trainable_backbone_layers, backbone_name=backbone_name,
                       mask=True, **kwargs)
