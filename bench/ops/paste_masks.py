"""Mask pasting vs torchvision's paste_masks_in_image (Mask R-CNN's
postprocessing): one image's detections into the image, and the batched form
against torchvision's per-image calls."""

from __future__ import annotations

import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

import detops
from detops.bench.harness import BenchCase


def inputs(n: int, height: int, width: int, device: str, seed: int = 0, box_frac: float = 0.4):
    """n 28x28 mask probabilities and boxes inside a height x width image."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, 1, 28, 28, generator=g)
    size = torch.tensor([width, height], dtype=torch.float32)
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    boxes = torch.cat([xy, torch.minimum(xy + torch.rand(n, 2, generator=g) * size * box_frac + 2, size)], 1)
    return masks.to(device), boxes.to(device)


def _batched(images: int, n: int, height: int, width: int, device: str):
    """The masks of `images` images pasted at once vs torchvision's per-image calls."""
    parts = [inputs(n, height, width, device, seed=i) for i in range(images)]
    masks = torch.cat([m for m, _ in parts])
    boxes = torch.cat([b for _, b in parts])
    sizes = torch.tensor([[height, width]], device=device).expand(images * n, 2)

    def ours():
        return detops.paste_masks(masks, boxes, sizes, [height, width])

    def tv():
        return [tv_paste(m, b, (height, width)) for m, b in parts]

    return ours, tv


def cases(device: str, quick: bool) -> list[BenchCase]:
    n, side = (20, 256) if quick else (100, 512)
    masks, boxes = inputs(n, side, side, device)
    small_masks, small_boxes = inputs(n, side, side, device, seed=1, box_frac=0.08)
    ours_batch, tv_batch = _batched(2, n, side, side, device)
    return [
        BenchCase(op="paste_masks", name="paste_masks_in_image", size=f"{n} masks, {side}x{side}",
                  detops=lambda: detops.paste_masks_in_image(masks, boxes, (side, side)),
                  baseline=lambda: tv_paste(masks, boxes, (side, side))),
        BenchCase(op="paste_masks", name="paste_masks_in_image, small boxes", size=f"{n} masks, {side}x{side}",
                  detops=lambda: detops.paste_masks_in_image(small_masks, small_boxes, (side, side)),
                  baseline=lambda: tv_paste(small_masks, small_boxes, (side, side))),
        BenchCase(op="paste_masks", name="paste_masks (2 images at once)", size=f"2x{n} masks, {side}x{side}",
                  detops=ours_batch, baseline=tv_batch),
    ]
