"""Mask pasting for instance segmentation: torchvision's ``paste_masks_in_image``
(``torchvision.models.detection.roi_heads``) as one kernel for all masks.

Each mask, zero-padded by ``padding`` pixels, is resized into its box grown by
the same margin (bilinear, ``align_corners=False``, as ``F.interpolate``) and
written where the box and the image overlap; every other pixel is 0. Boxes are
``(x1, y1, x2, y2)`` in image pixels.

Operator (``torch.ops.detops.*``):

* ``paste_masks(masks [N, 1, M_h, M_w], boxes [N, 4] int64, image_sizes [N, 2] int64,
  height, width, padding) -> [N, 1, height, width]``: ``boxes`` already grown and
  truncated to integers (inclusive corners), ``image_sizes`` ``(h, w)`` per mask.

On CPU, float32 and float64 results equal torchvision's bit for bit: the kernel
follows the rounding of the resize path torch's own kernel takes (which
depends on the box size and on the CPU build torch runs). float16/bfloat16 are
computed in float32. It has no gradient (torchvision pastes at inference only).
CPU: C++; GPU: CUDA C++ (``csrc/paste_masks``).
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from ._common import DeviceError, DtypeError, ShapeError, check_boxes, check_tensor, is_kernel_float

__all__ = ["paste_masks", "paste_masks_in_image"]

_ops = torch.ops.detops


@torch.library.register_fake("detops::paste_masks")
def _paste_masks_fake(masks: Tensor, boxes: Tensor, image_sizes: Tensor, height: int, width: int,
                      padding: int) -> Tensor:
    torch._check(masks.dim() == 4 and masks.shape[1] == 1, lambda: "masks must be [N, 1, M_h, M_w]")
    torch._check(boxes.dim() == 2 and boxes.shape[0] == masks.shape[0], lambda: "boxes must be [N, 4]")
    return masks.new_empty((masks.shape[0], 1, height, width))


def expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """torchvision's ``expand_boxes``, op for op: ``[..., 4]`` boxes grown about
    their centres by ``scale``."""
    w_half = (boxes[..., 2] - boxes[..., 0]) * 0.5
    h_half = (boxes[..., 3] - boxes[..., 1]) * 0.5
    x_c = (boxes[..., 2] + boxes[..., 0]) * 0.5
    y_c = (boxes[..., 3] + boxes[..., 1]) * 0.5
    w_half = w_half * scale
    h_half = h_half * scale
    return torch.stack((x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half), dim=-1)


def paste_boxes(boxes: Tensor, mask_width: int, padding: int) -> Tensor:
    """The integer boxes masks of ``mask_width`` pixels are pasted into:
    torchvision's ``expand_boxes`` by ``(M + 2 * padding) / M``, truncated to
    int64. ``boxes``: ``[N, 4]`` ``(x1, y1, x2, y2)``."""
    if not boxes.is_floating_point():
        boxes = boxes.to(torch.float32)
    return expand_boxes(boxes, float(mask_width + 2 * padding) / mask_width).to(torch.int64)


def _check_paste_args(masks: Tensor, boxes: Tensor, padding: int) -> None:
    check_tensor(masks, "masks")
    if not is_kernel_float(masks.dtype):
        raise DtypeError(f"masks must be a float16, bfloat16, float32 or float64 tensor, got {masks.dtype}")
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ShapeError(f"masks must have shape [N, 1, M_h, M_w], got {list(masks.shape)}")
    check_boxes(boxes, "boxes", 2, 2)
    if boxes.shape[0] != masks.shape[0]:
        raise ShapeError(f"masks and boxes must have the same number of rows, got {masks.shape[0]} and {boxes.shape[0]}")
    if boxes.device != masks.device:
        raise DeviceError(f"masks and boxes must be on the same device, got {masks.device} and {boxes.device}")
    if masks.shape[0] > 0 and (masks.shape[2] == 0 or masks.shape[3] == 0):
        raise ShapeError(f"masks must have at least one pixel, got shape {list(masks.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if masks.requires_grad and torch.is_grad_enabled():
        raise ValueError("paste_masks has no gradient: pass masks that do not require grad (detach them)")
    if not torch.jit.is_scripting():
        if torch.compiler.is_compiling():
            return
    if boxes.numel() > 0 and boxes.is_floating_point() and not bool(torch.isfinite(boxes).all()):
        raise ValueError("boxes must be finite, got NaN or infinite coordinates")


@torch.fx.wrap
def paste_masks_in_image(masks: Tensor, boxes: Tensor, img_shape: Tuple[int, int], padding: int = 1) -> Tensor:
    """Paste masks into one image (torchvision's ``paste_masks_in_image``).

    Args:
        masks: ``[N, 1, M, M]`` mask probabilities (float16, bfloat16, float32 or float64).
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)`` in the image's pixels.
        img_shape: ``(height, width)`` of the image.
        padding: mask pixels of zeros added around each mask (and the box grown to match).

    Returns:
        ``[N, 1, height, width]`` in ``masks``' dtype: each mask resized into its
        box, 0 elsewhere. Bit-equal to torchvision's on CPU in float32/float64.
    """
    _check_paste_args(masks, boxes, padding)
    height, width = int(img_shape[0]), int(img_shape[1])
    if height < 0 or width < 0:
        raise ValueError(f"img_shape must be >= 0, got {[height, width]}")
    n = masks.shape[0]
    sizes = torch.tensor([height, width], dtype=torch.int64, device=masks.device).expand(n, 2)
    return _ops.paste_masks(masks, paste_boxes(boxes, masks.shape[-1], padding), sizes, height, width, padding)


@torch.fx.wrap
def paste_masks(masks: Tensor, boxes: Tensor, image_sizes: Tensor, canvas_size: List[int],
                padding: int = 1) -> Tensor:
    """Paste the masks of a batch of images at once, each into its own image.

    Args:
        masks: ``[N, 1, M, M]`` mask probabilities.
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)``, each in its image's pixels.
        image_sizes: ``[N, 2]`` ``(height, width)`` of each mask's image (integers).
        canvas_size: ``(height, width)`` of the output, at least every image's
            size (pixels beyond it are cut).
        padding: as in :func:`paste_masks_in_image`.

    Returns:
        ``[N, 1, height, width]``: row ``i`` equals ``paste_masks_in_image`` of
        mask ``i`` into its image, zero-padded to the canvas.
    """
    _check_paste_args(masks, boxes, padding)
    check_tensor(image_sizes, "image_sizes")
    if image_sizes.shape != (masks.shape[0], 2):
        raise ShapeError(f"image_sizes must have shape [N, 2] with N = {masks.shape[0]}, got {list(image_sizes.shape)}")
    if image_sizes.device != masks.device:
        raise DeviceError(f"masks and image_sizes must be on the same device, got {masks.device} and {image_sizes.device}")
    height, width = int(canvas_size[0]), int(canvas_size[1])
    if height < 0 or width < 0:
        raise ValueError(f"canvas_size must be >= 0, got {[height, width]}")
    return _ops.paste_masks(masks, paste_boxes(boxes, masks.shape[-1], padding), image_sizes.to(torch.int64),
                            height, width, padding)
