"""A deterministic synthetic detection and segmentation dataset.

Shapes of several classes and sizes, overlapping, painted on textured
backgrounds. Every image is generated on the fly from ``(seed, index)``, so a
dataset of any size costs no disk and two processes (or two ranks) that ask
for the same index get the same image.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SyntheticShapes", "SHAPE_CLASSES"]

# Class 0 is the background in the semantic map; labels of instances start at 1
# (torchvision's detection models reserve 0 for the background too).
SHAPE_CLASSES = ("background", "rectangle", "ellipse", "triangle", "cross")


def _rectangle(u: Tensor, v: Tensor) -> Tensor:
    return (u.abs() <= 1) & (v.abs() <= 1)


def _ellipse(u: Tensor, v: Tensor) -> Tensor:
    return u * u + v * v <= 1


def _triangle(u: Tensor, v: Tensor) -> Tensor:
    # apex at the top centre, base along the bottom edge of the object's box
    return (v <= 1) & (v >= -1) & (u.abs() <= (v + 1) / 2)


def _cross(u: Tensor, v: Tensor) -> Tensor:
    box = (u.abs() <= 1) & (v.abs() <= 1)
    return box & ((u.abs() <= 0.35) | (v.abs() <= 0.35))


_PAINTERS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (_rectangle, _ellipse, _triangle, _cross)


class SyntheticShapes(torch.utils.data.Dataset):
    """Images of overlapping shapes with boxes, instance masks and a semantic map.

    Item ``i`` is ``(image, target)``:

    * ``image``: ``[3, H, W]`` float32 in ``[0, 1]``;
    * ``target["boxes"]``: ``[N, 4]`` float32, ``(x1, y1, x2, y2)`` in pixels,
      the tight box of the object's visible pixels (``x2``/``y2`` exclusive);
    * ``target["labels"]``: ``[N]`` int64 in ``[1, num_classes]`` (see
      :data:`SHAPE_CLASSES`);
    * ``target["masks"]``: ``[N, H, W]`` uint8, the visible pixels of each
      instance (later shapes occlude earlier ones);
    * ``target["semantic"]``: ``[H, W]`` int64, 0 for the background;
    * ``target["area"]``: ``[N]`` float32 visible pixel counts,
      ``target["iscrowd"]``: ``[N]`` int64 zeros, ``target["image_id"]``: ``i``.

    Args:
        length: number of images.
        size: ``H`` or ``(H, W)``.
        num_classes: shape classes used, 1 to 4 (rectangle, ellipse, triangle, cross).
        objects: ``(min, max)`` shapes painted per image (inclusive).
        object_size: ``(min, max)`` shape extent as a fraction of the image's shorter side.
        seed: different seeds give different datasets; the same seed the same one.
        min_visible: instances with fewer visible pixels are dropped.
        transforms: ``callable(image, target) -> (image, target)``.
    """

    def __init__(
        self,
        length: int = 256,
        size: int | tuple[int, int] = 128,
        *,
        num_classes: int = 3,
        objects: tuple[int, int] = (1, 4),
        object_size: tuple[float, float] = (0.15, 0.45),
        seed: int = 0,
        min_visible: int = 24,
        transforms: Callable[[Tensor, dict], tuple[Tensor, dict]] | None = None,
    ) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.height, self.width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if self.height < 8 or self.width < 8:
            raise ValueError(f"size must be at least 8x8, got {self.height}x{self.width}")
        if not 1 <= num_classes <= len(_PAINTERS):
            raise ValueError(f"num_classes must be in [1, {len(_PAINTERS)}], got {num_classes}")
        if not 0 <= objects[0] <= objects[1]:
            raise ValueError(f"objects must be (min, max) with 0 <= min <= max, got {objects}")
        if not 0 < object_size[0] <= object_size[1] <= 1:
            raise ValueError(f"object_size must be (min, max) fractions in (0, 1], got {object_size}")
        self.length = length
        self.num_classes = num_classes
        self.objects = objects
        self.object_size = object_size
        self.seed = seed
        self.min_visible = min_visible
        self.transforms = transforms

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names by label, index 0 being the background."""
        return SHAPE_CLASSES[: self.num_classes + 1]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length} images")
        index %= max(self.length, 1)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = self._background(g)
        h, w = self.height, self.width
        ys = torch.arange(h, dtype=torch.float32).view(h, 1) + 0.5
        xs = torch.arange(w, dtype=torch.float32).view(1, w) + 0.5
        owner = torch.full((h, w), -1, dtype=torch.int64)  # which instance a pixel shows
        labels: list[int] = []
        n = int(torch.randint(self.objects[0], self.objects[1] + 1, (1,), generator=g))
        short = min(h, w)
        for k in range(n):
            label = int(torch.randint(1, self.num_classes + 1, (1,), generator=g))
            lo, hi = self.object_size
            ext = (lo + (hi - lo) * torch.rand(2, generator=g)) * short / 2  # half extents (x, y)
            cx = float(ext[0] + torch.rand(1, generator=g) * max(w - 2 * float(ext[0]), 1))
            cy = float(ext[1] + torch.rand(1, generator=g) * max(h - 2 * float(ext[1]), 1))
            inside = _PAINTERS[label - 1]((xs - cx) / ext[0], (ys - cy) / ext[1])
            color = self._object_color(g)
            # a little shading so a shape is not one flat colour
            shade = 0.85 + 0.15 * torch.rand(1, h, w, generator=g)
            image = torch.where(inside, (color.view(3, 1, 1) * shade).clamp(0, 1), image)
            owner[inside] = k
            labels.append(label)
        masks = owner.unsqueeze(0) == torch.arange(n).view(n, 1, 1)
        keep = masks.flatten(1).sum(1) >= self.min_visible
        masks = masks[keep]
        label_t = torch.tensor(labels, dtype=torch.int64)[keep] if n else torch.zeros(0, dtype=torch.int64)
        boxes = _mask_boxes(masks)
        semantic = torch.zeros(h, w, dtype=torch.int64)
        for m, lab in zip(masks, label_t.tolist()):
            semantic[m] = lab
        target = {
            "boxes": boxes,
            "labels": label_t,
            "masks": masks.to(torch.uint8),
            "semantic": semantic,
            "area": masks.flatten(1).sum(1).to(torch.float32),
            "iscrowd": torch.zeros(label_t.numel(), dtype=torch.int64),
            "image_id": torch.tensor(index, dtype=torch.int64),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _background(self, g: torch.Generator) -> Tensor:
        """Smooth coloured noise plus faint stripes: texture the models must ignore."""
        h, w = self.height, self.width
        coarse = torch.rand(1, 3, max(h // 16, 2), max(w // 16, 2), generator=g)
        smooth = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
        angle = float(torch.rand(1, generator=g)) * math.pi
        period = 6.0 + 10.0 * float(torch.rand(1, generator=g))
        ys = torch.arange(h, dtype=torch.float32).view(h, 1)
        xs = torch.arange(w, dtype=torch.float32).view(1, w)
        stripes = torch.sin((xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period))
        fine = torch.rand(3, h, w, generator=g)
        return (0.25 + 0.35 * smooth + 0.06 * stripes + 0.06 * fine).clamp(0, 1)

    @staticmethod
    def _object_color(g: torch.Generator) -> Tensor:
        # saturated colours, so that shapes stand out from the grey-ish background
        color = torch.rand(3, generator=g)
        color[int(torch.randint(0, 3, (1,), generator=g))] = 0.95
        return color

    def coco_ground_truth(self, indices: list[int] | None = None) -> dict:
        """The dataset's ground truth as a COCO dict (boxes ``[x, y, w, h]``,
        RLE masks), for :func:`detops.eval.coco_stats` and pycocotools."""
        from ..eval.mask import rle_encode

        indices = list(range(self.length)) if indices is None else indices
        images, annotations = [], []
        for i in indices:
            _, t = self[i]
            images.append({"id": int(t["image_id"]), "height": self.height, "width": self.width})
            for box, label, mask, area in zip(t["boxes"].tolist(), t["labels"].tolist(), t["masks"], t["area"].tolist()):
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": int(t["image_id"]),
                    "category_id": label,
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "area": area,
                    "iscrowd": 0,
                    "segmentation": rle_encode(mask),
                })
        categories = [{"id": c, "name": name} for c, name in enumerate(self.class_names) if c > 0]
        return {"images": images, "annotations": annotations, "categories": categories}


def _mask_boxes(masks: Tensor) -> Tensor:
    """Tight ``(x1, y1, x2, y2)`` boxes of boolean masks ``[N, H, W]``, with
    ``x2``/``y2`` one past the last pixel (the box covers whole pixels)."""
    if masks.shape[0] == 0:
        return torch.zeros(0, 4, dtype=torch.float32)
    h, w = masks.shape[-2:]
    cols = masks.any(1)  # [N, W]
    rows = masks.any(2)  # [N, H]
    xi = torch.arange(w)
    yi = torch.arange(h)
    x1 = torch.where(cols, xi, w).amin(1)
    x2 = torch.where(cols, xi, -1).amax(1) + 1
    y1 = torch.where(rows, yi, h).amin(1)
    y2 = torch.where(rows, yi, -1).amax(1) + 1
    return torch.stack([x1, y1, x2, y2], 1).to(torch.float32)
