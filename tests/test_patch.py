"""detops.patch_torchvision(): torchvision's detectors, functions imported by
name, models built before the patch and torch.ops.torchvision.* callers run on
detops with torchvision's results, and the undo restores torchvision exactly.

The detectors are torchvision's model classes with a tiny backbone and heads
(random weights, fixed seed), so that they run in about a second on CPU."""

from __future__ import annotations

import inspect
import sys

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import detection as D
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import batched_nms  # imported by name before any patch, on purpose
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

import detops
from detops import patch as patch_module

MODELS = ["fasterrcnn", "maskrcnn", "keypointrcnn", "retinanet", "fcos"]
ROI_MODELS = {"fasterrcnn", "maskrcnn", "keypointrcnn"}  # the ones that pool with roi_align


def _tiny_backbone(extra=None) -> BackboneWithFPN:
    levels = range(4) if extra is None else range(1, 4)  # 5 FPN maps either way
    chans = [3, 16, 24, 32, 48]
    body = nn.Sequential()
    for i in range(4):
        conv = nn.Conv2d(chans[i], chans[i + 1], 3, stride=2 if i else 4, padding=1)
        body.add_module(f"layer{i}", nn.Sequential(conv, nn.ReLU()))
    return BackboneWithFPN(body, {f"layer{i}": str(i) for i in levels}, [chans[i + 1] for i in levels], 32,
                           extra_blocks=extra)


def build_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    size = dict(min_size=128, max_size=160)
    rcnn = dict(box_score_thresh=0.0, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=150,
                box_detections_per_img=40, **size)
    if name == "fasterrcnn":
        model = D.FasterRCNN(_tiny_backbone(), num_classes=5, **rcnn)
    elif name == "maskrcnn":
        model = D.MaskRCNN(_tiny_backbone(), box_predictor=FastRCNNPredictor(1024, 5),
                           mask_head=MaskRCNNHeads(32, (32, 32), 1), mask_predictor=MaskRCNNPredictor(32, 32, 5), **rcnn)
    elif name == "keypointrcnn":
        model = D.KeypointRCNN(_tiny_backbone(), box_predictor=FastRCNNPredictor(1024, 2),
                               keypoint_head=KeypointRCNNHeads(32, (32, 32)),
                               keypoint_predictor=KeypointRCNNPredictor(32, 5), **rcnn)
    elif name == "retinanet":
        model = D.RetinaNet(_tiny_backbone(LastLevelP6P7(32, 32)), num_classes=5, score_thresh=0.005,
                            detections_per_img=100, **size)
    else:
        model = D.FCOS(_tiny_backbone(LastLevelP6P7(32, 32)), num_classes=5, score_thresh=0.005, **size)
    return model.eval()


def _images() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.rand(3, 128, 160, generator=gen), torch.rand(3, 112, 160, generator=gen)]


def _detops_ops(prof) -> set[str]:
    return {e.name for e in prof.events() if e.name.startswith("detops::")}


@pytest.fixture(autouse=True)
def _always_unpatched():
    detops.unpatch_torchvision()
    yield
    detops.unpatch_torchvision()


def _assert_same_detections(ref: list[dict], out: list[dict]) -> None:
    assert len(ref) == len(out)
    for r, o in zip(ref, out):
        assert r.keys() == o.keys()
        for key in r:
            assert torch.equal(r[key], o[key]), key


def _run_models(name: str, built_before_patch: bool) -> None:
    images = _images()
    model = build_model(name)
    with torch.no_grad():
        ref = model(images)
        assert any(len(r["boxes"]) for r in ref)  # a comparison of empty outputs would prove nothing
        if not built_before_patch:
            del model
        with detops.patch_torchvision():
            if not built_before_patch:
                model = build_model(name)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                out = model(images)
    used = _detops_ops(prof)
    assert "detops::batched_nms" in used
    assert "detops::grid_anchors" in used
    if name != "fcos":  # FCOS decodes with BoxLinearCoder, which detops does not replace
        assert "detops::box_decode" in used
    if name in ROI_MODELS:
        assert "detops::multi_scale_roi_align" in used
    if name == "maskrcnn":
        assert "detops::paste_masks" in used
    _assert_same_detections(ref, out)


@pytest.mark.parametrize("name", MODELS)
def test_model_equal_under_patch(name):
    _run_models(name, built_before_patch=False)


@pytest.mark.parametrize("name", ["maskrcnn", "retinanet"])
def test_model_built_before_patch(name):
    _run_models(name, built_before_patch=True)


def test_function_imported_by_name_before_patch():
    gen = torch.Generator().manual_seed(3)
    boxes = torch.rand(3000, 4, generator=gen) * 100  # > 4000 numbers: torchvision's per-class path
    boxes[:, 2:] += boxes[:, :2]
    scores = torch.randint(0, 8, (3000,), generator=gen).float() / 8  # many ties
    idxs = torch.randint(0, 4, (3000,), generator=gen)
    for n in (3000, 300):  # both of torchvision's paths and their orders of equal scores
        ref = batched_nms(boxes[:n], scores[:n], idxs[:n], 0.5)
        with detops.patch_torchvision():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                out = batched_nms(boxes[:n], scores[:n], idxs[:n], 0.5)
        assert "detops::batched_nms" in _detops_ops(prof)
        assert torch.equal(ref, out)


def test_bound_attribute_of_model_built_before_patch():
    model = build_model("fasterrcnn")
    similarity = model.rpn.box_similarity  # torchvision's box_iou, bound when the model was built
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0], [1.0, 2.0, 3.0, 4.0]])
    ref = similarity(boxes, boxes)
    with detops.patch_torchvision():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = model.roi_heads.box_similarity(boxes, boxes)
    assert _detops_ops(prof)
    assert torch.equal(ref, out)


def _roi_inputs(dtype=torch.float32):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 16, 16, generator=gen, dtype=dtype)
    boxes = torch.rand(12, 4, generator=gen, dtype=dtype) * 12
    boxes[:, 2:] += boxes[:, :2]
    ids = torch.randint(0, 2, (12, 1), generator=gen).to(dtype)
    return x, torch.cat([ids, boxes], dim=1)


def test_registered_operators_reach_detops():
    x, rois = _roi_inputs()
    b, s = rois[:, 1:].contiguous(), torch.rand(12, generator=torch.Generator().manual_seed(0))
    ref_nms = torch.ops.torchvision.nms(b, s, 0.3)
    ref_pool, ref_argmax = torch.ops.torchvision.roi_pool(x, rois, 0.5, 3, 3)
    xg = x.clone().requires_grad_()
    torchvision.ops.roi_pool(xg, rois, 3, 0.5).sum().backward()
    ref_pool_grad = xg.grad
    ref_align = torch.ops.torchvision.roi_align(x, rois, 0.5, 3, 3, 2, True)
    with detops.patch_torchvision():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out_nms = torch.ops.torchvision.nms(b, s, 0.3)
            out_pool, out_argmax = torch.ops.torchvision.roi_pool(x, rois, 0.5, 3, 3)
            xg = x.clone().requires_grad_()
            torchvision.ops.roi_pool(xg, rois, 3, 0.5).sum().backward()
            out_align = torchvision.ops.roi_align(x, rois, 3, 0.5, 2, True)
            xa = x.clone().requires_grad_()
            torchvision.ops.roi_align(xa, rois, 3, 0.5, 2, True).sum().backward()
    used = _detops_ops(prof)
    assert {"detops::nms", "detops::roi_pool", "detops::roi_pool_backward", "detops::roi_align",
            "detops::roi_align_backward"} <= used
    assert torch.equal(ref_nms, out_nms)
    assert torch.equal(ref_pool, out_pool) and torch.equal(ref_argmax, out_argmax)
    assert out_argmax.dtype == ref_argmax.dtype
    assert torch.equal(ref_pool_grad, xg.grad)
    torch.testing.assert_close(out_align, ref_align, rtol=0, atol=1e-6)
    assert xa.grad is not None and xa.grad.shape == x.shape


def test_autocast_keeps_torchvision_dtypes():
    x, rois = _roi_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = torchvision.ops.roi_align(x.bfloat16(), rois, 3, 0.5)
        ref_keep = torchvision.ops.nms(rois[:, 1:].bfloat16(), rois[:, 0].bfloat16(), 0.5)
        with detops.patch_torchvision():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                out = torchvision.ops.roi_align(x.bfloat16(), rois, 3, 0.5)
                keep = torchvision.ops.nms(rois[:, 1:].bfloat16(), rois[:, 0].bfloat16(), 0.5)
    assert {"detops::roi_align", "detops::nms"} <= _detops_ops(prof)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-2)
    assert torch.equal(keep, ref_keep)


@pytest.mark.parametrize("op", ["ps_roi_align", "ps_roi_pool"])
def test_position_sensitive_ops_reach_detops(op):
    """Forward and gradient through torchvision's Python function and its
    operator run detops' kernels with torch.equal results (the boxes stay off
    the map's last row and column, where torchvision's ps_roi_pool backward is
    not its forward's gradient: docs/reference/torchvision_patch.md)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 18, 16, 16, generator=gen)
    _, rois = _roi_inputs()
    fn = getattr(torchvision.ops, op)
    args = (3, 0.5, 2) if op == "ps_roi_align" else (3, 0.5)
    xr = x.clone().requires_grad_()
    ref = fn(xr, rois, *args)
    ref.sum().backward()
    ref_op = getattr(torch.ops.torchvision, op)(x, rois, 0.5, 3, 3, *args[2:])
    with detops.patch_torchvision():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            xo = x.clone().requires_grad_()
            out = fn(xo, rois, *args)
            out.sum().backward()
            out_op = getattr(torch.ops.torchvision, op)(x, rois, 0.5, 3, 3, *args[2:])
    assert {f"detops::{op}", f"detops::{op}_backward"} <= _detops_ops(prof)
    assert torch.equal(out, ref)
    assert torch.equal(xo.grad, xr.grad)
    assert torch.equal(out_op[0], ref_op[0]) and torch.equal(out_op[1], ref_op[1])
    assert out_op[1].dtype == ref_op[1].dtype == torch.int32


def _box_pairs():
    gen = torch.Generator().manual_seed(7)
    a = torch.rand(30, 4, generator=gen) * 50
    a[:, 2:] += a[:, :2]
    b = torch.rand(20, 4, generator=gen) * 50
    b[:, 2:] += b[:, :2]
    return a, b


def test_python_functions_equal_under_patch():
    tvo = torchvision.ops
    a, b = _box_pairs()
    logits, targets = torch.randn(40, 6), (torch.rand(40, 6) > 0.7).float()
    masks = torch.rand(5, 20, 30) > 0.9
    calls = {
        "box_iou": lambda: tvo.box_iou(a, b),
        "box_iou xywh": lambda: tvo.box_iou(a, b, fmt="xywh"),
        "generalized_box_iou": lambda: tvo.generalized_box_iou(a, b),
        "box_area": lambda: tvo.box_area(a),
        "_box_inter_union": lambda: torch.stack(tvo.boxes._box_inter_union(a, b)),
        "box_convert": lambda: tvo.box_convert(a, "xyxy", "cxcywh"),
        "box_convert rotated": lambda: tvo.box_convert(torch.cat([a, a[:, :1]], 1), "xywhr", "cxcywhr"),
        "clip_boxes_to_image": lambda: tvo.clip_boxes_to_image(a - 10, (40, 30)),
        "remove_small_boxes": lambda: tvo.remove_small_boxes(a, 20.0),
        "masks_to_boxes": lambda: tvo.masks_to_boxes(masks),
        "generalized_box_iou_loss": lambda: tvo.generalized_box_iou_loss(a[:20], b, reduction="sum"),
        "sigmoid_focal_loss": lambda: tvo.sigmoid_focal_loss(logits, targets, reduction="none"),
    }
    refs = {k: f() for k, f in calls.items()}
    with detops.patch_torchvision():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            outs = {k: f() for k, f in calls.items()}
    assert {"detops::box_iou_matrix", "detops::box_iou_loss", "detops::sigmoid_focal_loss"} <= _detops_ops(prof)
    for k in calls:
        if k in ("generalized_box_iou_loss", "sigmoid_focal_loss"):
            torch.testing.assert_close(outs[k], refs[k], rtol=1e-6, atol=1e-6, msg=k)
        else:
            assert torch.equal(outs[k], refs[k]), k


def _torchvision_modules():
    return [m for name, m in list(sys.modules.items()) if name.split(".")[0] == "torchvision" and m is not None]


def test_every_torchvision_binding_is_routed():
    """No torchvision module holds a copy of a routed function that the patch misses:
    every global of a torchvision module named like a routed function is that function."""
    import torchvision.models.detection  # noqa: F401  (load every detection module)

    with detops.patch_torchvision():
        routed = {fn: route for fn, route in patch_module._python_routes()}
        names = {fn.__name__ for fn in routed if "." not in fn.__qualname__}
        found = 0
        for module in _torchvision_modules():
            for name, value in vars(module).items():
                if name in names and callable(value) and getattr(value, "__module__", "").startswith("torchvision"):
                    assert value in routed, f"{module.__name__}.{name} is not routed"
                    assert value.__code__ is not patch_module._State.originals[value].__code__
                    found += 1
        assert found >= 20  # ops, ops.boxes, the loss modules and the detection modules


def test_signature_and_source_are_torchvision_while_patched():
    fns = [fn for fn, _ in patch_module._python_routes()]
    before = [(inspect.signature(fn), inspect.getsource(fn)) for fn in fns]
    with detops.patch_torchvision():
        during = [(inspect.signature(fn), inspect.getsource(fn)) for fn in fns]
    assert before == during


def test_undo_restores_torchvision_exactly():
    fns = [fn for fn, _ in patch_module._python_routes()]
    codes = [fn.__code__ for fn in fns]
    ops = ["nms", "roi_align", "_roi_align_backward", "roi_pool", "_roi_pool_backward", "ps_roi_align", "ps_roi_pool"]
    dumps = [torch._C._dispatch_dump(f"torchvision::{op}") for op in ops]
    globals_before = [set(vars(m)) for m in _torchvision_modules()]
    a, b = _box_pairs()

    with detops.patch_torchvision():
        assert patch_module.is_patched()
        assert all(fn.__code__ is not code for fn, code in zip(fns, codes))
        assert torch._C._dispatch_dump("torchvision::nms") != dumps[0]
    assert not patch_module.is_patched()
    assert all(fn.__code__ is code for fn, code in zip(fns, codes))
    assert [torch._C._dispatch_dump(f"torchvision::{op}") for op in ops] == dumps
    assert [set(vars(m)) for m in _torchvision_modules()] == globals_before
    assert torchvision.ops.batched_nms is batched_nms
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torchvision.ops.box_iou(a, b)
        torchvision.ops.nms(a, a[:, 0], 0.5)
        batched_nms(a, a[:, 0], torch.zeros(30, dtype=torch.long), 0.5)
    assert not _detops_ops(prof)


def test_patch_twice_and_undo_without_patch_are_harmless():
    detops.unpatch_torchvision()
    detops.unpatch_torchvision()
    a, _ = _box_pairs()
    ref = batched_nms(a, a[:, 0], torch.zeros(30, dtype=torch.long), 0.5)
    detops.patch_torchvision()
    with detops.patch_torchvision():  # nested: leaves the outer patch on
        pass
    assert patch_module.is_patched()
    detops.patch_torchvision()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = batched_nms(a, a[:, 0], torch.zeros(30, dtype=torch.long), 0.5)
    assert "detops::batched_nms" in _detops_ops(prof)
    assert torch.equal(ref, out)
    detops.unpatch_torchvision()
    assert not patch_module.is_patched()
    detops.unpatch_torchvision()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        batched_nms(a, a[:, 0], torch.zeros(30, dtype=torch.long), 0.5)
    assert not _detops_ops(prof)


def test_context_manager_undoes_on_error():
    with pytest.raises(RuntimeError, match="inside"):
        with detops.patch_torchvision():
            raise RuntimeError("inside")
    assert not patch_module.is_patched()


def test_paste_masks_routed_and_falls_back_where_detops_does_not_serve():
    from torchvision.models.detection import roi_heads, transform

    g = torch.Generator().manual_seed(3)
    masks = torch.rand(6, 1, 28, 28, generator=g)
    xy = torch.rand(6, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + torch.rand(6, 2, generator=g) * 60 + 4], 1)
    expected = roi_heads.paste_masks_in_image(masks, boxes, (120, 110))
    grad_masks = masks.clone().requires_grad_()
    expected_grad = torch.autograd.grad(roi_heads.paste_masks_in_image(grad_masks, boxes, (120, 110)).sum(), grad_masks)
    with detops.patch_torchvision():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            # transform.py binds the function by name, as Mask R-CNN's postprocessing calls it
            out = transform.paste_masks_in_image(masks, boxes, (120, 110))
        assert "detops::paste_masks" in _detops_ops(prof)
        assert torch.equal(out, expected)
        # a gradient is torchvision's own code, with its gradient
        grad = torch.autograd.grad(roi_heads.paste_masks_in_image(grad_masks, boxes, (120, 110)).sum(), grad_masks)
        assert torch.equal(grad[0], expected_grad[0])
