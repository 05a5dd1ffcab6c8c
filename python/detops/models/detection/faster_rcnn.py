"""Faster R-CNN on detops ops, checkpoint-compatible with torchvision's."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn
from torchvision.models import detection as tvd
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.rpn import RPNHead

from ... import ops as dops
from . import _builders as B
from ._rcnn import RCNNMixin, detopsify_rcnn

__all__ = ["FasterRCNN", "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2"]


def _split_detops_parts(kwargs: dict) -> dict:
    # torchvision's constructors type-check these against their own classes
    parts = {}
    gen = kwargs.get("rpn_anchor_generator")
    if isinstance(gen, dops.AnchorGenerator):
        # torchvision sizes the RPN head from its own generator; detopsify_rcnn converts it back
        kwargs["rpn_anchor_generator"] = tvd.anchor_utils.AnchorGenerator(gen.sizes, gen.aspect_ratios)
    for key, cls in (("box_roi_pool", dops.MultiScaleRoIAlign),
                     ("mask_roi_pool", dops.MultiScaleRoIAlign)):
        if isinstance(kwargs.get(key), cls):
            parts[key] = kwargs.pop(key)
    return parts


def _set_detops_parts(model: nn.Module, parts: dict) -> None:
    if "rpn_anchor_generator" in parts:
        model.rpn.anchor_generator = parts["rpn_anchor_generator"]
    if "box_roi_pool" in parts:
        model.roi_heads.box_roi_pool = parts["box_roi_pool"]
    if "mask_roi_pool" in parts:
        model.roi_heads.mask_roi_pool = parts["mask_roi_pool"]


class FasterRCNN(RCNNMixin, tvd.FasterRCNN):
    """Faster R-CNN (torchvision's ``FasterRCNN``, same arguments, modules and
    state_dict keys) with the work after the backbone on detops ops and batched
    over the images: one fused anchor launch, decoding of the selected anchors
    only, per-level and per-class NMS of all images in one ``multiclass_nms``
    launch each, one ``MultiScaleRoIAlign`` launch.

    Inputs: a list of ``[3, H, W]`` float images in ``[0, 1]`` (sizes may differ)
    and, in training, targets: per image a dict with ``boxes`` ``[N, 4]``
    ``(x1, y1, x2, y2)`` in pixels (``0 <= x1 < x2 <= W``) and ``labels`` ``[N]`` int64.

    Outputs: in training, a dict of losses (``loss_classifier``, ``loss_box_reg``,
    ``loss_objectness``, ``loss_rpn_box_reg``). In eval, per image a dict with
    ``boxes`` ``[N, 4]`` (``x1, y1, x2, y2``, original image pixels), ``labels``
    ``[N]`` int64 and ``scores`` ``[N]``: the same as torchvision's model with
    the same weights. In :meth:`export_mode`, one dict of padded batched tensors.

    Args: see ``torchvision.models.detection.FasterRCNN``; its
    ``rpn_anchor_generator`` and ``box_roi_pool`` may also be detops' modules.
    """

    def __init__(self, backbone: nn.Module, num_classes: Optional[int] = None, **kwargs: Any) -> None:
        parts = _split_detops_parts(kwargs)
        super().__init__(backbone, num_classes, **kwargs)
        _set_detops_parts(self, parts)
        detopsify_rcnn(self)


def _mobilenet_anchors() -> dops.AnchorGenerator:
    # torchvision's fasterrcnn_mobilenet_v3_large_fpn anchors (3 levels)
    sizes = ((32, 64, 128, 256, 512),) * 3
    return dops.AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 3)


def _build_rcnn(cls, tv_enum, v2: bool, zero_eps: bool, *, weights, progress, num_classes, weights_backbone,
                trainable_backbone_layers, backbone_name, mask: bool, **kwargs):
    path = weights
    weights, num_classes, weights_backbone, is_trained = B.resolve(weights, num_classes, weights_backbone, tv_enum,
                                                                    backbone_name)
    body = B.backbone(
        backbone_name, weights_backbone=weights_backbone, progress=progress,
        trainable_layers=trainable_backbone_layers, is_trained=is_trained,
        norm_layer=nn.BatchNorm2d if v2 else None, fpn_norm_layer=nn.BatchNorm2d if v2 else None,
    )
    if B.is_mobilenet(backbone_name):
        kwargs.setdefault("rpn_anchor_generator", _mobilenet_anchors())
    if v2:
        gen = kwargs.get("rpn_anchor_generator") or tvd.faster_rcnn._default_anchorgen()
        kwargs["rpn_anchor_generator"] = gen
        kwargs.setdefault("rpn_head", RPNHead(body.out_channels, gen.num_anchors_per_location()[0], conv_depth=2))
        kwargs.setdefault("box_head", FastRCNNConvFCHead((body.out_channels, 7, 7), [256, 256, 256, 256], [1024],
                                                         norm_layer=nn.BatchNorm2d))
        if mask:
            kwargs.setdefault("mask_head", tvd.mask_rcnn.MaskRCNNHeads(body.out_channels, [256, 256, 256, 256], 1,
                                                                       norm_layer=nn.BatchNorm2d))
    model = cls(body, num_classes=num_classes, **kwargs)
    source = path if B.is_path(path) else weights
    B.load_weights(model, source, progress, zero_eps and (B.is_path(path) or weights == tv_enum.COCO_V1))
    return model


def fasterrcnn_resnet50_fpn(
    *,
    weights: B.Weights = None,
    progress: bool = True,
    num_classes: Optional[int] = None,
    weights_backbone=tvd.faster_rcnn.ResNet50_Weights.IMAGENET1K_V1,
    trainable_backbone_layers: Optional[int] = None,
    backbone_name: str = "resnet50",
    **kwargs: Any,
) -> FasterRCNN:
    """torchvision's ``fasterrcnn_resnet50_fpn`` as a detops :class:`FasterRCNN`.

    Args:
        weights: ``FasterRCNN_ResNet50_FPN_Weights`` (needs the download or the file
            in torch.hub's cache) or the path of torchvision's checkpoint file
            (``fasterrcnn_resnet50_fpn_coco-258fb6c6.pth``, placed there by the user;
            its FrozenBatchNorm eps is set to 0 as torchvision does for COCO_V1).
        weights_backbone: the backbone's torchvision weights (enum); ``None`` for
            random initialisation. Must match ``backbone_name``.
        backbone_name: any torchvision ResNet-family model (``resnet18``,
            ``resnext50_32x4d``, ...) or ``mobilenet_v2``/``mobilenet_v3_large``/
            ``mobilenet_v3_small`` (3 FPN levels with torchvision's MobileNet anchors).
        num_classes, progress, trainable_backbone_layers, kwargs: as torchvision's.
    """
    return _build_rcnn(FasterRCNN, tvd.FasterRCNN_ResNet50_FPN_Weights, False, True, weights=weights,
                       progress=progress, num_classes=num_classes, weights_backbone=weights_backbone,
                       trainable_backbone_layers=trainable_backbone_layers, backbone_name=backbone_name,
                       mask=False, **kwargs)


def fasterrcnn_resnet50_fpn_v2(
    *,
    weights: B.Weights = None,
    progress: bool = True,
    num_classes: Optional[int] = None,
    weights_backbone=None,
    trainable_backbone_layers: Optional[int] = None,
    backbone_name: str = "resnet50",
    **kwargs: Any,
) -> FasterRCNN:
    """torchvision's ``fasterrcnn_resnet50_fpn_v2`` (BatchNorm, 2-conv RPN head,
    4-conv box head) as a detops :class:`FasterRCNN`; arguments as
    :func:`fasterrcnn_resnet50_fpn` (checkpoint ``fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth``)."""
    return _build_rcnn(FasterRCNN, tvd.FasterRCNN_ResNet50_FPN_V2_Weights, True, False, weights=weights,
                       progress=progress, num_classes=num_classes, weights_backbone=weights_backbone,
                       trainable_backbone_layers=trainable_backbone_layers, backbone_name=backbone_name,
                       mask=False, **kwargs)
