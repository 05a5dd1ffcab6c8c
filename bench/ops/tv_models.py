"""torchvision's own detectors with and without ``detops.patch_torchvision()``:
Faster R-CNN, Mask R-CNN and RetinaNet (ResNet-50 FPN, random weights), eval
forward on a batch of 2 images of 512x512 (256x256 with --quick), the whole
forward and the part after the backbone (RPN, RoI heads or dense head,
anchors, box decoding, NMS, mask pasting).

Score thresholds are 0 so that, as with trained weights, detections reach the
box and mask heads (random weights score every class near 1/91, below
torchvision's default 0.05, which would leave the heads idle).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torchvision.models import detection as D

import detops
from detops.bench.harness import BenchCase


def _patched(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run():
        with detops.patch_torchvision():
            return fn()

    return run


def _after_backbone(model, images: list[torch.Tensor]) -> Callable[[], Any]:
    """The model's forward from its backbone's features on (torchvision's code, step for step)."""
    original_sizes = [tuple(img.shape[-2:]) for img in images]
    with torch.no_grad():
        image_list, _ = model.transform(images)
        features = model.backbone(image_list.tensors)

    if isinstance(model, D.RetinaNet):
        def run():
            with torch.no_grad():
                feats = list(features.values())
                head_outputs = model.head(feats)
                anchors = model.anchor_generator(image_list, feats)
                counts = [x.size(2) * x.size(3) for x in feats]
                hw = sum(counts)
                per_level = [c * (head_outputs["cls_logits"].size(1) // hw) for c in counts]
                split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
                split_anchors = [list(a.split(per_level)) for a in anchors]
                detections = model.postprocess_detections(split_outputs, split_anchors, image_list.image_sizes)
                return model.transform.postprocess(detections, image_list.image_sizes, original_sizes)
    else:
        def run():
            with torch.no_grad():
                proposals, _ = model.rpn(image_list, features)
                detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
                return model.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    return run


def _whole(model, images: list[torch.Tensor]) -> Callable[[], Any]:
    def run():
        with torch.no_grad():
            return model(images)

    return run


def cases(device: str, quick: bool) -> list[BenchCase]:
    side = 256 if quick else 512
    common = dict(weights=None, weights_backbone=None, min_size=side, max_size=side)
    builders = {
        "Faster R-CNN": lambda: D.fasterrcnn_resnet50_fpn(box_score_thresh=0.0, **common),
        "Mask R-CNN": lambda: D.maskrcnn_resnet50_fpn(box_score_thresh=0.0, **common),
        "RetinaNet": lambda: D.retinanet_resnet50_fpn(score_thresh=0.0, **common),
    }
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, side, side, generator=gen).to(device) for _ in range(2)]
    out: list[BenchCase] = []
    for name, build in builders.items():
        torch.manual_seed(0)
        model = build().eval().to(device)
        size = f"2x3x{side}x{side}, random weights"
        for part, make in (("whole forward", _whole), ("after backbone", _after_backbone)):
            fn = make(model, images)
            out.append(BenchCase(
                op="tv_models", name=f"{name} {part}", size=size, detops=_patched(fn), baseline=fn,
                baseline_name="torchvision unpatched", params={"model": name, "part": part, "side": side},
            ))
    return out
