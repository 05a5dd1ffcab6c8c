"""The small box utilities of ``torchvision.ops``: ``box_convert``, ``box_area``,
``clip_boxes_to_image``, ``remove_small_boxes``, ``masks_to_boxes`` and
``_box_inter_union``, with torchvision's signatures and bit-equal results.

They run in Python on torch ops, with torchvision's order of floating-point
operations (so every value is the same) but on whole coordinate pairs rather
than single columns, which takes fewer kernel launches. Axis-aligned formats
only: ``"xyxy"`` (corners), ``"xywh"`` (corner, size), ``"cxcywh"`` (centre,
size); torchvision's rotated formats are not handled here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_tensor

__all__ = ["box_convert", "box_area", "clip_boxes_to_image", "remove_small_boxes", "masks_to_boxes", "_box_inter_union"]

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def _check_fmt(fmt: str, name: str = "fmt") -> None:
    if fmt not in BOX_FORMATS:
        raise ValueError(f"{name} must be one of {BOX_FORMATS}, got {fmt!r}")


def _check_boxes4(boxes: object, name: str = "boxes") -> Tensor:
    boxes = check_tensor(boxes, name)
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4], got {list(boxes.shape)}")
    return boxes


def _upcast(t: Tensor) -> Tensor:
    # torchvision's rule against overflow in products: float16/bfloat16 -> float32, small ints -> int32.
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def _xywh_to_xyxy(b: Tensor) -> Tensor:
    return torch.cat((b[..., :2], b[..., :2] + b[..., 2:]), dim=-1)


def _cxcywh_to_xyxy(b: Tensor) -> Tensor:
    half = 0.5 * b[..., 2:]
    return torch.cat((b[..., :2] - half, b[..., :2] + half), dim=-1)


def _xyxy_to_xywh(b: Tensor) -> Tensor:
    return torch.cat((b[..., :2], b[..., 2:] - b[..., :2]), dim=-1)


def _xyxy_to_cxcywh(b: Tensor) -> Tensor:
    return torch.cat(((b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]), dim=-1)


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert ``[..., 4]`` boxes between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"``
    (as ``torchvision.ops.box_convert``; conversions between the two size
    formats go through ``"xyxy"``, as torchvision's do, so values are equal).

    Returns:
        ``[..., 4]`` boxes in ``out_fmt`` (a copy when the formats are equal).
    """
    boxes = _check_boxes4(boxes)
    _check_fmt(in_fmt, "in_fmt")
    _check_fmt(out_fmt, "out_fmt")
    if in_fmt == out_fmt:
        return boxes.clone()
    if in_fmt == "xywh":
        boxes = _xywh_to_xyxy(boxes)
    elif in_fmt == "cxcywh":
        boxes = _cxcywh_to_xyxy(boxes)
    if out_fmt == "xywh":
        return _xyxy_to_xywh(boxes)
    if out_fmt == "cxcywh":
        return _xyxy_to_cxcywh(boxes)
    return boxes


def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    """Areas of ``[..., 4]`` boxes -> ``[...]`` (float16/bfloat16 in float32, small
    integers in int32, as ``torchvision.ops.box_area``)."""
    boxes = _check_boxes4(boxes)
    _check_fmt(fmt)
    boxes = _upcast(boxes)
    wh = boxes[..., 2:] - boxes[..., :2] if fmt == "xyxy" else boxes[..., 2:]
    return wh[..., 0] * wh[..., 1]


def _box_inter_union(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> tuple[Tensor, Tensor]:
    """Intersection and union areas of every pair: ``[..., N, 4]`` x ``[..., M, 4]``
    -> two ``[..., N, M]`` tensors (torchvision's ``ops.boxes._box_inter_union``)."""
    area1 = box_area(boxes1, fmt)
    area2 = box_area(boxes2, fmt)
    _check_boxes4(boxes2, "boxes2")
    a, b = boxes1[..., None, :], boxes2[..., None, :, :]
    if fmt == "xyxy":
        lt = torch.max(a[..., :2], b[..., :2])
        rb = torch.min(a[..., 2:], b[..., 2:])
    elif fmt == "xywh":
        lt = torch.max(a[..., :2], b[..., :2])
        rb = torch.min(a[..., :2] + a[..., 2:], b[..., :2] + b[..., 2:])
    else:
        lt = torch.max(a[..., :2] - a[..., 2:] / 2, b[..., :2] - b[..., 2:] / 2)
        rb = torch.min(a[..., :2] + a[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2)
    wh = _upcast(rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., None] + area2[..., None, :] - inter
    return inter, union


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp ``[..., 4]`` boxes ``(x1, y1, x2, y2)`` to an image of ``size = (height,
    width)``: x to ``[0, width]``, y to ``[0, height]`` (one clamp, NaN stays NaN)."""
    boxes = _check_boxes4(boxes)
    height, width = size
    if boxes.dtype in (torch.float32, torch.float64) and all(abs(float(v)) < 2**24 for v in (height, width)):
        # The bounds are exact in the boxes' dtype, so one clamp against them is torchvision's result.
        upper = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        return torch.clamp(boxes, min=torch.zeros_like(upper), max=upper)
    # Other dtypes round or wrap the bounds: torchvision's per-column clamps with Python numbers.
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=boxes.dim()).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices ``[K]`` (int64, ascending) of the boxes ``(x1, y1, x2, y2)`` whose
    width and height are both ``>= min_size`` (NaN sizes are removed)."""
    boxes = _check_boxes4(boxes)
    keep = ((boxes[..., 2:] - boxes[..., :2]) >= min_size).all(dim=-1)
    return torch.where(keep)[0]


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Boxes ``[N, 4]`` float32 ``(x1, y1, x2, y2)`` around the non-zero pixels of
    ``[N, H, W]`` masks (inclusive pixel indices, as torchvision); an empty mask
    gives ``(0, 0, 0, 0)``."""
    masks = check_tensor(masks, "masks")
    if masks.numel() == 0:
        return torch.zeros((0, 4), device=masks.device, dtype=torch.float)
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape [N, H, W], got {list(masks.shape)}")
    _, h, w = masks.shape
    nonzero = masks != 0
    rows = nonzero.any(dim=2)
    cols = nonzero.any(dim=1)
    # The first True of each row mask is the argmax of its index-weighted form:
    # the reversed index for the first, the index for the last.
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, h - ys, 0).amax(dim=1)
    x1 = torch.where(cols, w - xs, 0).amax(dim=1)
    y2 = torch.where(rows, ys, -1).amax(dim=1)
    x2 = torch.where(cols, xs, -1).amax(dim=1)
    boxes = torch.stack((w - x1, h - y1, x2, y2), dim=1).float()
    return boxes.masked_fill_(~rows.any(dim=1, keepdim=True), 0)
