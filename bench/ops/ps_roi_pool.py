"""Position-sensitive RoI Pool vs torchvision at R-FCN sizes: batch 2, a
stride-16 map of an 800x1216 image with 7 x 7 x 8 = 392 channels, 300 RoIs,
7x7 bins; NCHW and channels-last; forward and forward+backward."""

from __future__ import annotations

import torchvision.ops as tvo

import detops
from detops.bench.harness import BenchCase

from .ps_roi_align import ps_cases


def cases(device: str, quick: bool) -> list[BenchCase]:
    return ps_cases("ps_roi_pool", lambda x, r: detops.ps_roi_pool(x, r, 7, 1 / 16),
                    lambda x, r: tvo.ps_roi_pool(x, r, 7, 1 / 16), device, quick)
