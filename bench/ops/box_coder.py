"""Box decoding and encoding vs torchvision's BoxCoder."""

from __future__ import annotations

import torch
from torchvision.models.detection._utils import BoxCoder as TvBoxCoder

import detops
from detops.bench.harness import BenchCase


def _boxes(n: int, device: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 800
    wh = torch.rand(n, 2, generator=g) * 200 + 1
    return torch.cat([xy, xy + wh], dim=1).to(device)


def _codes(n: int, k: int, device: str, seed: int) -> torch.Tensor:
    return torch.randn(n, 4 * k, generator=torch.Generator().manual_seed(seed)).to(device)


def _decode_backward(coder, codes: torch.Tensor, boxes: torch.Tensor):
    x = codes.clone().requires_grad_()

    def step():
        return torch.autograd.grad(coder.decode_single(x, boxes).sum(), x)

    return step


def cases(device: str, quick: bool) -> list[BenchCase]:
    n = 10_000 if quick else 100_000
    weights = (10.0, 10.0, 5.0, 5.0)  # Faster R-CNN's box head weights
    ours, tv = detops.BoxCoder(weights), TvBoxCoder(weights)
    boxes, codes, gt = _boxes(n, device, 0), _codes(n, 1, device, 1), _boxes(n, device, 2)
    per_image = [boxes[: n // 2], boxes[n // 2 :]]
    rois = n // 100  # a box head: 80 class-specific codes per RoI
    roi_boxes, roi_codes = _boxes(rois * 10, device, 3), _codes(rois * 10, 80, device, 4)

    def compiled_decode():
        fn = torch.compile(tv.decode_single)
        return lambda: fn(codes, boxes)

    return [
        BenchCase(op="box_coder", name="decode_single", size=f"{n} boxes",
                  detops=lambda: ours.decode_single(codes, boxes), baseline=lambda: tv.decode_single(codes, boxes),
                  compiled=compiled_decode),
        BenchCase(op="box_coder", name="decode (2 images)", size=f"{n} boxes",
                  detops=lambda: ours.decode(codes, per_image), baseline=lambda: tv.decode(codes, per_image)),
        BenchCase(op="box_coder", name="decode_single, 80 classes", size=f"{rois * 10} boxes x 80",
                  detops=lambda: ours.decode_single(roi_codes, roi_boxes),
                  baseline=lambda: tv.decode_single(roi_codes, roi_boxes)),
        BenchCase(op="box_coder", name="decode_single fwd+bwd", size=f"{n} boxes",
                  detops=_decode_backward(ours, codes, boxes), baseline=_decode_backward(tv, codes, boxes)),
        BenchCase(op="box_coder", name="encode_single", size=f"{n} boxes",
                  detops=lambda: ours.encode_single(gt, boxes), baseline=lambda: tv.encode_single(gt, boxes)),
    ]
