"""A small user script typed against detops' public API; CI runs
``mypy --strict`` on it against the installed wheel (scripts/test_wheel.sh),
so that every op a user calls has real type hints (detops ships py.typed).
Also runnable: ``python examples/typed_usage.py``."""

from __future__ import annotations

import torch
from torch import Tensor

import detops
import detops.eval
from detops.nn import BilinearUpsample


def random_boxes(n: int, size: float = 100.0) -> Tensor:
    """``n`` boxes ``(x1, y1, x2, y2)`` inside a ``size`` x ``size`` image."""
    xy = torch.rand(n, 2) * size
    wh = torch.rand(n, 2) * size / 4 + 1
    return torch.cat([xy, xy + wh], dim=1)


def detect(features: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor) -> dict[str, Tensor]:
    keep: Tensor = detops.batched_nms(boxes, scores, labels, iou_threshold=0.5)
    rois: list[Tensor] = [boxes[keep]]
    pooled: Tensor = detops.roi_align(features, rois, output_size=(7, 7), spatial_scale=0.25, sampling_ratio=2,
                                      aligned=True)
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep], "pooled": pooled}


def losses(pred: Tensor, target: Tensor, logits: Tensor, onehot: Tensor) -> Tensor:
    box_loss: Tensor = detops.generalized_box_iou_loss(pred, target, reduction="mean")
    cls_loss: Tensor = detops.sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0, reduction="sum")
    return box_loss + cls_loss


def main() -> None:
    boxes, target = random_boxes(32), random_boxes(32)
    scores, labels = torch.rand(32), torch.randint(0, 3, (32,))
    iou: Tensor = detops.box_iou(boxes, target)
    out = detect(torch.randn(1, 8, 32, 32), boxes, scores, labels)
    logits = torch.randn(32, 3)
    onehot = torch.nn.functional.one_hot(labels, 3).to(logits.dtype)
    loss = losses(boxes, target, logits, onehot)
    coder = detops.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    codes: Tensor = coder.encode_single(target, boxes)
    up = BilinearUpsample(8, 2)
    info: dict[str, object] = detops.build_info()
    version: str = detops.__version__
    print(f"detops {version}: iou {tuple(iou.shape)}, kept {out['boxes'].shape[0]}, loss {loss.item():.3f}, "
          f"codes {tuple(codes.shape)}, upsampled {tuple(up(torch.randn(1, 8, 4, 4)).shape)}, cuda {info['cuda']}")
    gt = {"images": [{"id": 1, "height": 100, "width": 100}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 20.0],
                           "area": 400.0, "iscrowd": 0}]}
    dt = [{"image_id": 1, "category_id": 1, "bbox": [11.0, 10.0, 20.0, 20.0], "score": 0.9}]
    stats: list[float] = detops.eval.coco_stats(gt, dt)
    print(f"AP {stats[0]:.3f}")


if __name__ == "__main__":
    main()
