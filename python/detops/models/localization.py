"""Classification + localisation: a backbone with a class head and a box head.

Boxes are ``(x, y, w, h)``: top-left corner and size, as fractions of the image
width and height (COCO's ``xywh`` order, normalised), in ``[0, 1]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ._backbones import classifier_backbone

__all__ = ["Localizer", "localizer", "localization_loss", "localization_iou"]


class Localizer(nn.Module):
    """A backbone ``[N, 3, H, W] -> [N, F]`` with a class head and a box head.

    With ``num_objects=None`` (single object) the forward returns
    ``(class_logits [N, K], boxes [N, 4])``; with ``num_objects=M`` (the fixed-N
    variant) ``(class_logits [N, M, K], boxes [N, M, 4])``. Boxes are normalised
    ``(x, y, w, h)`` (sigmoid outputs).
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int,
                 num_objects: int | None = None, hidden: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes, self.num_objects = num_classes, num_objects
        m = num_objects or 1
        self.class_head = nn.Linear(num_features, m * num_classes)
        self.box_head = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, m * 4))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        f = self.backbone(images).flatten(1)
        logits, boxes = self.class_head(f), self.box_head(f).sigmoid()
        if self.num_objects is None:
            return logits, boxes
        return logits.view(-1, self.num_objects, self.num_classes), boxes.view(-1, self.num_objects, 4)


def localizer(backbone: str, num_classes: int, num_objects: int | None = None, **backbone_kwargs) -> Localizer:
    """A :class:`Localizer` on any torchvision classifier (``"resnet18"``, ``"mobilenet_v3_small"``, ...);
    ``backbone_kwargs`` go to ``torchvision.models.get_model`` (e.g. ``weights=``)."""
    net, num_features = classifier_backbone(backbone, **backbone_kwargs)
    return Localizer(net, num_features, num_classes, num_objects)


def localization_loss(class_logits: Tensor, boxes: Tensor, target_labels: Tensor, target_boxes: Tensor,
                      box_weight: float = 1.0) -> dict[str, Tensor]:
    """Cross-entropy on the classes plus smooth-L1 on the ``(x, y, w, h)`` boxes.

    Args:
        class_logits: ``[N, K]`` or ``[N, M, K]``.
        boxes: ``[N, 4]`` or ``[N, M, 4]`` normalised ``(x, y, w, h)``.
        target_labels: ``[N]`` or ``[N, M]`` int64 class indices.
        target_boxes: the boxes' shape, normalised ``(x, y, w, h)``.
        box_weight: weight of the regression term.

    Returns:
        ``{"classification": scalar, "box_regression": scalar, "loss": their weighted sum}``.
    """
    cls = F.cross_entropy(class_logits.reshape(-1, class_logits.shape[-1]), target_labels.reshape(-1))
    reg = F.smooth_l1_loss(boxes, target_boxes, beta=1.0 / 9)
    return {"classification": cls, "box_regression": reg, "loss": cls + box_weight * reg}


def localization_iou(boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """IoU of each predicted ``(x, y, w, h)`` box with its target (``[..., 4]`` each -> ``[...]``),
    by ``detops.box_iou(..., fmt="xywh", aligned=True)``."""
    shape = boxes.shape[:-1]
    return ops.box_iou(boxes.reshape(-1, 4), target_boxes.reshape(-1, 4), fmt="xywh", aligned=True).view(shape)
