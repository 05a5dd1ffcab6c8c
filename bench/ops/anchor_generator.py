"""Anchors for the 5 FPN levels of a RetinaNet batch vs torchvision's AnchorGenerator."""

from __future__ import annotations

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator
from torchvision.models.detection.image_list import ImageList

import detops
from detops.bench.harness import BenchCase

# RetinaNet's anchors: 3 scales x 3 aspect ratios on P3-P7.
SIZES = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512))
RATIOS = ((0.5, 1.0, 2.0),) * len(SIZES)
STRIDES = (8, 16, 32, 64, 128)


def cases(device: str, quick: bool) -> list[BenchCase]:
    h, w = (256, 384) if quick else (800, 1216)
    batch = 2
    images = ImageList(torch.zeros(batch, 3, h, w, device=device), [(h, w)] * batch)
    # Feature maps as a ResNet-FPN makes them (ceil division at each stride).
    features = [torch.zeros(batch, 1, (h + s - 1) // s, (w + s - 1) // s, device=device) for s in STRIDES]
    tv = TvAnchorGenerator(SIZES, RATIOS)
    cached = detops.AnchorGenerator(SIZES, RATIOS)
    uncached = detops.AnchorGenerator(SIZES, RATIOS, cache_size=0)
    size = f"5 levels, {batch}x{h}x{w}"

    def compiled():
        fn = torch.compile(TvAnchorGenerator(SIZES, RATIOS))
        return lambda: fn(images, features)

    return [
        BenchCase(op="anchor_generator", name="AnchorGenerator (one launch, no cache)", size=size,
                  detops=lambda: uncached(images, features), baseline=lambda: tv(images, features),
                  compiled=compiled),
        BenchCase(op="anchor_generator", name="AnchorGenerator (cache hit)", size=size,
                  detops=lambda: cached(images, features), baseline=lambda: tv(images, features)),
    ]
