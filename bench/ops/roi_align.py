"""RoI Align and MultiScaleRoIAlign vs torchvision at Mask R-CNN sizes: batch 2,
256 channels, FPN P2-P5 of an 800x1216 image, 512 / 1000 RoIs, 7x7 / 14x14,
sampling ratio 2; NCHW and channels-last; on GPU also bf16 channels-last under
autocast and the deterministic backward."""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
import torchvision.ops as tvo

import detops
from detops.bench.harness import BenchCase

IMAGE = (800, 1216)


def _proposals(k: int, n: int, device: str, seed: int, image=IMAGE) -> list[torch.Tensor]:
    """k boxes split over n images, sizes log-uniform in [16, 512] px (all FPN levels)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        m = k // n + (1 if i < k % n else 0)
        wh = torch.exp(torch.rand(m, 2, generator=g) * (torch.log(torch.tensor(512.0)) - torch.log(torch.tensor(16.0)))) * 16
        xy = torch.rand(m, 2, generator=g) * (torch.tensor([image[1], image[0]]) - wh).clamp(min=1)
        out.append(torch.cat([xy, xy + wh], dim=1).to(device))
    return out


def _rois(boxes: list[torch.Tensor]) -> torch.Tensor:
    ids = torch.cat([torch.full((len(b), 1), float(i), device=b.device) for i, b in enumerate(boxes)])
    return torch.cat([ids, torch.cat(boxes)], dim=1)


def _fwd_bwd(fn, x: torch.Tensor, grad_shape, dtype=None, autocast: str | None = None, deterministic=False):
    leaf = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    grad = torch.randn(grad_shape, device=x.device, dtype=dtype or x.dtype)

    def step():
        ctx = torch.autocast(autocast, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        prev = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic)
        try:
            with ctx:
                out = fn(leaf)
            return torch.autograd.grad(out, leaf, grad.to(out.dtype))
        finally:
            torch.use_deterministic_algorithms(prev)

    return step


def cases(device: str, quick: bool) -> list[BenchCase]:
    out: list[BenchCase] = []
    n, c = 2, (32 if quick else 256)
    image = (200, 304) if quick else IMAGE
    g = torch.Generator().manual_seed(0)
    level = torch.randn(n, c, image[0] // 4, image[1] // 4, generator=g).to(device)
    counts = [64] if quick else [512, 1000]
    sizes = [7] if quick else [7, 14]
    for k in counts:
        rois = _rois(_proposals(k, n, device, k, image))
        for s in sizes:
            for cl in (False, True):
                x = level.contiguous(memory_format=torch.channels_last) if cl else level
                fmt = "channels-last" if cl else "NCHW"
                size = f"{k} RoIs {s}x{s}, [{n},{c},{image[0] // 4},{image[1] // 4}] {fmt} fp32"

                def ours(t, rois=rois, s=s):
                    return detops.roi_align(t, rois, s, 0.25, 2)

                def ref(t, rois=rois, s=s):
                    return tvo.roi_align(t, rois, s, 0.25, 2)

                out.append(BenchCase(
                    op="roi_align", name="roi_align fwd", size=size,
                    detops=lambda x=x, f=ours: f(x), baseline=lambda x=x, f=ref: f(x),
                    params={"rois": k, "output": s, "channels_last": cl},
                ))
                out.append(BenchCase(
                    op="roi_align", name="roi_align fwd+bwd", size=size,
                    detops=_fwd_bwd(ours, x, (k, c, s, s)), baseline=_fwd_bwd(ref, x, (k, c, s, s)),
                    params={"rois": k, "output": s, "channels_last": cl},
                ))
                if device.startswith("cuda") and cl:
                    out.append(BenchCase(
                        op="roi_align", name="roi_align fwd+bwd bf16 autocast", size=size.replace("fp32", "bf16"),
                        detops=_fwd_bwd(ours, x.bfloat16(), (k, c, s, s), autocast="cuda"),
                        baseline=_fwd_bwd(ref, x.bfloat16(), (k, c, s, s), autocast="cuda"),
                        params={"rois": k, "output": s, "channels_last": cl, "dtype": "bf16"},
                    ))
                if device.startswith("cuda") and not cl:
                    out.append(BenchCase(
                        op="roi_align", name="roi_align fwd+bwd deterministic", size=size,
                        detops=_fwd_bwd(ours, x, (k, c, s, s), deterministic=True),
                        baseline=_fwd_bwd(ref, x, (k, c, s, s), deterministic=True),
                        params={"rois": k, "output": s, "deterministic": True},
                    ))

    # MultiScaleRoIAlign over P2-P5.
    feats = OrderedDict(
        (f"p{i + 2}", torch.randn(n, c, image[0] // st, image[1] // st, generator=g).to(device))
        for i, st in enumerate([4, 8, 16, 32])
    )
    names = list(feats)
    shapes = [image] * n
    for k in counts:
        boxes = _proposals(k, n, device, 100 + k, image)
        for s in sizes:
            ours_m = detops.MultiScaleRoIAlign(names, s, 2)
            ref_m = tvo.MultiScaleRoIAlign(names, s, 2)
            size = f"{k} RoIs {s}x{s}, P2-P5 of {image[0]}x{image[1]}, batch {n}, {c} ch"
            out.append(BenchCase(
                op="roi_align", name="MultiScaleRoIAlign fwd", size=size,
                detops=lambda m=ours_m, b=boxes: m(feats, b, shapes),
                baseline=lambda m=ref_m, b=boxes: m(feats, b, shapes),
                params={"rois": k, "output": s},
            ))
            leaves = OrderedDict((key, v.clone().requires_grad_()) for key, v in feats.items())
            grad = torch.randn(k, c, s, s, device=device)

            def step(m, b=boxes, grad=grad, leaves=leaves):
                return lambda: torch.autograd.grad(m(leaves, b, shapes), list(leaves.values()), grad)

            out.append(BenchCase(
                op="roi_align", name="MultiScaleRoIAlign fwd+bwd", size=size,
                detops=step(ours_m), baseline=step(ref_m),
                params={"rois": k, "output": s},
            ))
    return out
