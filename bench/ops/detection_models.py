"""detops.models.detection against torchvision's models with the same (random,
seeded) weights: the whole eval forward, the stages after the backbone (RPN /
dense head, RoI heads, postprocessing), and a training step (forward + backward).

Score thresholds are 0 so that random weights still give full detection lists
(100 per image, 300 for RetinaNet), as trained models do on real images.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torchvision.models import detection as tvd

import detops.models.detection as dd
from detops.bench.harness import BenchCase
from detops.models.detection import _rcnn

MODELS = {
    "retinanet": (tvd.retinanet_resnet50_fpn, dd.retinanet_resnet50_fpn, dict(score_thresh=0.0)),
    "fasterrcnn": (tvd.fasterrcnn_resnet50_fpn, dd.fasterrcnn_resnet50_fpn, dict(box_score_thresh=0.0)),
    "maskrcnn": (tvd.maskrcnn_resnet50_fpn, dd.maskrcnn_resnet50_fpn, dict(box_score_thresh=0.0)),
}


def _pair(name: str, size: int, device: str):
    tv_builder, dd_builder, extra = MODELS[name]
    kw = dict(weights=None, weights_backbone=None, min_size=size, max_size=size, **extra)
    torch.manual_seed(0)
    tv = tv_builder(**kw).to(device)
    ours = dd_builder(**kw).to(device)
    ours.load_state_dict(tv.state_dict())
    return tv, ours


def _after_backbone(name: str, tv, ours, images):
    """Callables for the work after the backbone, on features computed once."""
    with torch.no_grad():
        image_list, _ = tv.transform(images)
        features = tv.backbone(image_list.tensors)
    original = [tuple(img.shape[-2:]) for img in images]

    if name == "retinanet":
        feats = list(features.values())

        def tv_after():
            head_outputs = tv.head(feats)
            anchors = tv.anchor_generator(image_list, feats)
            per_level = [x.size(2) * x.size(3) for x in feats]
            a = head_outputs["cls_logits"].size(1) // sum(per_level)
            split = [n * a for n in per_level]
            split_outputs = {k: list(v.split(split, dim=1)) for k, v in head_outputs.items()}
            split_anchors = [list(x.split(split)) for x in anchors]
            det = tv.postprocess_detections(split_outputs, split_anchors, image_list.image_sizes)
            return tv.transform.postprocess(det, image_list.image_sizes, original)

        def ours_after():
            il, clip, new, orig, orig_sizes = _rcnn.prepare_inputs(ours, images)
            head_outputs = ours.head(feats)
            anchors = ours.anchor_generator(image_list, [_rcnn.grid_probe(f) for f in feats])
            hw = [f.shape[2] * f.shape[3] for f in feats]
            a = head_outputs["cls_logits"].shape[1] // sum(hw)
            det = ours.detect_padded(head_outputs, anchors[0], [n * a for n in hw], clip, ours.detections_per_img)
            return _rcnn.finish(ours, det, new, orig, orig_sizes)
    else:
        def tv_after():
            proposals, _ = tv.rpn(image_list, features)
            det, _ = tv.roi_heads(features, proposals, image_list.image_sizes)
            return tv.transform.postprocess(det, image_list.image_sizes, original)

        def ours_after():
            il, clip, new, orig, orig_sizes = _rcnn.prepare_inputs(ours, images)
            proposals, num, _ = ours.rpn.forward_padded(image_list, OrderedDict(features), clip)
            det = ours.roi_heads.detect_padded(features, proposals, num, image_list.image_sizes, clip, False)
            return _rcnn.finish(ours, det, new, orig, orig_sizes)

    # prepare_inputs re-runs the transform; time it on the torchvision side too
    def tv_after_with_transform():
        tv.transform(images)
        return tv_after()

    return tv_after_with_transform, ours_after


def _targets(images, masks: bool, device: str):
    g = torch.Generator().manual_seed(0)
    out = []
    for img in images:
        h, w = img.shape[-2:]
        xy = torch.rand(8, 2, generator=g) * torch.tensor([w, h]) * 0.7
        wh = torch.rand(8, 2, generator=g) * (min(h, w) * 0.25) + 8
        t = {"boxes": torch.cat([xy, xy + wh], 1).to(device), "labels": torch.randint(1, 91, (8,), generator=g).to(device)}
        if masks:
            t["masks"] = (torch.rand(8, h, w, generator=g) > 0.5).to(torch.uint8).to(device)
        out.append(t)
    return out


def _train_step(model, images, targets):
    def step():
        model.zero_grad(set_to_none=True)
        losses = model(images, [dict(t) for t in targets])
        sum(losses.values()).backward()
    return step


def cases(device: str, quick: bool) -> list[BenchCase]:
    size = 256 if quick else 512
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g).to(device) for _ in range(2)]
    result = []
    for name in MODELS:
        tv, ours = _pair(name, size, device)
        tv.eval()
        ours.eval()
        label = f"2x3x{size}x{size}"

        def forward(model):
            def run():
                with torch.no_grad():
                    return model(images)
            return run

        tv_after, ours_after = _after_backbone(name, tv, ours, images)

        def no_grad(fn):
            def run():
                with torch.no_grad():
                    return fn()
            return run

        result.append(BenchCase(op="detection_models", name=f"{name} eval forward", size=label,
                                detops=forward(ours), baseline=forward(tv)))
        result.append(BenchCase(op="detection_models", name=f"{name} after backbone", size=label,
                                detops=no_grad(ours_after), baseline=no_grad(tv_after)))
        tv_t, ours_t = _pair(name, size, device)
        tv_t.train()
        ours_t.train()
        targets = _targets(images, name == "maskrcnn", device)
        result.append(BenchCase(op="detection_models", name=f"{name} train step", size=label,
                                detops=_train_step(ours_t, images, targets), baseline=_train_step(tv_t, images, targets)))
    return result
