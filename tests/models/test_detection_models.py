"""detops.models.detection against torchvision's models with the same weights:
eval detections, train losses, checkpoints (current and legacy keys), builders."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import detection as tvd

import detops.models.detection as dd

from ._detection_common import (
    BUILDERS,
    SMALL,
    assert_same_detections,
    model_pair,
    real_images,
    torchvision_resnet18,
    torchvision_ties_by_index,
)


def _random_images(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 150, 200, generator=g), torch.rand(3, 190, 130, generator=g)]


@pytest.mark.parametrize("name", ["retinanet", "fasterrcnn", "maskrcnn"])
def test_same_detections_as_torchvision(name):
    tv, ours = model_pair(name)
    for images in (_random_images(1), real_images()):
        with torch.no_grad():
            ref, out = tv(images), ours(images)
        assert len(ref) == len(out) == len(images)
        assert sum(len(r["boxes"]) for r in ref) > 0
        for r, o in zip(ref, out):
            assert_same_detections(r, o)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["retinanet_v2", "fasterrcnn_v2", "maskrcnn_v2"])
def test_v2_same_detections_as_torchvision(name):
    tv, ours = model_pair(name)
    images = [torch.rand(3, 100, 90, generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        ref, out = tv(images), ours(images)
    assert_same_detections(ref[0], out[0])


def _targets(images, seed: int, masks: bool):
    g = torch.Generator().manual_seed(seed)
    targets = []
    for img in images:
        h, w = img.shape[1:]
        xy = torch.rand(3, 2, generator=g) * torch.tensor([w, h]) * 0.6
        wh = torch.rand(3, 2, generator=g) * 40 + 10
        t = {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 91, (3,), generator=g)}
        if masks:
            t["masks"] = (torch.rand(3, h, w, generator=g) > 0.5).to(torch.uint8)
        targets.append(t)
    return targets


@pytest.mark.parametrize("name", ["retinanet", "fasterrcnn", "maskrcnn"])
def test_train_losses_equal_torchvision(name):
    # The samplers draw from torch's global generator in the same order in both
    # models (the same sampler code runs on the same proposals), so seeding it
    # identically before each forward, with equal scores in the same order
    # (torchvision_ties_by_index), makes the sampling equal.
    torch.manual_seed(0)
    tv = torchvision_resnet18(name, **SMALL).train()
    ours = BUILDERS[name][1](weights=None, weights_backbone=None, backbone_name="resnet18", **SMALL).train()
    ours.load_state_dict(tv.state_dict())
    images = _random_images(3)
    targets = _targets(images, 4, masks=name == "maskrcnn")
    torch.manual_seed(1)
    with torchvision_ties_by_index():
        ref = tv(images, [dict(t) for t in targets])
    torch.manual_seed(1)
    out = ours(images, [dict(t) for t in targets])
    assert ref.keys() == out.keys()
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=1e-5, msg=k)
    sum(out.values()).backward()
    assert all(p.grad is not None for p in ours.parameters() if p.requires_grad)


def test_checkpoint_file_and_legacy_keys_load(tmp_path):
    tv, ours = model_pair("retinanet")
    state = tv.state_dict()
    # the key names of torchvision's v1 checkpoints (heads before _version 2)
    legacy = {}
    for key, value in state.items():
        for head in ("head.classification_head.", "head.regression_head."):
            if key.startswith(head + "conv.") and key.count(".") == 5:
                i, _, kind = key[len(head) + 5:].split(".")
                key = f"{head}conv.{2 * int(i)}.{kind}"
        legacy[key] = value
    assert "head.regression_head.conv.2.weight" in legacy
    path = tmp_path / "retinanet_v1.pth"
    torch.save(legacy, path)  # a plain dict: no version metadata, as the old files
    loaded = dd.retinanet_resnet50_fpn(weights=str(path), backbone_name="resnet18", **SMALL,
                                       score_thresh=0.0).eval()
    # torchvision's builders set the COCO_V1 checkpoints' FrozenBatchNorm eps to 0; so does a path
    eps = {m.eps for m in loaded.backbone.modules() if hasattr(m, "running_var")}
    assert eps == {0.0}
    loaded_state = loaded.state_dict()
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):  # FrozenBatchNorm2d has no counter
            assert torch.equal(loaded_state[key], value), key
    images = _random_images(5)[:1]
    with torch.no_grad():
        out = loaded(images)[0]
    assert len(out["boxes"]) > 0
    # the legacy RPN head keys of torchvision's R-CNN checkpoints
    tv_rcnn, _ = model_pair("fasterrcnn")
    state = {k.replace("rpn.head.conv.0.0.", "rpn.head.conv."): v for k, v in tv_rcnn.state_dict().items()}
    assert "rpn.head.conv.weight" in state
    path = tmp_path / "fasterrcnn_v1.pth"
    torch.save({"model": state}, path)  # a training checkpoint holding the model under "model"
    fresh = dd.fasterrcnn_resnet50_fpn(weights=path, backbone_name="resnet18", **SMALL)
    assert torch.equal(fresh.rpn.head.conv[0][0].weight, tv_rcnn.rpn.head.conv[0][0].weight)


@pytest.mark.parametrize("backbone_name", ["resnet18", "mobilenet_v3_large"])
@pytest.mark.parametrize("builder", [dd.retinanet_resnet50_fpn, dd.fasterrcnn_resnet50_fpn, dd.maskrcnn_resnet50_fpn])
def test_small_backbones_train_step(builder, backbone_name):
    torch.manual_seed(0)
    model = builder(weights=None, weights_backbone=None, backbone_name=backbone_name, num_classes=5,
                    min_size=128, max_size=160, trainable_backbone_layers=5)
    images = _random_images(6)
    targets = _targets(images, 7, masks=builder is dd.maskrcnn_resnet50_fpn)
    for t in targets:
        t["labels"] = t["labels"] % 4 + 1
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and all(o["boxes"].shape[-1] == 4 for o in out)


def test_bad_arguments():
    _, ours = model_pair("retinanet")
    with pytest.raises(ValueError, match="max_detections"):
        ours.export_mode(0)
    with pytest.raises(ValueError, match="backbone_name"):
        dd.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, backbone_name="vgg16")
    with pytest.raises(ValueError, match="num_classes"):
        dd.fasterrcnn_resnet50_fpn(weights=tvd.FasterRCNN_ResNet50_FPN_Weights.COCO_V1, num_classes=3)


def test_detopsified_parts():
    _, ours = model_pair("maskrcnn")
    import detops
    assert isinstance(ours.rpn.anchor_generator, detops.AnchorGenerator)
    assert isinstance(ours.roi_heads.box_roi_pool, detops.MultiScaleRoIAlign)
    assert isinstance(ours.roi_heads.mask_roi_pool, detops.MultiScaleRoIAlign)
    assert isinstance(ours.roi_heads.mask_predictor.conv5_mask, detops.nn.ConvTranspose2d)
