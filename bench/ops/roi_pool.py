"""RoI Pool vs torchvision: one 200x304 level (stride 4 of 800x1216), batch 2,
256 channels, 512 RoIs, 7x7; NCHW and channels-last; forward and forward+backward."""

from __future__ import annotations

import torch
import torchvision.ops as tvo

import detops
from detops.bench.harness import BenchCase

from .roi_align import _fwd_bwd, _proposals, _rois


def cases(device: str, quick: bool) -> list[BenchCase]:
    out: list[BenchCase] = []
    n, c = 2, (32 if quick else 256)
    image = (200, 304) if quick else (800, 1216)
    k = 64 if quick else 512
    g = torch.Generator().manual_seed(0)
    level = torch.randn(n, c, image[0] // 4, image[1] // 4, generator=g).to(device)
    rois = _rois(_proposals(k, n, device, 1, image))
    for cl in (False, True):
        x = level.contiguous(memory_format=torch.channels_last) if cl else level
        size = f"{k} RoIs 7x7, [{n},{c},{image[0] // 4},{image[1] // 4}] {'channels-last' if cl else 'NCHW'} fp32"

        def ours(t):
            return detops.roi_pool(t, rois, 7, 0.25)

        def ref(t):
            return tvo.roi_pool(t, rois, 7, 0.25)

        out.append(BenchCase(
            op="roi_pool", name="roi_pool fwd", size=size,
            detops=lambda x=x: ours(x), baseline=lambda x=x: ref(x), params={"rois": k, "channels_last": cl},
        ))
        out.append(BenchCase(
            op="roi_pool", name="roi_pool fwd+bwd", size=size,
            detops=_fwd_bwd(ours, x, (k, c, 7, 7)), baseline=_fwd_bwd(ref, x, (k, c, 7, 7)),
            params={"rois": k, "channels_last": cl},
        ))
    return out
