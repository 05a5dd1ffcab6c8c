"""End-to-end demo: ``python -m detops.demo``.

One RetinaNet-style training step and inference on a synthetic batch, run
twice: with torchvision's ops and with detops' in their place (anchors, IoU
matching, box coding, focal and GIoU losses, per-class NMS). It checks that
both give the same losses and detections, times both, scores the detections
with ``detops.eval.coco_stats`` (and pycocotools, when installed, to show the
numbers agree), and draws the first image's boxes to a PNG.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
from torch import Tensor

import detops
from detops._extras import optional_import

STRIDES = (8, 16, 32, 64, 128)
ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * len(STRIDES)


@dataclass
class Scene:
    images: Tensor  # [B, 3, H, W]
    boxes: list[Tensor]  # per image [G, 4] (x1, y1, x2, y2)
    labels: list[Tensor]  # per image [G] in [0, classes)
    classes: int


def make_scene(batch: int = 2, height: int = 512, width: int = 640, classes: int = 5, seed: int = 0) -> Scene:
    g = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for _ in range(batch):
        n = int(torch.randint(4, 10, (1,), generator=g))
        wh = torch.rand(n, 2, generator=g) * torch.tensor([width / 3, height / 3]) + 24
        xy = torch.rand(n, 2, generator=g) * (torch.tensor([width, height]) - wh)
        boxes.append(torch.cat([xy, xy + wh], dim=1))
        labels.append(torch.randint(0, classes, (n,), generator=g))
    images = torch.rand(batch, 3, height, width, generator=g)
    return Scene(images, boxes, labels, classes)


def torchvision_ops() -> SimpleNamespace:
    import torchvision.ops as tvo
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    return SimpleNamespace(
        name="torchvision", AnchorGenerator=AnchorGenerator, BoxCoder=BoxCoder, box_iou=tvo.box_iou,
        sigmoid_focal_loss=tvo.sigmoid_focal_loss, generalized_box_iou_loss=tvo.generalized_box_iou_loss,
        batched_nms=tvo.batched_nms,
    )


def detops_ops() -> SimpleNamespace:
    return SimpleNamespace(
        name="detops", AnchorGenerator=detops.AnchorGenerator, BoxCoder=detops.BoxCoder, box_iou=detops.box_iou,
        sigmoid_focal_loss=detops.sigmoid_focal_loss, generalized_box_iou_loss=detops.generalized_box_iou_loss,
        batched_nms=detops.batched_nms,
    )


def simulated_head(anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, classes: int, coder, iou_fn, seed: int):
    """Logits and box regressions a half-trained head might output: confident
    and nearly right on anchors that overlap an object, noise elsewhere."""
    g = torch.Generator().manual_seed(seed)
    iou = iou_fn(gt_boxes, anchors)  # [G, A]
    best_iou, best_gt = iou.max(dim=0)
    foreground = best_iou >= 0.5
    logits = torch.randn(anchors.shape[0], classes, generator=g) - 4.0
    rows = torch.nonzero(foreground).squeeze(1)
    logits[rows, gt_labels[best_gt[rows]]] += 10.0 * best_iou[rows]
    targets = gt_boxes[best_gt]
    regression = coder.encode_single(targets, anchors) + 0.05 * torch.randn(anchors.shape[0], 4, generator=g)
    return logits, regression, foreground, targets, gt_labels[best_gt]


def run_pipeline(ops: SimpleNamespace, scene: Scene) -> dict:
    from torchvision.models.detection.image_list import ImageList

    anchor_gen = ops.AnchorGenerator(ANCHOR_SIZES, ASPECT_RATIOS)
    coder = ops.BoxCoder((1.0, 1.0, 1.0, 1.0))
    b, _, h, w = scene.images.shape
    features = [torch.zeros(b, 1, h // s, w // s) for s in STRIDES]
    anchors = anchor_gen(ImageList(scene.images, [(h, w)] * b), features)
    loss_cls, loss_box, detections = 0.0, 0.0, []
    for i in range(b):
        logits, regression, fg, targets, target_labels = simulated_head(
            anchors[i], scene.boxes[i], scene.labels[i], scene.classes, coder, ops.box_iou, seed=100 + i)
        logits.requires_grad_()
        regression.requires_grad_()
        onehot = torch.zeros_like(logits)
        onehot[fg, target_labels[fg]] = 1.0
        num_fg = max(int(fg.sum()), 1)
        loss_cls = loss_cls + ops.sigmoid_focal_loss(logits, onehot, reduction="sum") / num_fg
        decoded = coder.decode_single(regression[fg], anchors[i][fg])
        loss_box = loss_box + ops.generalized_box_iou_loss(decoded, targets[fg], reduction="mean")
        with torch.no_grad():
            scores = torch.sigmoid(logits).flatten()
            keep = torch.nonzero(scores > 0.05).squeeze(1)
            keep = keep[scores[keep].argsort(descending=True, stable=True)[:1000]]
            anchor_idx, labels = keep // scene.classes, keep % scene.classes
            boxes = coder.decode_single(regression[anchor_idx], anchors[i][anchor_idx])
            kept = ops.batched_nms(boxes, scores[keep], labels, 0.5)[:100]
            detections.append({"boxes": boxes[kept], "scores": scores[keep][kept], "labels": labels[kept]})
    loss = loss_cls + loss_box
    loss.backward()
    return {"loss_cls": float(loss_cls.detach()), "loss_box": float(loss_box.detach()), "detections": detections}


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def coco_dicts(scene: Scene, detections: list[dict]) -> tuple[dict, list[dict]]:
    def xywh(box: Tensor) -> list[float]:
        x1, y1, x2, y2 = box.tolist()
        return [x1, y1, x2 - x1, y2 - y1]

    h, w = scene.images.shape[-2:]
    gt = {"images": [{"id": i, "height": h, "width": w} for i in range(len(scene.boxes))],
          "categories": [{"id": c} for c in range(scene.classes)], "annotations": []}
    for i, (boxes, labels) in enumerate(zip(scene.boxes, scene.labels)):
        for box, label in zip(boxes, labels):
            bb = xywh(box)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": int(label),
                                      "bbox": bb, "area": bb[2] * bb[3], "iscrowd": 0})
    dt = [{"image_id": i, "category_id": int(label), "bbox": xywh(box), "score": float(score)}
          for i, det in enumerate(detections)
          for box, score, label in zip(det["boxes"], det["scores"], det["labels"])]
    return gt, dt


def pycocotools_stats(gt: dict, dt: list[dict]) -> list[float] | None:
    import contextlib
    import io

    if optional_import("pycocotools", "eval", "checking detops.eval against pycocotools") is None:
        return None
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dt) if dt else COCO()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats)


def draw(scene: Scene, detections: list[dict], path: Path) -> bool:
    """Draw the detections; False (after a note naming the extra) without matplotlib."""
    matplotlib = optional_import("matplotlib", "bench", "drawing the demo's detections")
    if matplotlib is None:
        return False
    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6.4))
    h, w = scene.images.shape[-2:]
    ax.imshow(torch.full((h, w, 3), 0.93).numpy())
    for box in scene.boxes[0].tolist():
        ax.add_patch(patches.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color="lime", lw=2))
    det = detections[0]
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
        if score < 0.3:
            continue
        ax.add_patch(patches.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color="red", lw=1))
        ax.text(box[0], box[1] - 2, f"{label}:{score:.2f}", color="red", fontsize=7)
    ax.set_title("ground truth (green) and detops detections with score >= 0.3 (red)", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detops.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out", help="folder for demo.png")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    import detops.eval

    scene = make_scene()
    ours, theirs = detops_ops(), torchvision_ops()
    results = {ops.name: run_pipeline(ops, scene) for ops in (ours, theirs)}
    a, b = results["detops"], results["torchvision"]
    same_losses = all(abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(b[k])) for k in ("loss_cls", "loss_box"))
    same_keep = all(
        da["boxes"].shape == db["boxes"].shape and torch.allclose(da["boxes"], db["boxes"], rtol=1e-5, atol=1e-4)
        and torch.equal(da["labels"], db["labels"])
        for da, db in zip(a["detections"], b["detections"])
    )
    print(f"losses   detops: cls {a['loss_cls']:.6f} box {a['loss_box']:.6f} | "
          f"torchvision: cls {b['loss_cls']:.6f} box {b['loss_box']:.6f} -> {'same' if same_losses else 'DIFFERENT'}")
    print(f"detections per image: {[len(d['scores']) for d in a['detections']]} -> "
          f"{'same as torchvision' if same_keep else 'DIFFERENT from torchvision'}")
    t_ours = median_time(lambda: run_pipeline(ours, scene), args.repeats)
    t_theirs = median_time(lambda: run_pipeline(theirs, scene), args.repeats)
    print(f"training step + inference (median of {args.repeats}): detops {t_ours * 1e3:.1f} ms, "
          f"torchvision {t_theirs * 1e3:.1f} ms ({t_theirs / t_ours:.2f}x)")

    gt, dt = coco_dicts(scene, a["detections"])
    stats = detops.eval.coco_stats(gt, dt)
    reference = pycocotools_stats(gt, dt)
    print("COCO stats (detops.eval): " + " ".join(f"{s:.3f}" for s in stats))
    if reference is not None:
        agree = max(abs(x - y) for x, y in zip(stats, reference)) <= 1e-6
        print("COCO stats (pycocotools): " + " ".join(f"{s:.3f}" for s in reference)
              + f" -> {'equal' if agree else 'DIFFERENT'}")
    else:
        agree = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if draw(scene, a["detections"], out / "demo.png"):
        print(f"wrote {out / 'demo.png'}")
    return 0 if (same_losses and same_keep and agree) else 1


if __name__ == "__main__":
    raise SystemExit(main())
