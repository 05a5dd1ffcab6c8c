"""Position-sensitive RoI Align vs torchvision at R-FCN / Light-Head R-CNN
sizes: batch 2, a stride-16 map of an 800x1216 image with 7 x 7 x 8 = 392
channels, 300 RoIs, 7x7 bins, sampling ratio 2; NCHW and channels-last;
forward and forward+backward."""

from __future__ import annotations

import torch
import torchvision.ops as tvo

import detops
from detops.bench.harness import BenchCase

from .roi_align import _fwd_bwd, _proposals, _rois


def ps_cases(op: str, ours, ref, device: str, quick: bool) -> list[BenchCase]:
    """Cases of a position-sensitive op; ours / ref: (map, rois) -> [K, C / 49, 7, 7]."""
    out: list[BenchCase] = []
    n, c = 2, 49 * (2 if quick else 8)
    image = (400, 608) if quick else (800, 1216)
    k = 64 if quick else 300
    g = torch.Generator().manual_seed(0)
    level = torch.randn(n, c, image[0] // 16, image[1] // 16, generator=g).to(device)
    rois = _rois(_proposals(k, n, device, 1, image))
    for cl in (False, True):
        x = level.contiguous(memory_format=torch.channels_last) if cl else level
        fmt = "channels-last" if cl else "NCHW"
        size = f"{k} RoIs 7x7, [{n},{c},{image[0] // 16},{image[1] // 16}] {fmt} fp32"
        params = {"rois": k, "channels_last": cl}
        out.append(BenchCase(op=op, name=f"{op} fwd", size=size, detops=lambda x=x: ours(x, rois),
                             baseline=lambda x=x: ref(x, rois), params=params))
        grad_shape = (k, c // 49, 7, 7)
        out.append(BenchCase(op=op, name=f"{op} fwd+bwd", size=size,
                             detops=_fwd_bwd(lambda t: ours(t, rois), x, grad_shape),
                             baseline=_fwd_bwd(lambda t: ref(t, rois), x, grad_shape), params=params))
    return out


def cases(device: str, quick: bool) -> list[BenchCase]:
    return ps_cases("ps_roi_align", lambda x, r: detops.ps_roi_align(x, r, 7, 1 / 16, 2),
                    lambda x, r: tvo.ps_roi_align(x, r, 7, 1 / 16, 2), device, quick)
