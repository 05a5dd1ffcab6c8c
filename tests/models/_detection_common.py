"""Shared builders and comparisons for the detection model tests: pairs of a
torchvision model and a detops model with the same (random, seeded) weights."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
import torchvision.ops.boxes as tv_boxes
from torchvision.models import detection as tvd

import detops.models.detection as dd

SMALL = dict(min_size=128, max_size=192)
# Random weights score every class near 1/91 (R-CNN) or the prior 0.01 (RetinaNet):
# a zero threshold keeps detections to compare.
THRESH = {"retinanet": dict(score_thresh=0.0, detections_per_img=100),
          "fasterrcnn": dict(box_score_thresh=0.0, box_detections_per_img=50),
          "maskrcnn": dict(box_score_thresh=0.0, box_detections_per_img=30)}
BUILDERS = {f"{name}{v}": (getattr(tvd, f"{name}_resnet50_fpn{v}"), getattr(dd, f"{name}_resnet50_fpn{v}"))
            for name in THRESH for v in ("", "_v2")}


@contextlib.contextmanager
def torchvision_ties_by_index():
    """torchvision's batched NMS, on CPU past 1000 boxes, runs NMS per class
    and orders the kept boxes with ``torch.sort(descending=True)``, which is
    not stable where torch sorts with AVX512 (x86-simd-sort): boxes with equal
    scores (an RPN's anchors over an image's zero padding) then come out in an
    order that depends on the CPU, and a sampler drawing positions from that
    list draws different proposals. detops orders equal scores by index.
    Within this block torchvision's path does too: the same sampling in both
    models."""

    def batched_nms_ties_by_index(boxes, scores, idxs, iou_threshold):
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for class_id in torch.unique(idxs):
            curr = torch.where(idxs == class_id)[0]
            keep_mask[curr[tv_boxes.nms(boxes[curr], scores[curr], iou_threshold)]] = True
        keep = torch.where(keep_mask)[0]
        return keep[scores[keep].sort(descending=True, stable=True)[1]]

    original = tv_boxes._batched_nms_vanilla
    tv_boxes._batched_nms_vanilla = batched_nms_ties_by_index
    try:
        yield
    finally:
        tv_boxes._batched_nms_vanilla = original


def torchvision_resnet18(name: str, **kwargs) -> torch.nn.Module:
    """torchvision's model as its resnet50 builder makes it (random init), on a
    ResNet-18 FPN backbone to keep the tests fast."""
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    if name == "retinanet":
        body = _resnet_fpn_extractor(resnet18(), 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
        return tvd.RetinaNet(body, 91, **kwargs)
    cls = tvd.FasterRCNN if name == "fasterrcnn" else tvd.MaskRCNN
    return cls(_resnet_fpn_extractor(resnet18(), 5), 91, **kwargs)


@functools.lru_cache(maxsize=None)
def model_pair(name: str):
    """(torchvision model, detops model) in eval mode, detops loaded from torchvision's
    state_dict. v1: ResNet-18 backbones; v2: torchvision's own builders (ResNet-50)."""
    tv_builder, dd_builder = BUILDERS[name]
    base = name.replace("_v2", "")
    extra = THRESH[base]
    torch.manual_seed(0)
    if name.endswith("_v2"):
        tv = tv_builder(weights=None, weights_backbone=None, **SMALL, **extra).eval()
        ours = dd_builder(weights=None, weights_backbone=None, **SMALL, **extra).eval()
    else:
        tv = torchvision_resnet18(base, **SMALL, **extra).eval()
        ours = dd_builder(weights=None, weights_backbone=None, backbone_name="resnet18", **SMALL, **extra).eval()
    result = ours.load_state_dict(tv.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    return tv, ours


def real_images() -> list[torch.Tensor]:
    skimage_data = pytest.importorskip("skimage.data")
    return [torch.from_numpy(img).permute(2, 0, 1).float() / 255 for img in (skimage_data.astronaut(), skimage_data.coffee())]


def assert_same_detections(ref: dict, out: dict) -> None:
    """torchvision's detections exactly: boxes, scores and labels torch.equal
    (roi_align, the box ops and NMS are bit-equal on CPU). Masks agree to 1e-5
    (they read torch.equal on the Xeon CI machine; the pasting is bit-equal):
    the mask head's ConvTranspose2d is detops' own kernel, whose GEMM may sum
    the input channels in another order than torch's deconvolution."""
    assert ref.keys() == out.keys()
    for key in ref:
        assert out[key].shape == ref[key].shape, key
        if key == "masks":
            torch.testing.assert_close(out[key], ref[key], rtol=0, atol=1e-5)
        else:
            assert torch.equal(out[key], ref[key]), key
