"""IoU family: matrices (forward) and losses (forward + backward) vs torchvision."""

from __future__ import annotations

import torch
import torchvision.ops as tvo

import detops
from detops.bench.harness import BenchCase


def _boxes(n: int, device: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 800
    wh = torch.rand(n, 2, generator=g) * 200 + 1
    return torch.cat([xy, xy + wh], dim=1).to(device)


def _forward_backward(fn, b1: torch.Tensor, b2: torch.Tensor):
    x1 = b1.clone().requires_grad_()
    x2 = b2.clone().requires_grad_()

    def step():
        loss = fn(x1, x2, reduction="sum")
        return torch.autograd.grad(loss, (x1, x2))

    return step


def cases(device: str, quick: bool) -> list[BenchCase]:
    out = []
    n = 500 if quick else 2000
    b1, b2 = _boxes(n, device, 0), _boxes(n, device, 1)
    matrices = [
        ("box_iou", detops.box_iou, tvo.box_iou),
        ("generalized_box_iou", detops.generalized_box_iou, tvo.generalized_box_iou),
        ("distance_box_iou", detops.distance_box_iou, tvo.distance_box_iou),
        ("complete_box_iou", detops.complete_box_iou, tvo.complete_box_iou),
    ]
    for name, ours, ref in matrices:
        out.append(BenchCase(
            op="box_iou", name=f"{name} fwd", size=f"{n}x{n}",
            detops=lambda ours=ours: ours(b1, b2), baseline=lambda ref=ref: ref(b1, b2),
            compiled=lambda ref=ref: (lambda f=torch.compile(ref): lambda: f(b1, b2))(),
        ))
    k = 10_000 if quick else 200_000
    p1, p2 = _boxes(k, device, 2), _boxes(k, device, 3)
    losses = [
        ("generalized_box_iou_loss", detops.generalized_box_iou_loss, tvo.generalized_box_iou_loss),
        ("distance_box_iou_loss", detops.distance_box_iou_loss, tvo.distance_box_iou_loss),
        ("complete_box_iou_loss", detops.complete_box_iou_loss, tvo.complete_box_iou_loss),
    ]
    for name, ours, ref in losses:
        out.append(BenchCase(
            op="box_iou", name=f"{name} fwd+bwd", size=f"{k} pairs",
            detops=_forward_backward(ours, p1, p2), baseline=_forward_backward(ref, p1, p2),
            compiled=lambda ref=ref: _forward_backward(torch.compile(ref), p1, p2),
        ))
    return out
