"""Transforms on ``(image, target)`` pairs and collate functions that fit the
models' inputs. Boxes are ``(x1, y1, x2, y2)`` in pixels."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["Compose", "RandomHorizontalFlip", "InferenceSampler", "collate_detection", "collate_segmentation"]

Transform = Callable[[Tensor, dict], tuple[Tensor, dict]]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


class RandomHorizontalFlip:
    """Flip the image ``[C, H, W]`` and its boxes, masks and semantic map with
    probability ``p``. Draws from ``generator`` (torch's global one by default)."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        if float(torch.rand(1, generator=self.generator)) >= self.p:
            return image, target
        w = image.shape[-1]
        target = dict(target)
        if "boxes" in target:
            b = target["boxes"]
            target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
        for key in ("masks", "semantic"):
            if key in target:
                target[key] = target[key].flip(-1)
        return image.flip(-1), target


def collate_detection(batch: Sequence[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """A list of images (sizes may differ) and a list of target dicts: the input
    torchvision-style detection models take."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def collate_segmentation(batch: Sequence[tuple[Tensor, dict]]) -> tuple[Tensor, Tensor]:
    """Images stacked ``[B, 3, H, W]`` and semantic maps ``[B, H, W]`` (int64):
    the input of segmentation models and their cross-entropy loss."""
    if not batch:
        raise ValueError("collate_segmentation needs a non-empty batch")
    sizes = {tuple(img.shape[-2:]) for img, _ in batch}
    if len(sizes) > 1:
        raise ValueError(f"segmentation batches need images of one size, got {sorted(sizes)}")
    images = torch.stack([img for img, _ in batch])
    semantic = torch.stack([t["semantic"] for _, t in batch])
    return images, semantic


class InferenceSampler(torch.utils.data.Sampler[int]):
    """This rank's contiguous share of ``range(size)``, without the padding
    repeats of ``DistributedSampler``: every index is evaluated exactly once
    over all ranks, which sums of per-pixel counts need (a repeated image would
    be counted twice). Shares differ in length by at most one."""

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None) -> None:
        import torch.distributed as dist

        if world_size is None:
            world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        per, extra = divmod(size, world_size)
        start = rank * per + min(rank, extra)
        self.indices = range(start, start + per + (1 if rank < extra else 0))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
