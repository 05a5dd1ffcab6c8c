"""Per-call overhead of detops against torchvision on tiny inputs:
``python -m detops.bench.overhead``.

On inputs this small (10 boxes, one RoI, a 10x10 IoU matrix) the kernels take
next to nothing and a call's time is its Python argument handling plus the
dispatcher. Each case is timed as a loop of calls, detops and torchvision
alternating, and the table gives the median microseconds per call over the
repeats and the ratio (torchvision / detops: above 1 means detops is cheaper).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

Case = tuple[str, Callable[[], Any], Callable[[], Any]]


def _boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 50
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=generator) * 20], dim=1)


def cases() -> list[Case]:
    import torchvision
    from torchvision.models.detection._utils import BoxCoder as TvBoxCoder
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    import detops

    g = torch.Generator().manual_seed(0)
    tv = torchvision.ops
    boxes = _boxes(10, g)
    scores = torch.rand(10, generator=g)
    idxs = torch.randint(0, 3, (10,), generator=g)
    feature = torch.rand(1, 8, 16, 16, generator=g)
    rois = torch.tensor([[0.0, 1.0, 2.0, 9.0, 12.0]])
    logits = torch.randn(10, 8, generator=g)
    targets = (torch.rand(10, 8, generator=g) > 0.8).float()
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    maps = [torch.zeros(1, 4, 8, 8)]
    sizes, ratios = ((32,),), ((0.5, 1.0, 2.0),)
    dt_anchor, tv_anchor = detops.AnchorGenerator(sizes, ratios), TvAnchorGenerator(sizes, ratios)
    weights = (10.0, 10.0, 5.0, 5.0)
    dt_coder, tv_coder = detops.BoxCoder(weights), TvBoxCoder(weights)
    codes = torch.randn(10, 4, generator=g) * 0.1
    return [
        ("box_iou 10x10", lambda: detops.box_iou(boxes, boxes), lambda: tv.box_iou(boxes, boxes)),
        ("generalized_box_iou 10x10", lambda: detops.generalized_box_iou(boxes, boxes),
         lambda: tv.generalized_box_iou(boxes, boxes)),
        ("giou_loss 10 sum", lambda: detops.generalized_box_iou_loss(boxes, boxes, "sum"),
         lambda: tv.generalized_box_iou_loss(boxes, boxes, "sum")),
        ("nms 10", lambda: detops.nms(boxes, scores, 0.5), lambda: tv.nms(boxes, scores, 0.5)),
        ("batched_nms 10", lambda: detops.batched_nms(boxes, scores, idxs, 0.5),
         lambda: tv.batched_nms(boxes, scores, idxs, 0.5)),
        ("roi_align 1 RoI", lambda: detops.roi_align(feature, rois, 7, 0.5, 2),
         lambda: tv.roi_align(feature, rois, 7, 0.5, 2)),
        ("roi_pool 1 RoI", lambda: detops.roi_pool(feature, rois, 7, 0.5), lambda: tv.roi_pool(feature, rois, 7, 0.5)),
        ("sigmoid_focal_loss 10x8 sum", lambda: detops.sigmoid_focal_loss(logits, targets, reduction="sum"),
         lambda: tv.sigmoid_focal_loss(logits, targets, reduction="sum")),
        ("AnchorGenerator 8x8", lambda: dt_anchor(images, maps), lambda: tv_anchor(images, maps)),
        ("BoxCoder.decode 10", lambda: dt_coder.decode(codes, [boxes]), lambda: tv_coder.decode(codes, [boxes])),
        ("BoxCoder.encode 10", lambda: dt_coder.encode([boxes], [boxes]), lambda: tv_coder.encode([boxes], [boxes])),
    ]


def per_call_us(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def measure(selected: list[Case], calls: int, repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    for name, dt_fn, tv_fn in selected:
        dt_fn(), tv_fn()  # warm-up (first-call caches, lazy imports)
        dt, tv = [], []
        for _ in range(repeats):  # alternate so that load on the machine hits both alike
            dt.append(per_call_us(dt_fn, calls))
            tv.append(per_call_us(tv_fn, calls))
        rows.append((name, statistics.median(dt), statistics.median(tv)))
    return rows


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per timed loop")
    parser.add_argument("--repeats", type=int, default=15, help="timed loops per side (the median is shown)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no thread-pool start-up)")
    parser.add_argument("--cases", nargs="*", help="substrings of the case names to run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    selected = [c for c in cases() if not args.cases or any(s in c[0] for s in args.cases)]
    rows = measure(selected, args.calls, args.repeats)
    print(f"{'case':30s} {'detops us':>10s} {'torchvision us':>15s} {'tv/detops':>10s}")
    for name, dt, tv in rows:
        print(f"{name:30s} {dt:10.1f} {tv:15.1f} {tv / dt:9.2f}x")
    return rows


if __name__ == "__main__":
    main()
