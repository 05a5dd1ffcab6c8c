"""The R-CNN parts shared by Faster and Mask R-CNN: the RPN, the RoI heads and
the model-level forward, on torchvision's modules with detops ops and batched
postprocessing.

The classes subclass torchvision's and add no parameters or buffers, so the
module tree and the state_dict keys (and torchvision's hooks that rename the
keys of old checkpoints) stay torchvision's. What changes is the work after
the backbone: anchors, decoding, clipping, small-box removal and NMS run once
for the whole batch (``detops.multiclass_nms``), RoIs are pooled by one fused
``MultiScaleRoIAlign`` launch, and masks are pasted for all detections at once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import generalized_rcnn as tv_generalized_rcnn
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection import rpn as tv_rpn
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign as TVMultiScaleRoIAlign

from ... import nn as dnn
from ... import ops as dops
from . import _batched as bt

NEG = float("-inf")


def grid_probe(feature: Tensor) -> Tensor:
    """A one-channel float32 slice with the feature map's grid: anchors are made in
    float32 even under autocast (bf16 cannot hold pixel coordinates)."""
    probe = feature[:, :1]
    return probe if probe.dtype in (torch.float32, torch.float64) else probe.float()


def to_detops_anchor_generator(gen: nn.Module) -> nn.Module:
    if isinstance(gen, TVAnchorGenerator):
        return dops.AnchorGenerator(gen.sizes, gen.aspect_ratios)
    return gen


def to_detops_pooler(pooler: Optional[nn.Module]) -> Optional[nn.Module]:
    if type(pooler) is TVMultiScaleRoIAlign:
        return dops.MultiScaleRoIAlign(
            pooler.featmap_names, pooler.output_size, pooler.sampling_ratio,
            canonical_scale=pooler.canonical_scale, canonical_level=pooler.canonical_level,
        )
    return pooler


class RegionProposalNetwork(tv_rpn.RegionProposalNetwork):
    """torchvision's ``RegionProposalNetwork`` with batched proposal selection:
    per-level top-k (one launch per level for the whole batch), decoding of the
    selected anchors only, clipping, small-box and score filtering as masks,
    and per-level NMS of all images in one ``multiclass_nms`` launch. Same
    proposals as torchvision's, in the same order (decreasing objectness)."""

    def select_proposals(
        self, anchors: Tensor, objectness: Tensor, deltas: Tensor, clip_sizes: bt.Sizes,
        num_anchors_per_level: list[int],
    ) -> tuple[Tensor, Tensor]:
        """Proposals of every image.

        Args:
            anchors: ``[A, 4]`` anchors (the same for every image of a batch).
            objectness: ``[B, A]`` logits. deltas: ``[B, A, 4]`` box codes.
            clip_sizes: per-image ``(height, width)`` (see :func:`_batched.clip_boxes`).
            num_anchors_per_level: ``A_l`` of each level.

        Returns:
            ``boxes [B, P, 4]`` (``P = post_nms_top_n``; slots past the count are
            zeros) and ``num [B]`` int64.
        """
        b = objectness.shape[0]
        pre = self.pre_nms_top_n()
        picks, levels = [], []
        offset = 0
        # Levels differ in size and k, so top-k runs once per level (batched over images).
        for level, n in enumerate(num_anchors_per_level):
            k = min(pre, n)
            _, top = objectness[:, offset:offset + n].topk(k, dim=1)
            picks.append(top + offset)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=objectness.device))
            offset += n
        idx = torch.cat(picks, dim=1)  # [B, K]
        level = torch.cat(levels)  # [K]
        k_total = idx.shape[1]
        prob = torch.sigmoid(objectness.gather(1, idx))
        codes = deltas.gather(1, idx[..., None].expand(b, k_total, 4)).reshape(-1, 4)
        boxes = dops.decode_boxes(codes, anchors[idx.reshape(-1)].to(codes.dtype), self.box_coder.weights,
                                  self.box_coder.bbox_xform_clip).reshape(b, k_total, 4)
        boxes = bt.clip_boxes(boxes, clip_sizes)
        keep = bt.large_enough(boxes, self.min_size) & (prob >= self.score_thresh)
        num_levels = len(num_anchors_per_level)
        own_level = level[:, None] == torch.arange(num_levels, device=level.device)[None, :]
        # each candidate scores only in its own level's class; -1 is below the -0.5 threshold
        scores = torch.where(keep[..., None] & own_level[None], prob[..., None], prob.new_full((), -1.0))
        out_boxes, _, _, num = dops.multiclass_nms(
            boxes, scores, -0.5, self.nms_thresh, max_per_class=k_total, max_detections=self.post_nms_top_n()
        )
        return out_boxes, num

    def forward_padded(
        self, images: ImageList, features: dict[str, Tensor], clip_sizes: bt.Sizes,
        targets: Optional[list[dict[str, Tensor]]] = None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Padded proposals ``[B, P, 4]``, their counts ``[B]`` and the losses (training)."""
        feats = list(features.values())
        objectness, pred_bbox_deltas = self.head(feats)
        anchors = self.anchor_generator(images, [grid_probe(f) for f in feats])
        num_anchors_per_level = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness]
        b = images.tensors.shape[0]
        objectness, pred_bbox_deltas = tv_rpn.concat_box_prediction_layers(objectness, pred_bbox_deltas)
        boxes, num = self.select_proposals(
            anchors[0], objectness.detach().float().reshape(b, -1), pred_bbox_deltas.detach().float().reshape(b, -1, 4),
            clip_sizes, num_anchors_per_level,
        )
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None")
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_objectness, loss_rpn_box_reg = self.compute_loss(
                objectness, pred_bbox_deltas, labels, regression_targets
            )
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        return boxes, num, losses

    def forward(self, images: ImageList, features: dict[str, Tensor],
                targets: Optional[list[dict[str, Tensor]]] = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """torchvision's interface: per-image proposals ``[P_i, 4]`` and the losses."""
        clip = bt.sizes_tensor(images.image_sizes, images.tensors.new_empty((), dtype=torch.float32))
        boxes, num, losses = self.forward_padded(images, features, clip, targets)
        return [box[:n] for box, n in zip(boxes, num.tolist())], losses


class RoIHeads(tv_roi_heads.RoIHeads):
    """torchvision's ``RoIHeads`` with batched inference: RoIs of all images
    pooled in one launch, then decoding, clipping, small-box removal, per-class
    NMS and top-k of all images in one ``multiclass_nms`` launch, and the mask
    branch on all detections at once."""

    def detect_padded(
        self, features: dict[str, Tensor], proposals: Tensor, num: Tensor, image_sizes: list[tuple[int, int]],
        clip_sizes: bt.Sizes, export: bool, max_detections: Optional[int] = None,
    ) -> dict[str, Tensor]:
        """Detections of padded proposals ``[B, P, 4]`` (``num [B]`` valid each).

        Returns ``boxes [B, D, 4]``, ``scores [B, D]``, ``labels [B, D]`` (-1 in
        empty slots), ``num_detections [B]`` and, with a mask branch,
        ``masks [B, D, 1, M, M]`` probabilities (boxes in the resized image).
        Export mode runs the heads on every slot (fixed shapes, no host sync);
        otherwise only on the valid ones (one host sync for the batch).
        """
        b, p = proposals.shape[0], proposals.shape[1]
        valid = bt.valid_slots(num, p)
        rois, index = bt.select_rows(bt.padded_rois(proposals), valid, export)
        x = bt.pool_rois(self.box_roi_pool, features, rois, image_sizes)
        x = self.box_head(x)
        class_logits, box_regression = self.box_predictor(x)
        class_logits = bt.scatter_rows(class_logits.float(), index, b * p)
        box_regression = bt.scatter_rows(box_regression.float(), index, b * p)
        boxes, scores, labels, count = self._postprocess_padded(
            class_logits, box_regression, proposals, valid, clip_sizes,
            self.detections_per_img if max_detections is None else max_detections,
        )
        result = {"boxes": boxes, "scores": scores, "labels": labels, "num_detections": count}
        if self.has_mask():
            result["masks"] = self._mask_probs(features, boxes, labels, count, image_sizes, export)
        return result

    def _postprocess_padded(self, class_logits: Tensor, box_regression: Tensor, proposals: Tensor, valid: Tensor,
                            clip_sizes: bt.Sizes, max_detections: int):
        b, p = proposals.shape[0], proposals.shape[1]
        num_classes = class_logits.shape[-1]
        boxes = dops.decode_boxes(box_regression, proposals.reshape(-1, 4).to(box_regression.dtype),
                                  self.box_coder.weights, self.box_coder.bbox_xform_clip)
        boxes = bt.clip_boxes(boxes.reshape(b, p, num_classes, 4), clip_sizes)[:, :, 1:]
        scores = F.softmax(class_logits, -1).reshape(b, p, num_classes)[:, :, 1:]
        keep = bt.large_enough(boxes, 1e-2) & valid[..., None]
        scores = torch.where(keep, scores, scores.new_full((), NEG))
        boxes, scores, labels, count = dops.multiclass_nms(
            boxes, scores, self.score_thresh, self.nms_thresh, max_per_class=max(p, 1), max_detections=max_detections
        )
        labels = torch.where(labels >= 0, labels + 1, labels)  # class 0 (background) was dropped
        return boxes, scores, labels, count

    def _mask_probs(self, features, boxes, labels, count, image_sizes, export):
        b, d = boxes.shape[0], boxes.shape[1]
        rois, index = bt.select_rows(bt.padded_rois(boxes), bt.valid_slots(count, d), export)
        x = bt.pool_rois(self.mask_roi_pool, features, rois, image_sizes)
        x = self.mask_head(x)
        logits = self.mask_predictor(x)  # [K, C, M, M]
        flat_labels = labels.reshape(-1)
        if index is not None:
            flat_labels = flat_labels.index_select(0, index)
        m = logits.shape[-1]
        picked = logits.gather(1, flat_labels.clamp(min=0)[:, None, None, None].expand(-1, 1, m, m))
        return bt.scatter_rows(picked.sigmoid(), index, b * d).reshape(b, d, 1, m, m)

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        """torchvision's interface (per-image lists), computed batched."""
        padded, num = _pad(proposals)
        valid = bt.valid_slots(num, padded.shape[1])
        b, p = padded.shape[0], padded.shape[1]
        rows = valid.reshape(-1).nonzero().squeeze(1)
        clip = bt.sizes_tensor(image_shapes, class_logits.new_empty((), dtype=torch.float32))
        boxes, scores, labels, count = self._postprocess_padded(
            bt.scatter_rows(class_logits.float(), rows, b * p), bt.scatter_rows(box_regression.float(), rows, b * p),
            padded, valid, clip, self.detections_per_img,
        )
        counts = count.tolist()
        return ([x[:n] for x, n in zip(boxes, counts)], [x[:n] for x, n in zip(scores, counts)],
                [x[:n] for x, n in zip(labels, counts)])

    def forward(self, features, proposals, image_shapes, targets=None):
        """torchvision's interface; inference runs :meth:`detect_padded`."""
        if self.training:
            return super().forward(features, proposals, image_shapes, targets)
        padded, num = _pad(proposals)
        clip = bt.sizes_tensor(image_shapes, padded.new_empty((), dtype=torch.float32))
        det = self.detect_padded(features, padded, num, image_shapes, clip, export=False)
        counts = det["num_detections"].tolist()
        result = []
        for i, n in enumerate(counts):
            r = {"boxes": det["boxes"][i, :n], "labels": det["labels"][i, :n], "scores": det["scores"][i, :n]}
            if "masks" in det:
                r["masks"] = det["masks"][i, :n]
            result.append(r)
        return result, {}


def _pad(boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
    num = torch.tensor([len(x) for x in boxes], device=boxes[0].device)
    return nn.utils.rnn.pad_sequence(list(boxes), batch_first=True), num


def detopsify_rcnn(model: nn.Module) -> None:
    """Turn torchvision's parts of a (Faster/Mask) R-CNN into detops' in place;
    no parameter or buffer changes."""
    rpn = model.rpn
    if type(rpn) is tv_rpn.RegionProposalNetwork:
        rpn.__class__ = RegionProposalNetwork
    rpn.anchor_generator = to_detops_anchor_generator(rpn.anchor_generator)
    rpn.box_coder = dops.BoxCoder(rpn.box_coder.weights, rpn.box_coder.bbox_xform_clip)
    rpn.box_similarity = dops.box_iou
    heads = model.roi_heads
    if type(heads) is tv_roi_heads.RoIHeads:
        heads.__class__ = RoIHeads
    heads.box_coder = dops.BoxCoder(heads.box_coder.weights, heads.box_coder.bbox_xform_clip)
    heads.box_similarity = dops.box_iou
    heads.box_roi_pool = to_detops_pooler(heads.box_roi_pool)
    heads.mask_roi_pool = to_detops_pooler(heads.mask_roi_pool)
    predictor = heads.mask_predictor
    if predictor is not None and type(getattr(predictor, "conv5_mask", None)) is nn.ConvTranspose2d:
        old = predictor.conv5_mask
        new = dnn.ConvTranspose2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                  activation="relu" if isinstance(getattr(predictor, "relu", None), nn.ReLU) else None)
        new.weight, new.bias = old.weight, old.bias
        predictor.conv5_mask = new
        if new.activation == "relu":
            predictor.relu = nn.Identity()  # fused into conv5_mask; no parameters, so no keys change


class ExportModeMixin:
    """``export_mode(max_detections)``: fixed-size outputs, no host sync in the forward."""

    _export_max_detections: Optional[int] = None

    def export_mode(self, max_detections: Optional[int] = 100):
        """Switch to export mode (``max_detections`` slots per image) or back (``None``).

        In export mode the eval forward takes ``[B, 3, H, W]`` images (or a list of
        same-size images) and returns one dict of batched tensors: ``boxes [B, D, 4]``,
        ``scores [B, D]``, ``labels [B, D]`` int64, ``num_detections [B]`` int64
        (and ``masks [B, D, 1, H, W]`` for Mask R-CNN). Slots past an image's count
        hold zeros and label -1, as TensorRT's EfficientNMS pads. The forward reads
        nothing back to the host, so ``torch.export.export`` and
        ``torch.compile(fullgraph=True)`` capture it whole. Returns the model.
        """
        if max_detections is not None and (not isinstance(max_detections, int) or max_detections < 1):
            raise ValueError(f"max_detections must be an integer >= 1 or None, got {max_detections!r}")
        self._export_max_detections = max_detections
        return self

    @property
    def exporting(self) -> bool:
        return self._export_max_detections is not None


def prepare_inputs(model, images):
    """Transform for inference. Returns the ImageList, the clip sizes, the resized
    and original sizes as ``[B, 2]`` float32 tensors."""
    if model.exporting:
        x, (rh, rw) = bt.export_transform(model.transform, images)
        oh, ow = (images.shape[-2:] if isinstance(images, Tensor) else images[0].shape[-2:])
        b = x.shape[0]
        f32 = dict(dtype=torch.float32, device=x.device)
        new = torch.stack((torch.full((), rh, **f32), torch.full((), rw, **f32))).expand(b, 2)
        orig = torch.stack((torch.full((), oh, **f32), torch.full((), ow, **f32))).expand(b, 2)
        return ImageList(x, [(rh, rw)]), (rh, rw), new, orig, (oh, ow)
    for img in images:
        if img.dim() != 3:
            raise ValueError(f"expecting [C, H, W] images, got shape {list(img.shape)}")
    original = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    image_list, _ = model.transform(images, None)
    ref = image_list.tensors.new_empty((), dtype=torch.float32)
    new = bt.sizes_tensor(image_list.image_sizes, ref)
    orig = bt.sizes_tensor(original, ref)
    return image_list, new, new, orig, original


def finish(model, det: dict[str, Tensor], new: Tensor, orig: Tensor, original) -> Union[dict, list]:
    """Boxes back to the original image sizes, masks pasted; export mode's dict or
    torchvision's per-image list (one host sync for the counts)."""
    boxes = bt.resize_boxes(det["boxes"], new, orig)
    b, d = boxes.shape[0], boxes.shape[1]
    if model.exporting:
        out = {"boxes": boxes, "scores": det["scores"], "labels": det["labels"], "num_detections": det["num_detections"]}
        if "masks" in det:
            oh, ow = original
            sizes = orig.to(torch.int64).repeat_interleave(d, dim=0)
            masks = bt.paste_masks(det["masks"].reshape((b * d,) + det["masks"].shape[2:]), boxes.reshape(-1, 4),
                                   sizes, oh, ow)
            valid = bt.valid_slots(det["num_detections"], d).reshape(-1, 1, 1, 1)
            out["masks"] = torch.where(valid, masks, masks.new_zeros(())).reshape((b, d) + masks.shape[1:])
        return out
    counts = det["num_detections"].tolist()
    result = [{"boxes": boxes[i, :n], "labels": det["labels"][i, :n], "scores": det["scores"][i, :n]}
              for i, n in enumerate(counts)]
    if "masks" in det:
        index = bt.valid_slots(det["num_detections"], d).reshape(-1).nonzero().squeeze(1)
        sizes = orig.to(torch.int64).repeat_interleave(d, dim=0).index_select(0, index)
        probs = det["masks"].reshape((b * d,) + det["masks"].shape[2:]).index_select(0, index)
        height = max(h for h, _ in original)
        width = max(w for _, w in original)
        pasted = bt.paste_masks(probs, boxes.reshape(-1, 4).index_select(0, index), sizes, height, width)
        for r, m, (h, w) in zip(result, pasted.split(counts), original):
            r["masks"] = m[..., :h, :w]
    return result


class RCNNMixin(ExportModeMixin):
    """The eval forward of Faster and Mask R-CNN on the padded, batched parts."""

    def forward(self, images, targets=None):
        if self.training:
            return tv_generalized_rcnn.GeneralizedRCNN.forward(self, images, targets)
        image_list, clip, new, orig, original = prepare_inputs(self, images)
        features = self.backbone(image_list.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        proposals, num, _ = self.rpn.forward_padded(image_list, features, clip)
        det = self.roi_heads.detect_padded(features, proposals, num, image_list.image_sizes, clip, self.exporting,
                                           self._export_max_detections)
        return finish(self, det, new, orig, original)
