"""Batched pieces shared by the detection models: the input transform of export
mode, box clipping and size filtering over a whole batch, RoI pooling of padded
boxes, box resizing and mask pasting.

Each function works on padded ``[B, N, ...]`` tensors (or flat rows with an
image index) with one launch for the batch, and none reads a value back to the
host, so that export mode traces to one graph. Boxes are ``(x1, y1, x2, y2)``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ... import ops as dops
from ...ops.paste_masks import paste_boxes

# (height, width) of each image as a [B, 2] tensor, or one (height, width) pair for all.
Sizes = Union[Tensor, Sequence[Union[int, torch.SymInt]]]


def sizes_tensor(image_sizes: Sequence[Sequence[int]], like: Tensor) -> Tensor:
    """``[B, 2]`` ``(height, width)`` in ``like``'s dtype and device."""
    return torch.tensor([list(s) for s in image_sizes], dtype=like.dtype, device=like.device)


def _per_image(sizes: Tensor, column: int, ndim: int) -> Tensor:
    # [B, 2] -> [B, 1, ..., 1] so that it broadcasts over [B, ...] coordinates
    return sizes[:, column].reshape([-1] + [1] * (ndim - 1))


def clip_boxes(boxes: Tensor, sizes: Sizes) -> Tensor:
    """torchvision's ``clip_boxes_to_image`` for a batch: ``boxes [B, ..., 4]``, each
    image's boxes clamped to ``[0, width] x [0, height]`` of its own size."""
    x, y = boxes[..., 0::2], boxes[..., 1::2]
    if isinstance(sizes, Tensor):
        h = _per_image(sizes.to(boxes.dtype), 0, x.dim())
        w = _per_image(sizes.to(boxes.dtype), 1, x.dim())
        x = torch.minimum(x.clamp(min=0), w)
        y = torch.minimum(y.clamp(min=0), h)
    else:
        x = x.clamp(min=0, max=sizes[1])
        y = y.clamp(min=0, max=sizes[0])
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def large_enough(boxes: Tensor, min_size: float) -> Tensor:
    """torchvision's ``remove_small_boxes`` as a mask: both sides ``>= min_size``."""
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    return (ws >= min_size) & (hs >= min_size)


def valid_slots(num: Tensor, slots: int) -> Tensor:
    """``[B, slots]`` mask of the first ``num[b]`` slots of each image."""
    return torch.arange(slots, device=num.device)[None, :] < num[:, None]


def padded_rois(boxes: Tensor) -> Tensor:
    """``[B, N, 4]`` boxes -> ``[B * N, 5]`` rois ``(image, x1, y1, x2, y2)``."""
    b, n = boxes.shape[0], boxes.shape[1]
    ids = torch.arange(b, device=boxes.device, dtype=boxes.dtype)[:, None, None].expand(b, n, 1)
    return torch.cat((ids, boxes), dim=2).reshape(b * n, 5)


def pool_rois(pooler: dops.MultiScaleRoIAlign, features: dict[str, Tensor], rois: Tensor,
              image_sizes: list[tuple[int, int]]) -> Tensor:
    """``[K, 5]`` rois pooled by ``pooler``, in the feature maps' precision
    (float32 rois for reduced-precision maps under autocast)."""
    dtype = next(iter(features.values())).dtype
    rois = rois.to(dtype) if dtype == torch.float64 else rois.float()
    return pooler.forward_rois(features, rois, image_sizes)


def select_rows(rows: Tensor, valid: Tensor, export: bool) -> tuple[Tensor, Optional[Tensor]]:
    """Rows of the valid slots (one host sync for the batch) or, in export mode,
    every row (fixed shapes). Returns the rows and the flat indices taken (None: all)."""
    if export:
        return rows, None
    index = valid.reshape(-1).nonzero().squeeze(1)
    return rows.index_select(0, index), index


def scatter_rows(values: Tensor, index: Optional[Tensor], total: int) -> Tensor:
    """Inverse of :func:`select_rows`: ``values`` back into ``total`` zero-filled rows."""
    if index is None:
        return values
    out = values.new_zeros((total,) + tuple(values.shape[1:]))
    return out.index_copy(0, index, values)


def resize_boxes(boxes: Tensor, new_sizes: Tensor, original_sizes: Tensor) -> Tensor:
    """torchvision's ``resize_boxes`` for ``[B, N, 4]`` boxes: ratios in float32 as it
    takes them (``sizes`` are ``[B, 2]`` float32 ``(height, width)``)."""
    ratios = original_sizes / new_sizes
    rh, rw = ratios[:, 0, None], ratios[:, 1, None]
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1 * rw, y1 * rh, x2 * rw, y2 * rh), dim=-1)


def paste_masks(masks: Tensor, boxes: Tensor, image_sizes: Tensor, height: int, width: int,
                padding: int = 1) -> Tensor:
    """torchvision's ``paste_masks_in_image`` for all detections of a batch at once
    (``detops::paste_masks``, bit-equal on CPU), without the public function's
    host-side checks: ``masks`` ``[N, 1, M, M]``, ``boxes`` ``[N, 4]`` in the
    original image's pixels, ``image_sizes`` ``[N, 2]`` int64 ``(h, w)``, onto a
    ``height`` x ``width`` canvas."""
    int_boxes = paste_boxes(boxes, masks.shape[-1], padding)
    return torch.ops.detops.paste_masks(masks, int_boxes, image_sizes, height, width, padding)


def export_transform(transform, images: Union[Tensor, Sequence[Tensor]]) -> tuple[Tensor, tuple]:
    """``GeneralizedRCNNTransform`` of a batch of same-size images in whole-batch
    ops (normalise, resize by the same rule, pad to ``size_divisible``), so that
    export traces it without per-image loops. Returns the batch and the resized
    ``(height, width)``."""
    if not isinstance(images, Tensor):
        images = torch.stack(list(images))
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W] in export mode, got {list(images.shape)}")
    mean = torch.as_tensor(transform.image_mean, dtype=images.dtype, device=images.device)
    std = torch.as_tensor(transform.image_std, dtype=images.dtype, device=images.device)
    x = (images - mean[:, None, None]) / std[:, None, None]
    h, w = x.shape[-2:]
    if transform.fixed_size is not None:
        x = F.interpolate(x, size=[transform.fixed_size[1], transform.fixed_size[0]], mode="bilinear",
                          align_corners=False)
    else:
        min_size = float(transform.min_size[-1])
        scale = min(min_size / min(h, w), float(transform.max_size) / max(h, w))
        x = F.interpolate(x, scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False)
    rh, rw = x.shape[-2:]
    d = transform.size_divisible
    x = F.pad(x, (0, (d - rw % d) % d, 0, (d - rh % d) % d))
    return x, (rh, rw)
