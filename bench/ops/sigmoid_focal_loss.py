"""Focal losses, forward + backward, vs torchvision (sigmoid) and PyTorch (softmax):
at RetinaNet size (2 images x ~120k anchors x 80 classes) and at 100k x 80."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

import detops
from detops.bench.harness import BenchCase

NUM_CLASSES = 80


def _inputs(rows: int, device: str, seed: int):
    """Logits, one-hot targets, and the labels they come from (RetinaNet-like:
    ~1% foreground, ~10% ignored, the rest background)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, NUM_CLASSES, generator=g) * 3 - 4
    labels = torch.randint(0, NUM_CLASSES, (rows,), generator=g)
    kind = torch.rand(rows, generator=g)
    labels[kind > 0.01] = -1
    labels[kind > 0.9] = -2
    targets = torch.zeros(rows, NUM_CLASSES)
    fg = labels >= 0
    targets[fg, labels[fg]] = 1.0
    return logits.to(device), targets.to(device), labels.to(device)


def _forward_backward(loss_fn, logits: torch.Tensor):
    x = logits.clone().requires_grad_()

    def step():
        return torch.autograd.grad(loss_fn(x), x)

    return step


def _torchvision_retinanet_loss(x, labels):
    """torchvision RetinaNetClassificationHead's loss: build one-hot targets, drop ignored anchors."""
    targets = torch.zeros_like(x)
    fg = labels >= 0
    targets[fg, labels[fg]] = 1.0
    keep = labels != -2
    return tv_sigmoid_focal_loss(x[keep], targets[keep], reduction="sum")


def _softmax_focal_reference(x, targets, alpha=0.25, gamma=2.0):
    logp = F.log_softmax(x, dim=1).gather(1, targets[:, None])[:, 0]
    return (-alpha * (1 - logp.exp()) ** gamma * logp).sum()


def cases(device: str, quick: bool) -> list[BenchCase]:
    out = []
    sizes = [("4096x80", 4096)] if quick else [("2x120000x80", 240_000), ("100000x80", 100_000)]
    for size, rows in sizes:
        logits, targets, labels = _inputs(rows, device, seed=rows)
        for reduction in ("sum", "none"):
            if reduction == "none" and rows != 100_000 and not quick:
                continue

            def ours(x, reduction=reduction, targets=targets):
                loss = detops.sigmoid_focal_loss(x, targets, reduction=reduction)
                return loss if reduction == "sum" else loss.sum()

            def ref(x, reduction=reduction, targets=targets):
                loss = tv_sigmoid_focal_loss(x, targets, reduction=reduction)
                return loss if reduction == "sum" else loss.sum()

            out.append(BenchCase(
                op="sigmoid_focal_loss", name=f"sigmoid_focal_loss {reduction} fwd+bwd", size=size,
                detops=_forward_backward(ours, logits), baseline=_forward_backward(ref, logits),
                compiled=lambda ref=ref, logits=logits: _forward_backward(torch.compile(ref), logits),
                params={"reduction": reduction},
            ))
        out.append(BenchCase(
            op="sigmoid_focal_loss", name="sigmoid_focal_loss fwd (sum)", size=size,
            detops=lambda logits=logits, targets=targets: detops.sigmoid_focal_loss(logits, targets, reduction="sum"),
            baseline=lambda logits=logits, targets=targets: tv_sigmoid_focal_loss(logits, targets, reduction="sum"),
        ))
        out.append(BenchCase(
            op="sigmoid_focal_loss", name="indexed (RetinaNet labels) fwd+bwd", size=size,
            detops=_forward_backward(
                lambda x, labels=labels: detops.sigmoid_focal_loss_indexed(x, labels, reduction="sum"), logits),
            baseline=_forward_backward(lambda x, labels=labels: _torchvision_retinanet_loss(x, labels), logits),
            baseline_name="torchvision one-hot + sigmoid_focal_loss",
            compiled=lambda labels=labels, logits=logits: _forward_backward(
                torch.compile(lambda x: _torchvision_retinanet_loss(x, labels)), logits),
        ))
        if size == "100000x80" or quick:
            classes = labels.clamp(min=0)
            out.append(BenchCase(
                op="sigmoid_focal_loss", name="softmax_focal_loss sum fwd+bwd", size=size,
                detops=_forward_backward(
                    lambda x, c=classes: detops.softmax_focal_loss(x, c, reduction="sum"), logits),
                baseline=_forward_backward(lambda x, c=classes: _softmax_focal_reference(x, c), logits),
                baseline_name="torch (log_softmax)",
                compiled=lambda c=classes, logits=logits: _forward_backward(
                    torch.compile(lambda x: _softmax_focal_reference(x, c)), logits),
            ))
    return out
