"""RetinaNet on detops ops, checkpoint-compatible with torchvision's."""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torchvision.models import detection as tvd
from torchvision.models.detection import retinanet as tv_retinanet

from ... import ops as dops
from . import _batched as bt
from . import _builders as B
from ._rcnn import ExportModeMixin, finish, grid_probe, prepare_inputs, to_detops_anchor_generator

__all__ = ["RetinaNet", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2"]


class RetinaNetClassificationHead(tv_retinanet.RetinaNetClassificationHead):
    """torchvision's head; the focal loss is ``detops.sigmoid_focal_loss_indexed``
    on class indices (no one-hot tensor), with torchvision's normalisation."""

    def compute_loss(self, targets, head_outputs, matched_idxs):
        losses = []
        for target, logits, matched in zip(targets, head_outputs["cls_logits"], matched_idxs):
            foreground = matched >= 0
            num_foreground = foreground.sum()
            if target["labels"].numel() == 0:
                labels = matched
            else:
                labels = torch.where(foreground, target["labels"][matched.clamp(min=0)], matched)
            # matched is -1 below the low threshold (background), -2 between the thresholds (ignored)
            loss = dops.sigmoid_focal_loss_indexed(logits, labels, reduction="sum", background=-1,
                                                   ignore_index=self.BETWEEN_THRESHOLDS)
            losses.append(loss / max(1, num_foreground))
        return tv_retinanet._sum(losses) / len(targets)


def detopsify_retinanet(model: nn.Module) -> None:
    """torchvision's RetinaNet parts to detops' in place (no parameter changes)."""
    model.anchor_generator = to_detops_anchor_generator(model.anchor_generator)
    model.box_coder = dops.BoxCoder(model.box_coder.weights, model.box_coder.bbox_xform_clip)
    head = getattr(model, "head", None)
    cls_head = getattr(head, "classification_head", None)
    if type(cls_head) is tv_retinanet.RetinaNetClassificationHead:
        cls_head.__class__ = RetinaNetClassificationHead
    reg_head = getattr(head, "regression_head", None)
    if isinstance(reg_head, tv_retinanet.RetinaNetRegressionHead):
        reg_head.box_coder = dops.BoxCoder(reg_head.box_coder.weights, reg_head.box_coder.bbox_xform_clip)


class RetinaNet(ExportModeMixin, tvd.RetinaNet):
    """RetinaNet (torchvision's ``RetinaNet``, same arguments, modules and
    state_dict keys, including the renames of v1 head checkpoints) with detops
    anchors, decoding, focal loss and NMS, and batched postprocessing: score
    threshold of all levels in one launch, per-level top-k over the batch (one
    launch per level), decoding of the candidates only, and per-class NMS plus
    top-k of all images in one ``multiclass_nms`` launch.

    Inputs: a list of ``[3, H, W]`` float images in ``[0, 1]`` and, in training,
    targets (per image ``boxes`` ``[N, 4]`` ``(x1, y1, x2, y2)`` and ``labels`` ``[N]`` int64).

    Outputs: in training, ``{"classification", "bbox_regression"}`` losses. In
    eval, per image ``boxes`` ``[N, 4]``, ``scores`` ``[N]`` and ``labels`` ``[N]``,
    the same as torchvision's model with the same weights. In
    :meth:`export_mode`, one dict of padded batched tensors.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, **kwargs: Any) -> None:
        gen = kwargs.get("anchor_generator")
        if isinstance(gen, dops.AnchorGenerator):
            del kwargs["anchor_generator"]
            if kwargs.get("head") is None:
                kwargs["head"] = tv_retinanet.RetinaNetHead(backbone.out_channels, gen.num_anchors_per_location()[0],
                                                            num_classes)
        super().__init__(backbone, num_classes, **kwargs)
        if isinstance(gen, dops.AnchorGenerator):
            self.anchor_generator = gen
        detopsify_retinanet(self)

    def compute_loss(self, targets, head_outputs, anchors):
        matched_idxs = []
        for anchors_per_image, target in zip(anchors, targets):
            if target["boxes"].numel() == 0:
                matched_idxs.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64,
                                               device=anchors_per_image.device))
                continue
            matched_idxs.append(self.proposal_matcher(dops.box_iou(target["boxes"], anchors_per_image)))
        return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)

    def detect_padded(self, head_outputs: dict[str, Tensor], anchors: Tensor, num_anchors_per_level: list[int],
                      clip_sizes: bt.Sizes, max_detections: int) -> dict[str, Tensor]:
        """Detections of a batch: ``boxes [B, D, 4]`` (resized image pixels),
        ``scores [B, D]``, ``labels [B, D]`` (-1 in empty slots), ``num_detections [B]``."""
        logits = head_outputs["cls_logits"].float()
        regression = head_outputs["bbox_regression"].float()
        b, _, num_classes = logits.shape
        scores = torch.sigmoid(logits).reshape(b, -1)
        scores = torch.where(scores > self.score_thresh, scores, scores.new_full((), -1.0))
        picks, values = [], []
        offset = 0
        # Levels differ in size, so top-k runs once per level (batched over images).
        for n in num_anchors_per_level:
            k = min(self.topk_candidates, n * num_classes)
            v, i = scores[:, offset * num_classes:(offset + n) * num_classes].topk(k, dim=1)
            picks.append(i + offset * num_classes)
            values.append(v)
            offset += n
        idx = torch.cat(picks, dim=1)
        top = torch.cat(values, dim=1)  # [B, K]; -1 marks candidates under the threshold
        k_total = idx.shape[1]
        anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
        labels = idx % num_classes
        codes = regression.gather(1, anchor_idx[..., None].expand(b, k_total, 4)).reshape(-1, 4)
        boxes = dops.decode_boxes(codes, anchors[anchor_idx.reshape(-1)].to(codes.dtype), self.box_coder.weights,
                                  self.box_coder.bbox_xform_clip).reshape(b, k_total, 4)
        boxes = bt.clip_boxes(boxes, clip_sizes)
        dense = top.new_full((b, k_total, num_classes), -1.0).scatter_(2, labels[..., None], top[..., None])
        boxes, scores, labels, count = dops.multiclass_nms(
            boxes, dense, self.score_thresh, self.nms_thresh, max_per_class=max(k_total, 1),
            max_detections=max_detections,
        )
        return {"boxes": boxes, "scores": scores, "labels": labels, "num_detections": count}

    def forward(self, images, targets=None):
        if self.training:
            return tvd.RetinaNet.forward(self, images, targets)
        image_list, clip, new, orig, original = prepare_inputs(self, images)
        features = self.backbone(image_list.tensors)
        if isinstance(features, Tensor):
            features = {"0": features}
        features = list(features.values())
        head_outputs = self.head(features)
        anchors = self.anchor_generator(image_list, [grid_probe(f) for f in features])
        hw = [f.shape[2] * f.shape[3] for f in features]
        per_location = head_outputs["cls_logits"].shape[1] // sum(hw)
        det = self.detect_padded(
            head_outputs, anchors[0], [n * per_location for n in hw], clip,
            self.detections_per_img if self._export_max_detections is None else self._export_max_detections,
        )
        return finish(self, det, new, orig, original)


def _mobilenet_anchors() -> dops.AnchorGenerator:
    sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in [64, 128, 256])
    return dops.AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 3)


def _build(tv_enum, v2: bool, *, weights, progress, num_classes, weights_backbone, trainable_backbone_layers,
           backbone_name, **kwargs):
    path = weights
    weights, num_classes, weights_backbone, is_trained = B.resolve(weights, num_classes, weights_backbone, tv_enum,
                                                                    backbone_name)
    body = B.backbone(backbone_name, weights_backbone=weights_backbone, progress=progress,
                      trainable_layers=trainable_backbone_layers, is_trained=is_trained,
                      norm_layer=nn.BatchNorm2d if v2 else None, retinanet=True, retinanet_p6p7_from_c5=v2)
    if B.is_mobilenet(backbone_name):
        kwargs.setdefault("anchor_generator", _mobilenet_anchors())
    if v2:
        gen = kwargs.get("anchor_generator") or tv_retinanet._default_anchorgen()
        kwargs["anchor_generator"] = gen
        head = tv_retinanet.RetinaNetHead(body.out_channels, gen.num_anchors_per_location()[0], num_classes,
                                          norm_layer=partial(nn.GroupNorm, 32))
        head.regression_head._loss_type = "giou"
        kwargs.setdefault("head", head)
    model = RetinaNet(body, num_classes, **kwargs)
    source = path if B.is_path(path) else weights
    B.load_weights(model, source, progress, not v2 and (B.is_path(path) or weights == tv_enum.COCO_V1))
    return model


def retinanet_resnet50_fpn(
    *,
    weights: B.Weights = None,
    progress: bool = True,
    num_classes: Optional[int] = None,
    weights_backbone=tv_retinanet.ResNet50_Weights.IMAGENET1K_V1,
    trainable_backbone_layers: Optional[int] = None,
    backbone_name: str = "resnet50",
    **kwargs: Any,
) -> RetinaNet:
    """torchvision's ``retinanet_resnet50_fpn`` as a detops :class:`RetinaNet`.

    ``weights`` may be the path of torchvision's checkpoint file
    (``retinanet_resnet50_fpn_coco-eeacb38b.pth``, placed there by the user: the
    v1 head keys are renamed on load, as torchvision does). Other arguments as
    :func:`detops.models.detection.fasterrcnn_resnet50_fpn` (MobileNet backbones
    get 3 levels of 3 anchor sizes each).
    """
    return _build(tvd.RetinaNet_ResNet50_FPN_Weights, False, weights=weights, progress=progress,
                  num_classes=num_classes, weights_backbone=weights_backbone,
                  trainable_backbone_layers=trainable_backbone_layers, backbone_name=backbone_name, **kwargs)


def retinanet_resnet50_fpn_v2(
    *,
    weights: B.Weights = None,
    progress: bool = True,
    num_classes: Optional[int] = None,
    weights_backbone=None,
    trainable_backbone_layers: Optional[int] = None,
    backbone_name: str = "resnet50",
    **kwargs: Any,
) -> RetinaNet:
    """torchvision's ``retinanet_resnet50_fpn_v2`` (GroupNorm heads, GIoU loss, P6
    from C5) as a detops :class:`RetinaNet` (checkpoint
    ``retinanet_resnet50_fpn_v2_coco-5905b1c5.pth``); arguments as :func:`retinanet_resnet50_fpn`."""
    return _build(tvd.RetinaNet_ResNet50_FPN_V2_Weights, True, weights=weights, progress=progress,
                  num_classes=num_classes, weights_backbone=weights_backbone,
                  trainable_backbone_layers=trainable_backbone_layers, backbone_name=backbone_name, **kwargs)
