"""The models ``python -m detops.train`` can train: how to build each with a
small backbone, compute its training losses and read its predictions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .engine import TrainConfig

__all__ = ["MODELS", "ModelSpec"]


@dataclass
class ModelSpec:
    """One trainable model: ``task`` is ``"detection"`` (predictions are
    torchvision-style dicts with ``boxes`` ``(x1, y1, x2, y2)``, ``scores``,
    ``labels`` and for Mask R-CNN ``masks`` ``[N, 1, H, W]``) or
    ``"segmentation"`` (predictions are class maps ``[B, H, W]``)."""

    name: str
    task: str
    build: Callable[[int, "TrainConfig"], nn.Module]
    losses: Callable[[nn.Module, Any, Any], dict[str, Tensor]]
    predict: Callable[[nn.Module, Any], Any]
    backbone: Callable[[nn.Module], nn.Module]
    lr: float = 1e-3
    needs_masks: bool = False
    unused_parameters: bool = False
    num_classes: int = 0

    def backbone_parameters(self, model: nn.Module) -> Iterator[nn.Parameter]:
        return self.backbone(model).parameters()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------ detection (torchvision's interface)


def _small_anchors(image_size: int, octave_scales: bool) -> Any:
    """Anchors for small images: torchvision's defaults (32 to 512 px) are made
    for 800-px COCO images and would leave objects under ~25 px unmatched.
    Five FPN levels, sizes from image_size / 8 doubling per level; RetinaNet
    adds its three octave scales per level."""
    from .. import AnchorGenerator

    base = [max(image_size // 8, 8) * 2**k for k in range(5)]
    if octave_scales:
        sizes = tuple((b, int(b * 2 ** (1 / 3)), int(b * 2 ** (2 / 3))) for b in base)
    else:
        sizes = tuple((b,) for b in base)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def _rcnn_style(builder_name: str, default_backbone: str, masks: bool = False) -> Callable[["TrainConfig"], ModelSpec]:
    """RetinaNet / Faster R-CNN / Mask R-CNN from detops.models.detection: the
    model takes ``(images, targets)`` and returns a loss dict in train mode,
    a list of per-image dicts in eval mode. Class 0 is the background."""
    retina = builder_name.startswith("retinanet")

    def build(num_classes: int, cfg: "TrainConfig") -> nn.Module:
        from ..models import detection

        builder = getattr(detection, builder_name)
        size = cfg.image_size
        kwargs: dict[str, Any] = {"anchor_generator" if retina else "rpn_anchor_generator": _small_anchors(size, retina)}
        kwargs.update(cfg.extra)
        return builder(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                       backbone_name=cfg.backbone or default_backbone, min_size=size, max_size=size,
                       trainable_backbone_layers=5, **kwargs)

    def make(cfg: "TrainConfig") -> ModelSpec:
        return ModelSpec(
            name=builder_name, task="detection", build=build,
            losses=lambda model, images, targets: model(images, targets),
            predict=lambda model, images: model(images),
            backbone=lambda model: _unwrap(model).backbone.body,
            lr=1e-3, needs_masks=masks, unused_parameters=False)

    return make


MODELS: dict[str, Callable[["TrainConfig"], ModelSpec]] = {
    "retinanet": _rcnn_style("retinanet_resnet50_fpn", "resnet18"),
    "fasterrcnn": _rcnn_style("fasterrcnn_resnet50_fpn", "resnet18"),
    "maskrcnn": _rcnn_style("maskrcnn_resnet50_fpn", "resnet18", masks=True),
}
