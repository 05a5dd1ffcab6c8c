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
    image_size: int = 128
    needs_masks: bool = False
    unused_parameters: bool = False
    num_classes: int = 0

    def backbone_parameters(self, model: nn.Module) -> Iterator[nn.Parameter]:
        return self.backbone(model).parameters()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------ detection (torchvision's interface)


def _small_anchors(image_size: int, octave_scales: bool, levels: int = 5) -> Any:
    """Anchors for small images: torchvision's defaults (32 to 512 px) are made
    for 800-px COCO images and would leave objects under ~25 px unmatched.
    ``levels`` FPN levels, sizes from image_size / 8 doubling per level;
    RetinaNet adds its three octave scales per level."""
    from .. import AnchorGenerator

    base = [max(image_size // 8, 8) * 2**k for k in range(levels)]
    if octave_scales:
        sizes = tuple((b, int(b * 2 ** (1 / 3)), int(b * 2 ** (2 / 3))) for b in base)
    else:
        sizes = tuple((b,) for b in base)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def _rcnn_style(builder_name: str, default_backbone: str, masks: bool = False) -> Callable[["TrainConfig"], ModelSpec]:
    """Faster R-CNN / Mask R-CNN from detops.models.detection: the model takes
    ``(images, targets)`` and returns a loss dict in train mode, a list of
    per-image dicts in eval mode. Class 0 is the background."""

    def build(num_classes: int, cfg: "TrainConfig") -> nn.Module:
        from ..models import detection

        builder = getattr(detection, builder_name)
        size = cfg.image_size
        kwargs: dict[str, Any] = {"rpn_anchor_generator": _small_anchors(size, False)}
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


# The CPU recipe of ``--model retinanet`` (each key overridable with --model-arg):
# torchvision's RetinaNet spends ~90% of a small-image step in its 256-channel,
# 4-conv heads over five levels. The synthetic shapes span 15-45% of the image
# side, so three levels (strides 8, 16, 32: C3, C4 and a pooled P5, ResNet's
# last stage skipped) with anchors from image_size / 8 cover them, and narrow
# heads of two convs learn them.
RETINANET_CPU = {"fpn_channels": 64, "head_convs": 2, "levels": 3}


def _retinanet(cfg: "TrainConfig") -> ModelSpec:
    """A small detops :class:`~detops.models.detection.RetinaNet`: a ResNet
    trunk (``--backbone``, ResNet-18 by default) up to the stage of stride
    ``2 ** (levels + 1)``, an FPN of ``fpn_channels`` with a max-pooled top
    level, and classification and box heads of ``head_convs`` convolutions.
    Other ``--model-arg`` keys go to ``RetinaNet`` (e.g. ``score_thresh``)."""

    def build(num_classes: int, cfg: "TrainConfig") -> nn.Module:
        import torchvision
        from torchvision.models.detection.backbone_utils import BackboneWithFPN
        from torchvision.models.detection.retinanet import RetinaNetHead
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        from ..models.detection import RetinaNet

        opts = {**RETINANET_CPU, **cfg.extra}
        channels, convs, levels = opts.pop("fpn_channels"), opts.pop("head_convs"), opts.pop("levels")
        if not 2 <= levels <= 5 or not 0 <= convs <= 4 or channels < 1:
            raise ValueError(f"--model-arg levels must be in [2, 5], head_convs in [0, 4], fpn_channels >= 1; "
                             f"got levels={levels}, head_convs={convs}, fpn_channels={channels}")
        body = torchvision.models.get_model(cfg.backbone or "resnet18", weights=None)
        # levels - 1 ResNet stages from layer2 (stride 8), then P(last) pooled
        stages = [f"layer{k}" for k in range(2, min(levels + 1, 5))]
        extra = levels - len(stages)
        backbone = BackboneWithFPN(body, {name: str(i) for i, name in enumerate(stages)},
                                   [_out_channels(getattr(body, name)) for name in stages], channels,
                                   extra_blocks=LastLevelMaxPool() if extra == 1 else None)
        if extra > 1:  # five levels from ResNet: C3-C5 plus P6 and P7, as torchvision's RetinaNet
            from torchvision.ops.feature_pyramid_network import LastLevelP6P7

            backbone.fpn.extra_blocks = LastLevelP6P7(channels, channels)
        anchors = _small_anchors(cfg.image_size, True, levels)
        head = RetinaNetHead(channels, anchors.num_anchors_per_location()[0], num_classes + 1)
        for part in (head.classification_head, head.regression_head):
            part.conv = part.conv[:convs]
        return RetinaNet(backbone, num_classes + 1, anchor_generator=anchors, head=head,
                         min_size=cfg.image_size, max_size=cfg.image_size, **opts)

    return ModelSpec(
        name="retinanet", task="detection", build=build,
        losses=lambda model, images, targets: model(images, targets),
        predict=lambda model, images: model(images),
        backbone=lambda model: _unwrap(model).backbone.body, lr=2e-3, image_size=96)


# ------------------------------------------------------------------ YOLO v1


def _resnet_trunk(name: str) -> tuple[nn.Sequential, int]:
    """A torchvision ResNet without its pooling and classifier: ``[N, 3, H, W]
    -> [N, C, H / 32, W / 32]``, layers in a Sequential (stride 8 after index
    5, 16 after 6, 32 after 7)."""
    import torchvision

    net = torchvision.models.get_model(name, weights=None)
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return trunk, net.fc.in_features


def _yolo(cfg: "TrainConfig") -> ModelSpec:
    """YOLO v1 on a ResNet trunk. Labels are shifted: the model's classes are
    ``0..K-1``, the data's ``1..K`` (0 is the background there)."""
    from ..models import yolo

    def build(num_classes: int, cfg: "TrainConfig") -> nn.Module:
        trunk, channels = _resnet_trunk(cfg.backbone or "resnet18")
        kwargs = {"grid_size": 7, "num_boxes": 2, "hidden": 512, "dropout": 0.0, **cfg.extra}
        return yolo.YOLOv1(trunk, channels, num_classes=num_classes, **kwargs)

    def losses(model: nn.Module, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        net = _unwrap(model)
        x = torch.stack(images)
        h, w = x.shape[-2:]
        scale = x.new_tensor([w, h, w, h])
        grid = yolo.yolo_v1_targets([t["boxes"] / scale for t in targets], [t["labels"] - 1 for t in targets],
                                    net.S, net.C)
        parts = yolo.yolo_v1_loss(model(x), grid, num_boxes=net.B)
        return {k: v for k, v in parts.items() if k != "loss"}

    def predict(model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
        net = _unwrap(model)
        x = torch.stack(list(images))
        dets = yolo.yolo_v1_postprocess(model(x), tuple(x.shape[-2:]), num_boxes=net.B, score_threshold=0.05)
        return [dict(d, labels=d["labels"] + 1) for d in dets]

    return ModelSpec(name="yolo", task="detection", build=build, losses=losses, predict=predict,
                     backbone=lambda model: _unwrap(model).backbone, lr=5e-4)


# ------------------------------------------------------------------ segmentation


def _segmentation(build: Callable[[int, "TrainConfig"], nn.Module], backbone: Callable[[nn.Module], nn.Module],
                  name: str, lr: float) -> ModelSpec:
    """A model mapping images ``[B, 3, H, W]`` to class logits ``[B, K + 1, H, W]``
    (class 0 the background), trained with pixel-wise cross-entropy."""

    def as_batch(images: Any) -> Tensor:
        return images if isinstance(images, Tensor) else torch.stack(list(images))

    def logits(model: nn.Module, images: Any) -> Tensor:
        out = model(as_batch(images))
        return out["out"] if isinstance(out, dict) else out

    return ModelSpec(
        name=name, task="segmentation", build=build,
        losses=lambda model, images, semantic: {"cross_entropy": torch.nn.functional.cross_entropy(
            logits(model, images), semantic)},
        predict=lambda model, images: logits(model, images).argmax(1),
        backbone=backbone, lr=lr)


def _fcn(cfg: "TrainConfig") -> ModelSpec:
    """FCN-8s on a ResNet trunk (pool3 = stride 8, pool4 = stride 16 skips)."""

    def build(num_classes: int, cfg: "TrainConfig") -> nn.Module:
        from ..models.segmentation import SkipFCN

        trunk, channels = _resnet_trunk(cfg.backbone or "resnet18")
        skip = (_out_channels(trunk[5]), _out_channels(trunk[6]))
        head = nn.Sequential(nn.Conv2d(channels, 256, 3, padding=1), nn.ReLU(inplace=True))
        return SkipFCN(trunk, head, 256, skip, num_classes + 1, variant=cfg.extra.get("variant", "8s"), taps=(5, 6))

    return _segmentation(build, lambda model: _unwrap(model).features, "fcn", 1e-3)


def _out_channels(stage: nn.Module) -> int:
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def _unet(cfg: "TrainConfig") -> ModelSpec:
    def build(num_classes: int, cfg: "TrainConfig") -> nn.Module:
        from ..models.segmentation import UNet

        kwargs = {"base_channels": 16, "depth": 3, **cfg.extra}
        return UNet(3, num_classes + 1, **kwargs)

    return _segmentation(build, lambda model: _unwrap(model).down, "unet", 2e-3)


MODELS: dict[str, Callable[["TrainConfig"], ModelSpec]] = {
    "retinanet": _retinanet,
    "fasterrcnn": _rcnn_style("fasterrcnn_resnet50_fpn", "resnet18"),
    "maskrcnn": _rcnn_style("maskrcnn_resnet50_fpn", "resnet18", masks=True),
    "yolo": _yolo,
    "fcn": _fcn,
    "unet": _unet,
}
