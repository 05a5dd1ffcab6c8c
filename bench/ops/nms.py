"""NMS family vs torchvision: nms at 1k / 5k / 20k boxes, batched_nms at 20k and
100k boxes over 80 classes, multiclass_nms on a batch of 8 x 20k x 80 (vs a
per-image torchvision batched_nms + top-k loop), Soft-NMS and Matrix NMS (vs
plain torch implementations, torchvision has neither).

Boxes: corners uniform in a 1000 x 1000 image, sides uniform in [5, 105)
(about half of them survive NMS at IoU 0.5, the slow case for torchvision's
all-pairs scan). Scores uniform in [0, 1), except multiclass_nms: 1% of the
(box, class) scores above the 0.05 threshold, as a detector's sigmoid scores.
"""

from __future__ import annotations

import torch
import torchvision.ops as tvo

import detops
from detops.bench.harness import BenchCase

IOU = 0.5


def _boxes(n: int, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * 1000
    wh = torch.rand(n, 2, generator=g) * 100 + 5
    return torch.cat([xy, xy + wh], dim=1)


def _multiclass_scores(b: int, n: int, c: int, g: torch.Generator) -> torch.Tensor:
    scores = torch.rand(b, n, c, generator=g) * 0.05
    high = torch.rand(b, n, c, generator=g) < 0.01
    return torch.where(high, 0.05 + 0.95 * torch.rand(b, n, c, generator=g), scores)


def _torchvision_multiclass(boxes, scores, score_threshold, iou, max_det):
    """Per image: candidates above the threshold, torchvision batched_nms with
    the class as idxs, first max_det (no per-class cap: a cheaper rival)."""
    out = []
    for img in range(scores.shape[0]):
        box_idx, cls = torch.nonzero(scores[img] > score_threshold, as_tuple=True)
        s = scores[img, box_idx, cls]
        keep = tvo.batched_nms(boxes[img, box_idx], s, cls, iou)[:max_det]
        out.append((boxes[img, box_idx[keep]], s[keep], cls[keep]))
    return out


def _torch_soft_nms(boxes, scores, iou_threshold=0.3, min_score=0.001):
    """Linear Soft-NMS with torch ops, one selection per step."""
    s = scores.clone()
    alive = s >= min_score
    keep = []
    iou = tvo.box_iou(boxes, boxes)
    while bool(alive.any()):
        i = int(torch.where(alive, s, torch.full_like(s, -1)).argmax())
        keep.append(i)
        alive[i] = False
        w = torch.where(iou[i] > iou_threshold, 1 - iou[i], torch.ones_like(s))
        s = torch.where(alive, s * w, s)
        alive &= s >= min_score
    return keep


def _torch_matrix_nms(boxes, scores, sigma=2.0):
    """Gaussian Matrix NMS (SOLOv2's formulation) with torch ops."""
    order = scores.argsort(descending=True)
    iou = tvo.box_iou(boxes[order], boxes[order]).triu(diagonal=1)
    comp = iou.max(0).values
    decay = torch.exp(-sigma * (iou**2 - comp[:, None] ** 2)).min(0).values.clamp(max=1)
    return scores[order] * decay


def cases(device: str, quick: bool) -> list[BenchCase]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n in [1000] if quick else [1000, 5000, 20000]:
        boxes, scores = _boxes(n, g).to(device), torch.rand(n, generator=g).to(device)
        out.append(BenchCase(
            op="nms", name="nms", size=f"{n} boxes",
            detops=lambda b=boxes, s=scores: detops.nms(b, s, IOU),
            baseline=lambda b=boxes, s=scores: tvo.nms(b, s, IOU),
            params={"iou_threshold": IOU},
        ))
    for n, c in [(2000, 80)] if quick else [(20000, 80), (100000, 80)]:
        boxes, scores = _boxes(n, g).to(device), torch.rand(n, generator=g).to(device)
        idxs = torch.randint(0, c, (n,), generator=g).to(device)
        out.append(BenchCase(
            op="nms", name="batched_nms", size=f"{n} boxes, {c} classes",
            detops=lambda b=boxes, s=scores, i=idxs: detops.batched_nms(b, s, i, IOU),
            baseline=lambda b=boxes, s=scores, i=idxs: tvo.batched_nms(b, s, i, IOU),
            params={"iou_threshold": IOU},
        ))
    B, N, C = (2, 1000, 10) if quick else (8, 20000, 80)
    mboxes = torch.stack([_boxes(N, g) for _ in range(B)]).to(device)
    mscores = _multiclass_scores(B, N, C, g).to(device)
    out.append(BenchCase(
        op="nms", name="multiclass_nms", size=f"{B}x{N}x{C}",
        detops=lambda: detops.multiclass_nms(mboxes, mscores, 0.05, IOU, 100, 100),
        baseline=lambda: _torchvision_multiclass(mboxes, mscores, 0.05, IOU, 100),
        baseline_name="torchvision batched_nms loop",
        params={"score_threshold": 0.05, "max_per_class": 100, "max_detections": 100},
    ))
    n = 150 if quick else 2000
    boxes, scores = _boxes(n, g).to(device), torch.rand(n, generator=g).to(device)
    out.append(BenchCase(
        op="nms", name="soft_nms linear", size=f"{n} boxes",
        detops=lambda: detops.soft_nms(boxes, scores, 0.3, 0.5, 0.001, "linear"),
        baseline=lambda: _torch_soft_nms(boxes, scores, 0.3, 0.001),
        baseline_name="torch loop",
    ))
    out.append(BenchCase(
        op="nms", name="matrix_nms gaussian", size=f"{n} boxes",
        detops=lambda: detops.matrix_nms(boxes, scores, None, "gaussian", 2.0, 0.0),
        baseline=lambda: _torch_matrix_nms(boxes, scores, 2.0),
        baseline_name="torch",
    ))
    return out
