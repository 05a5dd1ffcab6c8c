"""The size sweep: ``python -m detops.bench --sweep``.

Every op, forward and (where it has one) forward+backward, over a ladder of
sizes from tiny (a handful of boxes or RoIs, one small map: per-call overhead
dominates) to the full sizes of ``python -m detops.bench``; fp32 and bf16 (where
the baseline has no bf16 CPU kernel, as torchvision's RoI ops and nms, its
rival is the baseline on an fp32 copy, what a user would write); NCHW and
channels-last for the map ops; boxes and RoIs drawn as real detectors make them
(uniform boxes, clustered RPN proposals, FPN level mixes of RoIs, matcher-shaped
ground truth x anchors).

detops and its baseline are timed in alternating samples (so that the load of
other processes hits both alike) until a time budget per point is spent; the
ratio is the baseline's median over detops' median. Points below 1x are timed
again with three times the budget and both readings are kept, with the median
of the per-pair ratios over both readings (``pooled_speedup``), which the
summary and the chart show. Writes
``<out>/sweep-<device>.json`` (environment, every point's medians, samples and
ratio) and ``<out>/sweep-<device>.png`` (speed-up against size, one panel per
op family, log x axis, a line at 1x).

The input makers are those of ``bench/ops/<op>.py``; only the size ladders live
here.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
import torchvision.ops as tvo

import detops
from detops._extras import optional_import

from .harness import BenchCase, synchronize, time_pair
from .ops import anchor_generator as b_anchor
from .ops import box_coder as b_coder
from .ops import box_iou as b_iou
from .ops import conv_transpose2d as b_convt
from .ops import corner_pool as b_corner
from .ops import nms as b_nms
from .ops import paste_masks as b_paste
from .ops import roi_align as b_roi
from .ops import sigmoid_focal_loss as b_focal


def _case(op: str, name: str, size: str, x: float, ours, ref, *, baseline_name: str = "torchvision",
          dtype: str = "fp32", layout: str | None = None, **params) -> BenchCase:
    """A sweep point: ``x`` is the size measure of the plot's x axis; the
    series is the name, dtype and layout."""
    series = " ".join(s for s in (name, dtype if dtype != "fp32" else None, layout) if s)
    return BenchCase(op=op, name=name, size=size, detops=ours, baseline=ref, baseline_name=baseline_name,
                     params=dict(series=series, x=float(x), dtype=dtype, layout=layout, **params))


# ---------------------------------------------------------------- timing

def measure(case: BenchCase, device: str, budget: float, max_call: float = math.inf) -> dict:
    ours, ref = time_pair(case.detops, case.baseline, device, budget, max_call=max_call)
    row = {"op": case.op, "name": case.name, "size": case.size, "baseline_name": case.baseline_name,
           **case.params}
    row["detops_ms"] = statistics.median(ours) * 1e3
    row["baseline_ms"] = statistics.median(ref) * 1e3
    row["speedup"] = row["baseline_ms"] / row["detops_ms"]
    row["samples"] = len(ours)
    # The spread of the per-pair ratios says how much to trust this point.
    ratios = sorted(r / o for o, r in zip(ours, ref))
    row["pair_ratio_q1_q3"] = [ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]]
    row["_samples"] = (ours, ref)  # for a rerun's pooled estimate; not written out
    return row


def point_speedup(row: dict) -> float:
    """A point's speed-up: where it was rerun, the median of the per-pair
    ratios over both readings (each pair is taken back to back, so a drift of
    the machine between the readings cancels; four times the budget), else
    the first reading's ratio of medians."""
    return row.get("pooled_speedup", row["speedup"])


# ---------------------------------------------------------------- helpers

def _grad_step(fn: Callable, leaves: list[torch.Tensor]) -> Callable:
    """fn(*leaves) forward and backward to every leaf (a fixed random output gradient)."""
    leaves = [t.detach().clone(memory_format=torch.preserve_format).requires_grad_() for t in leaves]
    grad: list[torch.Tensor] = []

    def step():
        out = fn(*leaves)
        if not grad:
            grad.append(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out))
        return torch.autograd.grad(out, leaves, grad[0])

    return step


def _cl(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _rpn_boxes(n: int, g: torch.Generator, objects: int | None = None) -> torch.Tensor:
    """RPN-like proposals: jittered copies around a few objects (most pairs near an
    object overlap heavily), in a 1216 x 800 image."""
    objects = objects or max(1, n // 40)
    centre = torch.rand(objects, 2, generator=g) * torch.tensor([1216.0, 800.0])
    wh = torch.exp(torch.rand(objects, 2, generator=g) * math.log(512 / 16)) * 16
    pick = torch.randint(0, objects, (n,), generator=g)
    c = centre[pick] + torch.randn(n, 2, generator=g) * wh[pick] * 0.15
    s = wh[pick] * torch.exp(torch.randn(n, 2, generator=g) * 0.15)
    return torch.cat([c - s / 2, c + s / 2], dim=1)


# ---------------------------------------------------------------- the ladders

def sweep_box_iou(device: str) -> Iterator[BenchCase]:
    matrices = [("box_iou", detops.box_iou, tvo.box_iou),
                ("generalized_box_iou", detops.generalized_box_iou, tvo.generalized_box_iou),
                ("distance_box_iou", detops.distance_box_iou, tvo.distance_box_iou),
                ("complete_box_iou", detops.complete_box_iou, tvo.complete_box_iou)]
    for n in (4, 16, 64, 256, 1000, 2000):
        b1, b2 = b_iou._boxes(n, device, 0), b_iou._boxes(n, device, 1)
        for name, ours, ref in matrices:
            yield _case("box_iou", f"{name} fwd", f"{n}x{n}", n * n,
                        lambda o=ours: o(b1, b2), lambda r=ref: r(b1, b2))
        if n in (16, 256, 2000):
            h1, h2 = b1.bfloat16(), b2.bfloat16()
            yield _case("box_iou", "box_iou fwd", f"{n}x{n}", n * n, lambda: detops.box_iou(h1, h2),
                        lambda: tvo.box_iou(h1, h2), dtype="bf16")
    # The matcher's shape: a few ground-truth boxes against every anchor.
    for gts, anchors in ((2, 1000), (8, 20_000), (20, 120_000)):
        gt, an = b_iou._boxes(gts, device, 2), b_iou._boxes(anchors, device, 3)
        yield _case("box_iou", "box_iou fwd (gt x anchors)", f"{gts}x{anchors}", gts * anchors,
                    lambda gt=gt, an=an: detops.box_iou(gt, an), lambda gt=gt, an=an: tvo.box_iou(gt, an))
    losses = [("generalized_box_iou_loss", detops.generalized_box_iou_loss, tvo.generalized_box_iou_loss),
              ("distance_box_iou_loss", detops.distance_box_iou_loss, tvo.distance_box_iou_loss),
              ("complete_box_iou_loss", detops.complete_box_iou_loss, tvo.complete_box_iou_loss)]
    for k in (4, 64, 1000, 10_000, 200_000):
        p1, p2 = b_iou._boxes(k, device, 4), b_iou._boxes(k, device, 5)
        for name, ours, ref in losses:
            yield _case("box_iou", f"{name} fwd+bwd", f"{k} pairs", k,
                        b_iou._forward_backward(ours, p1, p2), b_iou._forward_backward(ref, p1, p2))


def sweep_nms(device: str) -> Iterator[BenchCase]:
    iou = b_nms.IOU
    g = torch.Generator().manual_seed(0)
    for n in (8, 64, 300, 1000, 5000, 20_000):
        boxes, scores = b_nms._boxes(n, g).to(device), torch.rand(n, generator=g).to(device)
        yield _case("nms", "nms (uniform boxes)", f"{n} boxes", n,
                    lambda b=boxes, s=scores: detops.nms(b, s, iou), lambda b=boxes, s=scores: tvo.nms(b, s, iou))
        if n in (300, 5000):
            hb, hs = boxes.bfloat16(), scores.bfloat16()
            yield _case("nms", "nms (uniform boxes)", f"{n} boxes", n,
                        lambda b=hb, s=hs: detops.nms(b, s, iou),
                        lambda b=hb, s=hs: tvo.nms(b.float(), s.float(), iou),
                        baseline_name="torchvision on fp32", dtype="bf16")
    # torchvision's RPN: clustered proposals at IoU 0.7 (pre-NMS top-k per level ~1000-2000).
    for n in (100, 1000, 4000):
        boxes, scores = _rpn_boxes(n, g).to(device), torch.rand(n, generator=g).to(device)
        yield _case("nms", "nms (RPN proposals, IoU 0.7)", f"{n} boxes", n,
                    lambda b=boxes, s=scores: detops.nms(b, s, 0.7), lambda b=boxes, s=scores: tvo.nms(b, s, 0.7))
    for n, c in ((100, 80), (1000, 80), (20_000, 80)):
        boxes, scores = b_nms._boxes(n, g).to(device), torch.rand(n, generator=g).to(device)
        idxs = torch.randint(0, c, (n,), generator=g).to(device)
        yield _case("nms", "batched_nms (80 classes)", f"{n} boxes", n,
                    lambda b=boxes, s=scores, i=idxs: detops.batched_nms(b, s, i, iou),
                    lambda b=boxes, s=scores, i=idxs: tvo.batched_nms(b, s, i, iou))
    for b_, n, c in ((1, 100, 10), (2, 1000, 20), (4, 5000, 80)):
        mboxes = torch.stack([b_nms._boxes(n, g) for _ in range(b_)]).to(device)
        mscores = b_nms._multiclass_scores(b_, n, c, g).to(device)
        yield _case("nms", "multiclass_nms", f"{b_}x{n}x{c}", b_ * n * c,
                    lambda mb=mboxes, ms=mscores: detops.multiclass_nms(mb, ms, 0.05, iou, 100, 100),
                    lambda mb=mboxes, ms=mscores: b_nms._torchvision_multiclass(mb, ms, 0.05, iou, 100),
                    baseline_name="torchvision batched_nms loop")
    for n in (20, 150, 1000):
        boxes, scores = b_nms._boxes(n, g).to(device), torch.rand(n, generator=g).to(device)
        yield _case("nms", "soft_nms linear", f"{n} boxes", n,
                    lambda b=boxes, s=scores: detops.soft_nms(b, s, 0.3, 0.5, 0.001, "linear"),
                    lambda b=boxes, s=scores: b_nms._torch_soft_nms(b, s, 0.3, 0.001), baseline_name="torch loop")
    for n in (20, 150, 2000):
        boxes, scores = b_nms._boxes(n, g).to(device), torch.rand(n, generator=g).to(device)
        yield _case("nms", "matrix_nms gaussian", f"{n} boxes", n,
                    lambda b=boxes, s=scores: detops.matrix_nms(b, s, None, "gaussian", 2.0, 0.0),
                    lambda b=boxes, s=scores: b_nms._torch_matrix_nms(b, s, 2.0), baseline_name="torch")


# (RoIs, images, channels, image size): the map is the image's stride-4 level.
# From one RoI on a small map (inference of a crop) through the quick size (64
# RoIs on [2,32,50,76]) to the full benchmark size.
ROI_LADDER = ((1, 1, 8, (64, 64)), (8, 1, 32, (128, 128)), (64, 2, 32, (200, 304)),
              (128, 2, 64, (400, 608)), (512, 2, 256, (800, 1216)))


# The position-sensitive ops (R-FCN, Light-Head R-CNN) pool a stride-16 map
# whose channels are 7 x 7 score maps per output channel: from one RoI on 49
# channels to R-FCN's 300 RoIs on 49 x 8 channels of an 800x1216 image.
PS_ROI_LADDER = ((1, 1, 49, (128, 128)), (8, 1, 98, (256, 256)), (64, 2, 98, (400, 608)),
                 (128, 2, 196, (600, 912)), (300, 2, 392, (800, 1216)))


def _sweep_roi_op(device: str, op: str, ours_fn, ref_fn, ladder=ROI_LADDER, stride: int = 4) -> Iterator[BenchCase]:
    g = torch.Generator().manual_seed(0)
    for k, n, c, image in ladder:
        level = torch.randn(n, c, image[0] // stride, image[1] // stride, generator=g).to(device)
        rois = b_roi._rois(b_roi._proposals(k, n, device, k, image))
        shape = f"[{n},{c},{image[0] // stride},{image[1] // stride}]"
        for cl in (False, True):
            x = _cl(level, cl)
            layout = "channels-last" if cl else "NCHW"
            size = f"{k} RoIs 7x7, {shape}"
            yield _case(op, f"{op} fwd", size, k, lambda x=x, r=rois: ours_fn(x, r), lambda x=x, r=rois: ref_fn(x, r),
                        layout=layout, rois=k, map=shape)
            yield _case(op, f"{op} fwd+bwd", size, k, _grad_step(lambda t, r=rois: ours_fn(t, r), [x]),
                        _grad_step(lambda t, r=rois: ref_fn(t, r), [x]), layout=layout, rois=k, map=shape)
            # torchvision has no bf16 RoI kernel on CPU: its rival is torchvision on an fp32 copy.
            xh, rh = x.bfloat16(), rois.bfloat16()
            yield _case(op, f"{op} fwd", size, k, lambda x=xh, r=rh: ours_fn(x, r),
                        lambda x=xh, r=rh: ref_fn(x.float(), r.float()).bfloat16(),
                        baseline_name="torchvision on fp32", dtype="bf16", layout=layout, rois=k, map=shape)


def sweep_roi_align(device: str) -> Iterator[BenchCase]:
    yield from _sweep_roi_op(device, "roi_align", lambda x, r: detops.roi_align(x, r, 7, 0.25, 2),
                             lambda x, r: tvo.roi_align(x, r, 7, 0.25, 2))
    # MultiScaleRoIAlign: RoIs log-uniform in size, so spread over the FPN levels P2-P5.
    g = torch.Generator().manual_seed(1)
    for k, c, image in ((1, 16, (128, 128)), (16, 64, (256, 384)), (128, 256, (512, 768)), (512, 256, (800, 1216))):
        feats = OrderedDict((f"p{i + 2}", torch.randn(2, c, image[0] // s, image[1] // s, generator=g).to(device))
                            for i, s in enumerate((4, 8, 16, 32)))
        names, shapes = list(feats), [image] * 2
        boxes = b_roi._proposals(k, 2, device, 100 + k, image)
        ours_m, ref_m = detops.MultiScaleRoIAlign(names, 7, 2), tvo.MultiScaleRoIAlign(names, 7, 2)
        size = f"{k} RoIs 7x7, P2-P5 of 2x{image[0]}x{image[1]}, {c} ch"
        yield _case("roi_align", "MultiScaleRoIAlign fwd", size, k, lambda m=ours_m, b=boxes, f=feats: m(f, b, shapes),
                    lambda m=ref_m, b=boxes, f=feats: m(f, b, shapes), rois=k)

        def step(m, b=boxes, f=feats, names=names):
            return _grad_step(lambda *levels: m(OrderedDict(zip(names, levels)), b, shapes), list(f.values()))

        yield _case("roi_align", "MultiScaleRoIAlign fwd+bwd", size, k, step(ours_m), step(ref_m), rois=k)


def sweep_roi_pool(device: str) -> Iterator[BenchCase]:
    yield from _sweep_roi_op(device, "roi_pool", lambda x, r: detops.roi_pool(x, r, 7, 0.25),
                             lambda x, r: tvo.roi_pool(x, r, 7, 0.25))


def sweep_ps_roi_align(device: str) -> Iterator[BenchCase]:
    yield from _sweep_roi_op(device, "ps_roi_align", lambda x, r: detops.ps_roi_align(x, r, 7, 1 / 16, 2),
                             lambda x, r: tvo.ps_roi_align(x, r, 7, 1 / 16, 2), PS_ROI_LADDER, 16)


def sweep_ps_roi_pool(device: str) -> Iterator[BenchCase]:
    yield from _sweep_roi_op(device, "ps_roi_pool", lambda x, r: detops.ps_roi_pool(x, r, 7, 1 / 16),
                             lambda x, r: tvo.ps_roi_pool(x, r, 7, 1 / 16), PS_ROI_LADDER, 16)


def sweep_anchor_generator(device: str) -> Iterator[BenchCase]:
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    tv = TvAnchorGenerator(b_anchor.SIZES, b_anchor.RATIOS)
    cached = detops.AnchorGenerator(b_anchor.SIZES, b_anchor.RATIOS)
    uncached = detops.AnchorGenerator(b_anchor.SIZES, b_anchor.RATIOS, cache_size=0)
    for batch, h, w in ((1, 128, 128), (1, 320, 480), (2, 512, 768), (2, 800, 1216)):
        images = ImageList(torch.zeros(batch, 3, h, w, device=device), [(h, w)] * batch)
        feats = [torch.zeros(batch, 1, (h + s - 1) // s, (w + s - 1) // s, device=device) for s in b_anchor.STRIDES]
        size = f"5 levels, {batch}x{h}x{w}"
        yield _case("anchor_generator", "AnchorGenerator (no cache)", size, batch * h * w,
                    lambda i=images, f=feats: uncached(i, f), lambda i=images, f=feats: tv(i, f))
        yield _case("anchor_generator", "AnchorGenerator (cache hit)", size, batch * h * w,
                    lambda i=images, f=feats: cached(i, f), lambda i=images, f=feats: tv(i, f))


def sweep_box_coder(device: str) -> Iterator[BenchCase]:
    from torchvision.models.detection._utils import BoxCoder as TvBoxCoder

    weights = (10.0, 10.0, 5.0, 5.0)
    ours, tv = detops.BoxCoder(weights), TvBoxCoder(weights)
    for n in (4, 64, 1000, 10_000, 100_000):
        boxes, codes, gt = b_coder._boxes(n, device, 0), b_coder._codes(n, 1, device, 1), b_coder._boxes(n, device, 2)
        size = f"{n} boxes"
        yield _case("box_coder", "decode_single", size, n, lambda c=codes, b=boxes: ours.decode_single(c, b),
                    lambda c=codes, b=boxes: tv.decode_single(c, b))
        yield _case("box_coder", "decode_single fwd+bwd", size, n, b_coder._decode_backward(ours, codes, boxes),
                    b_coder._decode_backward(tv, codes, boxes))
        yield _case("box_coder", "encode_single", size, n, lambda g=gt, b=boxes: ours.encode_single(g, b),
                    lambda g=gt, b=boxes: tv.encode_single(g, b))
        if n <= 10_000:  # a box head: 80 class-specific codes per RoI
            rb, rc = b_coder._boxes(n, device, 3), b_coder._codes(n, 80, device, 4)
            yield _case("box_coder", "decode_single, 80 classes", f"{n} boxes x 80", n * 80,
                        lambda c=rc, b=rb: ours.decode_single(c, b), lambda c=rc, b=rb: tv.decode_single(c, b))


def sweep_paste_masks(device: str) -> Iterator[BenchCase]:
    from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

    for n, side in ((1, 64), (8, 128), (32, 256), (100, 512), (100, 800)):
        masks, boxes = b_paste.inputs(n, side, side, device, seed=n)
        yield _case("paste_masks", "paste_masks_in_image", f"{n} masks, {side}x{side}", n * side * side,
                    lambda m=masks, b=boxes, s=side: detops.paste_masks_in_image(m, b, (s, s)),
                    lambda m=masks, b=boxes, s=side: tv_paste(m, b, (s, s)))


def sweep_sigmoid_focal_loss(device: str) -> Iterator[BenchCase]:
    op = "sigmoid_focal_loss"
    for rows in (16, 256, 4096, 32_768, 100_000, 240_000):
        logits, targets, labels = b_focal._inputs(rows, device, seed=rows)
        size = f"{rows}x{b_focal.NUM_CLASSES}"
        for dtype in ("fp32", "bf16"):
            if dtype == "bf16" and rows not in (256, 32_768, 240_000):
                continue
            x = logits if dtype == "fp32" else logits.bfloat16()
            t = targets.to(x.dtype)
            yield _case(op, "sigmoid_focal_loss sum fwd+bwd", size, rows,
                        b_focal._forward_backward(lambda z, t=t: detops.sigmoid_focal_loss(z, t, reduction="sum"), x),
                        b_focal._forward_backward(lambda z, t=t: tvo.sigmoid_focal_loss(z, t, reduction="sum"), x),
                        dtype=dtype)
        yield _case(op, "sigmoid_focal_loss sum fwd", size, rows,
                    lambda x=logits, t=targets: detops.sigmoid_focal_loss(x, t, reduction="sum"),
                    lambda x=logits, t=targets: tvo.sigmoid_focal_loss(x, t, reduction="sum"))
        yield _case(op, "indexed (RetinaNet labels) fwd+bwd", size, rows,
                    b_focal._forward_backward(
                        lambda z, lab=labels: detops.sigmoid_focal_loss_indexed(z, lab, reduction="sum"), logits),
                    b_focal._forward_backward(lambda z, lab=labels: b_focal._torchvision_retinanet_loss(z, lab),
                                              logits),
                    baseline_name="torchvision one-hot + sigmoid_focal_loss")
        classes = labels.clamp(min=0)
        for dtype in ("fp32", "bf16"):
            if dtype == "bf16" and rows not in (256, 32_768, 240_000):
                continue
            x = logits if dtype == "fp32" else logits.bfloat16()
            yield _case(op, "softmax_focal_loss sum fwd+bwd", size, rows,
                        b_focal._forward_backward(
                            lambda z, c=classes: detops.softmax_focal_loss(z, c, reduction="sum"), x),
                        b_focal._forward_backward(lambda z, c=classes: b_focal._softmax_focal_reference(z, c), x),
                        baseline_name="torch (log_softmax)", dtype=dtype)


def sweep_conv_transpose2d(device: str) -> Iterator[BenchCase]:
    from detops.nn import bilinear_kernel

    op, g = "conv_transpose2d", torch.Generator().manual_seed(0)
    # U-Net decoder stage: ConvTranspose2d(256, 128, 2, stride 2).
    wu = (torch.randn(256, 128, 2, 2, generator=g) * 0.05).to(device)
    bu = torch.randn(128, generator=g).to(device)
    ours = lambda a, b, c: detops.conv_transpose2d(a, b, c, stride=2)  # noqa: E731
    ref = lambda a, b, c: F.conv_transpose2d(a, b, c, stride=2)  # noqa: E731
    for hw in (4, 8, 16, 32, 64):
        xu = torch.randn(1, 256, hw, hw, generator=g).to(device)
        size = f"256x{hw}x{hw} -> 128x{2 * hw}x{2 * hw}"
        for cl in (False, True):
            x, layout = _cl(xu, cl), ("channels-last" if cl else "NCHW")
            yield _case(op, "unet up-conv fwd", size, hw * hw, lambda x=x: ours(x, wu, bu), lambda x=x: ref(x, wu, bu),
                        baseline_name="torch", layout=layout)
            yield _case(op, "unet up-conv fwd+bwd", size, hw * hw, b_convt._fwd_bwd(ours, [(x, True), (wu, True), (bu, True)]),
                        b_convt._fwd_bwd(ref, [(x, True), (wu, True), (bu, True)]), baseline_name="torch",
                        layout=layout)
        xh, wh, bh = xu.bfloat16(), wu.bfloat16(), bu.bfloat16()
        yield _case(op, "unet up-conv fwd", size, hw * hw, lambda x=xh: ours(x, wh, bh), lambda x=xh: ref(x, wh, bh),
                    baseline_name="torch", dtype="bf16", layout="NCHW")
    # Mask R-CNN mask head: ConvTranspose2d(256, 256, 2, 2) + ReLU on 14x14 RoI features.
    wm = (torch.randn(256, 256, 2, 2, generator=g) * 0.05).to(device)
    bm = torch.randn(256, generator=g).to(device)
    ours_m = lambda a, b, c: detops.conv_transpose2d(a, b, c, stride=2, activation="relu")  # noqa: E731
    ref_m = lambda a, b, c: F.relu(F.conv_transpose2d(a, b, c, stride=2))  # noqa: E731
    for rois in (1, 8, 32, 100):
        x = torch.randn(rois, 256, 14, 14, generator=g).to(device)
        size = f"{rois}x256x14x14 -> 28x28"
        yield _case(op, "mask head deconv+relu fwd", size, rois * 196, lambda x=x: ours_m(x, wm, bm),
                    lambda x=x: ref_m(x, wm, bm), baseline_name="torch")
        yield _case(op, "mask head deconv+relu fwd+bwd", size, rois * 196,
                    b_convt._fwd_bwd(ours_m, [(x, True), (wm, True), (bm, True)]),
                    b_convt._fwd_bwd(ref_m, [(x, True), (wm, True), (bm, True)]), baseline_name="torch")
    # FCN bilinear heads: depthwise, 21 classes.
    classes = 21
    for k, s, maps in ((4, 2, (4, 16, 64)), (16, 8, (4, 16, 64)), (64, 32, (4, 16))):
        w = bilinear_kernel(k).expand(classes, 1, k, k).contiguous().to(device)
        for hw in maps:
            x = torch.randn(1, classes, hw, hw, generator=g).to(device)
            size = f"21x{hw}x{hw} k{k}/s{s}"
            yield _case(op, f"fcn depthwise k{k}/s{s} fwd", size, hw * hw,
                        lambda x=x, w=w, s=s: detops.conv_transpose2d(x, w, stride=s, groups=classes),
                        lambda x=x, w=w, s=s: F.conv_transpose2d(x, w, stride=s, groups=classes),
                        baseline_name="torch")
            if k < 64:
                o = lambda a, b, s=s: detops.conv_transpose2d(a, b, stride=s, groups=classes)  # noqa: E731
                r = lambda a, b, s=s: F.conv_transpose2d(a, b, stride=s, groups=classes)  # noqa: E731
                yield _case(op, f"fcn depthwise k{k}/s{s} fwd+bwd", size, hw * hw,
                            b_convt._fwd_bwd(o, [(x, True), (w, True)]), b_convt._fwd_bwd(r, [(x, True), (w, True)]),
                            baseline_name="torch")


def sweep_corner_pool(device: str) -> Iterator[BenchCase]:
    op = "corner_pool"
    for side, channels in ((8, 16), (32, 32), (64, 64), (128, 128)):
        base = torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(side)).to(device)
        for direction in ("top", "left"):
            ref = b_corner._reference(direction)

            def ours(t, direction=direction):
                return detops.corner_pool(t, direction)

            for cl in (False, True):
                x = _cl(base, cl)
                layout = "channels-last" if cl else "NCHW"
                size = f"{direction}, [2, {channels}, {side}, {side}]"
                yield _case(op, f"corner_pool {direction} fwd", size, x.numel(), lambda x=x, f=ours: f(x),
                            lambda x=x, f=ref: f(x), baseline_name="torch cummax", layout=layout)
                yield _case(op, f"corner_pool {direction} fwd+bwd", size, x.numel(), b_corner._fwd_bwd(ours, x),
                            b_corner._fwd_bwd(ref, x), baseline_name="torch cummax", layout=layout)


def sweep_coco_map(device: str) -> Iterator[BenchCase]:
    import detops.eval

    from .ops.coco_map import pycocotools_stats, synthetic_coco

    for n in (10, 100, 500):
        gt, dt = synthetic_coco(n)
        yield _case("coco_map", "coco_stats bbox", f"{n} images", n,
                    lambda gt=gt, dt=dt: detops.eval.coco_stats(gt, dt, "bbox", device=device),
                    lambda gt=gt, dt=dt: pycocotools_stats(gt, dt), baseline_name="pycocotools")


# Whole-model benchmarks (bench/ops/<name>.py) time one model size each: no ladder.
MODEL_BENCHES = ("detection_models", "tv_models")

SWEEPS = {
    "anchor_generator": sweep_anchor_generator,
    "box_coder": sweep_box_coder,
    "box_iou": sweep_box_iou,
    "coco_map": sweep_coco_map,
    "conv_transpose2d": sweep_conv_transpose2d,
    "corner_pool": sweep_corner_pool,
    "nms": sweep_nms,
    "paste_masks": sweep_paste_masks,
    "ps_roi_align": sweep_ps_roi_align,
    "ps_roi_pool": sweep_ps_roi_pool,
    "roi_align": sweep_roi_align,
    "roi_pool": sweep_roi_pool,
    "sigmoid_focal_loss": sweep_sigmoid_focal_loss,
}


# ---------------------------------------------------------------- run, summary, plot

def summary(rows: list[dict]) -> list[str]:
    lines = []
    by_op: dict[str, list[float]] = {}
    for r in rows:
        if "speedup" in r:
            by_op.setdefault(r["op"], []).append(point_speedup(r))
    for op, v in by_op.items():
        lines.append(f"{op:<20} points {len(v):3d}  worst {min(v):6.2f}x  median {statistics.median(v):6.2f}x")
    return lines


def plot(rows: list[dict], env: dict, path: Path) -> bool:
    """Draw the panels; False (after a note naming the extra) without matplotlib."""
    matplotlib = optional_import("matplotlib", "bench", "the sweep chart")
    if matplotlib is None:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted({r["op"] for r in rows if "speedup" in r})
    if not ops:
        return False
    cols = 3
    fig_rows = (len(ops) + cols - 1) // cols
    fig, axes = plt.subplots(fig_rows, cols, figsize=(6 * cols, 4.2 * fig_rows), squeeze=False)
    for ax, op in zip(axes.flat, ops):
        series: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if r.get("op") == op and "speedup" in r:
                series.setdefault(r["series"], []).append((r["x"], point_speedup(r)))
        for name, pts in series.items():
            pts.sort()
            style = "--" if "bf16" in name else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", markersize=3, label=name)
        ax.axhline(1.0, color="black", linewidth=1.0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(op, fontsize=10)
        ax.set_xlabel("size (boxes, RoIs, rows, pixels or images; see the JSON)", fontsize=7)
        ax.set_ylabel("speed-up of detops (x)", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=5.5, loc="best")
    for ax in list(axes.flat)[len(ops):]:
        ax.axis("off")
    fig.suptitle(f"detops size sweep on {env['device_name']} ({env['device']}, {env['cpu_threads']} threads), "
                 f"torch {env['torch']}, commit {env['detops_commit']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _no_progress(iterable=None, **kwargs):
    """tqdm's interface, silent: the sweep runs without the bench extra too."""

    class _Bar:
        def update(self, n: int = 1) -> None: ...
        def close(self) -> None: ...

    return iterable if iterable is not None else _Bar()


def run_sweep(device: str, ops: list[str], out: Path, budget: float, env: dict, max_call: float = math.inf) -> int:
    tqdm_module = optional_import("tqdm", "bench", "the progress bar")
    tqdm = tqdm_module.tqdm if tqdm_module is not None else _no_progress

    rows: list[dict] = []
    start = time.perf_counter()
    progress = tqdm(desc="sweep", unit="point", file=sys.stderr)
    for op in ops:
        if op not in SWEEPS:
            continue
        try:
            for case in SWEEPS[op](device):
                try:
                    rows.append(measure(case, device, budget, max_call))
                except Exception as exc:
                    rows.append({"op": case.op, "name": case.name, "size": case.size, **case.params,
                                 "error": f"{type(exc).__name__}: {exc}"[:300]})
                    traceback.print_exc()
                progress.update()
        except Exception as exc:
            rows.append({"op": op, "error": f"setup failed: {type(exc).__name__}: {exc}"[:300]})
            traceback.print_exc()
        # A partial record survives an interrupted run.
        out.mkdir(parents=True, exist_ok=True)
        written = [{k: v for k, v in r.items() if k != "_samples"} for r in rows]
        (out / f"sweep-{device.split(':')[0]}.partial.json").write_text(json.dumps({"environment": env, "results": written}))
    progress.close()
    # Confirm the losses: time every point below 1x again, with three times the budget (a point
    # where both sides run the same torch call reads 1x within +-5% on a 2-core machine).
    slow = [r for r in rows if r.get("speedup", 1.0) < 1.0]
    for r in tqdm(slow, desc="rerun below 1x", unit="point", file=sys.stderr):
        case = next(c for c in SWEEPS[r["op"]](device)
                    if c.name == r["name"] and c.size == r["size"] and c.params["series"] == r["series"])
        again = measure(case, device, 3 * budget, max_call)
        r["rerun_detops_ms"], r["rerun_baseline_ms"] = again["detops_ms"], again["baseline_ms"]
        r["rerun_speedup"] = again["speedup"]
        pairs = [b / a for first in (r, again) for a, b in zip(*first["_samples"])]
        r["pooled_speedup"] = statistics.median(pairs)
    for r in rows:
        r.pop("_samples", None)
    wall = time.perf_counter() - start
    for r in rows:
        if "speedup" in r:
            again = (f" (rerun {r['rerun_speedup']:.2f}x, pooled {r['pooled_speedup']:.2f}x)"
                     if "rerun_speedup" in r else "")
            print(f"{r['op']:<18} {r['series']:<44} {r['size']:<40} {r['detops_ms']:10.4f} ms "
                  f"{r['baseline_ms']:10.4f} ms {r['speedup']:7.2f}x{again}")
        else:
            print(f"{r['op']:<18} ERROR {r.get('name', '')} {r.get('size', '')}: {r['error']}")
    print("\n".join(summary(rows)))
    print(f"sweep wall time {wall:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"sweep-{device.split(':')[0]}"
    env = dict(env, sweep_budget_s=budget, sweep_max_call_s=None if math.isinf(max_call) else max_call,
               sweep_wall_s=round(wall, 1),
               timing="alternating samples of detops and baseline; medians; ratio = baseline / detops")
    (out / f"{stem}.json").write_text(json.dumps({"environment": env, "results": rows}, indent=1))
    drawn = plot(rows, env, out / f"{stem}.png")
    (out / f"{stem}.partial.json").unlink(missing_ok=True)
    print(f"wrote {out / (stem + '.json')}" + (f" and {out / (stem + '.png')}" if drawn else ""))
    return 1 if any("error" in r for r in rows) else 0
