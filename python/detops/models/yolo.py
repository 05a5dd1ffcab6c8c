"""YOLO v1 (Redmon et al., 2016): an S x S grid, B boxes with confidences per
cell and C class probabilities per cell, the paper's sum-squared loss, and
decoding with a score threshold and detops NMS.

The prediction tensor is ``[N, S, S, B * 5 + C]``; per cell, box ``b`` is
``(x, y, sqrt_w, sqrt_h, confidence)`` at channels ``5b .. 5b + 4``: ``(x, y)``
the box centre within the cell in ``[0, 1]``, ``sqrt_w, sqrt_h`` the square
roots of the box size as fractions of the image (the loss compares square
roots, so the head predicts them), then the C class probabilities. Outputs are
linear, as in the paper. Boxes given to and returned by the functions here are
``(x1, y1, x2, y2)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops

__all__ = ["YOLOv1", "yolo_v1_targets", "yolo_v1_loss", "yolo_v1_postprocess"]


class YOLOv1(nn.Module):
    """Backbone ``[N, 3, H, W] -> [N, backbone_channels, h, w]``, then the paper's
    head: a conv, pooling to the S x S grid and two fully connected layers.

    Returns ``[N, S, S, B * 5 + C]`` (see the module docstring for the layout).
    """

    def __init__(self, backbone: nn.Module, backbone_channels: int, num_classes: int = 20, grid_size: int = 7,
                 num_boxes: int = 2, hidden: int = 4096, dropout: float = 0.5) -> None:
        super().__init__()
        self.S, self.B, self.C = grid_size, num_boxes, num_classes
        self.backbone = backbone
        self.neck = nn.Sequential(
            nn.Conv2d(backbone_channels, backbone_channels, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
            nn.AdaptiveAvgPool2d(grid_size),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(backbone_channels * grid_size * grid_size, hidden), nn.LeakyReLU(0.1, inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, grid_size * grid_size * (num_boxes * 5 + num_classes)),
        )

    def forward(self, images: Tensor) -> Tensor:
        out = self.head(self.neck(self.backbone(images)))
        return out.view(-1, self.S, self.S, self.B * 5 + self.C)


def yolo_v1_targets(boxes: list[Tensor], labels: list[Tensor], grid_size: int, num_classes: int) -> Tensor:
    """Encode ground truth on the grid.

    Args:
        boxes: per image ``[T_i, 4]`` ``(x1, y1, x2, y2)`` as fractions of the image size.
        labels: per image ``[T_i]`` int64 classes.

    Returns:
        ``[N, S, S, 5 + C]``: ``(x, y, w, h, has_object, one-hot class)`` per cell, with
        ``(x, y)`` the centre within the cell and ``(w, h)`` fractions of the image.
        Each object goes to the cell holding its centre (a later object in the same
        cell replaces an earlier one, as the paper's one object per cell).
    """
    S = grid_size
    device = boxes[0].device if boxes else torch.device("cpu")
    target = torch.zeros(len(boxes), S, S, 5 + num_classes, device=device)
    for n, (b, lab) in enumerate(zip(boxes, labels)):
        if b.numel() == 0:
            continue
        b = b.to(target.dtype)
        cxy = (b[:, :2] + b[:, 2:]) / 2 * S
        cell = cxy.floor().clamp(0, S - 1).long()
        i, j = cell[:, 1], cell[:, 0]  # row, column
        target[n, i, j, :2] = cxy - cell
        target[n, i, j, 2:4] = b[:, 2:] - b[:, :2]
        target[n, i, j, 4] = 1
        target[n, i, j, 5:] = 0
        target[n, i, j, 5 + lab] = 1
    return target


def _cell_boxes_xyxy(xy: Tensor, wh: Tensor, S: int) -> Tensor:
    """``[N, S, S, ..., 2]`` cell-relative centres and image-relative sizes -> image-relative
    ``(x1, y1, x2, y2)``."""
    rows = torch.arange(S, device=xy.device, dtype=xy.dtype)
    shape = [1, S, S] + [1] * (xy.dim() - 4)
    gx = rows.view(1, 1, S).expand(1, S, S).reshape(shape)
    gy = rows.view(1, S, 1).expand(1, S, S).reshape(shape)
    cx = (xy[..., 0] + gx) / S
    cy = (xy[..., 1] + gy) / S
    return torch.stack([cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2], -1)


def yolo_v1_loss(pred: Tensor, target: Tensor, num_boxes: int = 2, lambda_coord: float = 5.0,
                 lambda_noobj: float = 0.5) -> dict[str, Tensor]:
    """The YOLO v1 loss, summed over the grid and averaged over images.

    In each cell holding an object the responsible predictor is the one of the B
    boxes with the highest IoU (``detops.box_iou``, aligned) with the object; it
    carries the coordinate loss (``lambda_coord`` x squared error on ``x, y`` and on
    ``sqrt(w), sqrt(h)``) and the confidence loss towards that IoU. Every other
    predictor's confidence is pulled to 0 with weight ``lambda_noobj``. Cells with
    an object add the squared error of the class probabilities.

    Args:
        pred: ``[N, S, S, B * 5 + C]`` from :class:`YOLOv1`.
        target: ``[N, S, S, 5 + C]`` from :func:`yolo_v1_targets`.

    Returns:
        ``{"coord", "obj", "noobj", "class", "loss"}`` scalars.
    """
    N, S = pred.shape[0], pred.shape[1]
    B = num_boxes
    boxes = pred[..., : 5 * B].reshape(N, S, S, B, 5)
    obj = target[..., 4] > 0  # [N, S, S]
    with torch.no_grad():
        pb = _cell_boxes_xyxy(boxes[..., :2], boxes[..., 2:4].clamp(min=0) ** 2, S)  # [N, S, S, B, 4]
        tb = _cell_boxes_xyxy(target[..., :2], target[..., 2:4], S).unsqueeze(3).expand_as(pb)
        # Degenerate pairs (an empty cell's zero target, a zero-size prediction) are 0/0.
        iou = ops.box_iou(pb.reshape(-1, 4), tb.reshape(-1, 4), aligned=True).view(N, S, S, B).nan_to_num(0.0)
        best = iou.argmax(-1, keepdim=True)
        responsible = torch.zeros_like(iou, dtype=torch.bool).scatter_(-1, best, True) & obj.unsqueeze(-1)
    r = responsible.unsqueeze(-1)
    t = target[..., :4].unsqueeze(3)
    coord = ((boxes[..., :2] - t[..., :2]) ** 2 * r).sum() + (
        (boxes[..., 2:4] - t[..., 2:4].sqrt()) ** 2 * r).sum()
    conf = boxes[..., 4]
    obj_loss = ((conf - iou) ** 2 * responsible).sum()
    noobj_loss = (conf ** 2 * ~responsible).sum()
    cls = ((pred[..., 5 * B:] - target[..., 5:]) ** 2 * obj.unsqueeze(-1)).sum()
    parts = {
        "coord": lambda_coord * coord / N, "obj": obj_loss / N, "noobj": lambda_noobj * noobj_loss / N,
        "class": cls / N,
    }
    parts["loss"] = sum(parts.values())
    return parts


def yolo_v1_postprocess(pred: Tensor, image_size: tuple[int, int], num_boxes: int = 2, score_threshold: float = 0.2,
                        iou_threshold: float = 0.5, max_detections: int = 100) -> list[dict[str, Tensor]]:
    """Decode YOLO v1 predictions into detections.

    Each box's class scores are its confidence times the cell's class
    probabilities (both clamped to ``[0, 1]``); each box keeps its best class,
    boxes under ``score_threshold`` are dropped and ``detops.batched_nms`` runs
    per class.

    Args:
        pred: ``[N, S, S, B * 5 + C]``.
        image_size: ``(H, W)`` of the input images, to scale boxes to pixels.

    Returns:
        per image ``{"boxes": [D, 4] (x1, y1, x2, y2) pixels clipped to the image,
        "scores": [D], "labels": [D] int64}``, by decreasing score.
    """
    N, S = pred.shape[0], pred.shape[1]
    B = num_boxes
    boxes = pred[..., : 5 * B].reshape(N, S, S, B, 5)
    xyxy = _cell_boxes_xyxy(boxes[..., :2], boxes[..., 2:4].clamp(min=0) ** 2, S)
    h, w = image_size
    xyxy = (xyxy * xyxy.new_tensor([w, h, w, h])).clamp(min=0)
    xyxy = torch.minimum(xyxy, xyxy.new_tensor([w, h, w, h]))
    probs = pred[..., 5 * B:].clamp(0, 1).unsqueeze(3)  # [N, S, S, 1, C]
    scores = boxes[..., 4:5].clamp(0, 1) * probs  # [N, S, S, B, C]
    best, labels = scores.max(-1)
    results = []
    for n in range(N):
        s, lab, bx = best[n].reshape(-1), labels[n].reshape(-1), xyxy[n].reshape(-1, 4)
        keep = s > score_threshold
        s, lab, bx = s[keep], lab[keep], bx[keep]
        keep = ops.batched_nms(bx, s, lab, iou_threshold)[:max_detections]
        results.append({"boxes": bx[keep], "scores": s[keep], "labels": lab[keep]})
    return results
