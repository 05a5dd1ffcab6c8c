"""Classification + localisation: shapes, loss falls, IoU evaluation, the fixed-N variant."""

from __future__ import annotations

import torch
import torchvision

from detops.models.localization import Localizer, localization_iou, localization_loss, localizer
from tests.helpers import assert_close
from tests.models._train import losses_over_steps


def test_torchvision_backbones_shapes():
    x = torch.randn(2, 3, 32, 32)
    logits, boxes = localizer("resnet18", num_classes=5).eval()(x)
    assert logits.shape == (2, 5) and boxes.shape == (2, 4)
    assert ((boxes >= 0) & (boxes <= 1)).all()
    # A backbone whose classifier is a Sequential (classifier[-1] is replaced).
    logits, boxes = localizer("mobilenet_v3_small", num_classes=5, num_objects=3).eval()(x)
    assert logits.shape == (2, 3, 5) and boxes.shape == (2, 3, 4)


def test_iou_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, 4, generator=g) * 0.5
    b = torch.rand(6, 4, generator=g) * 0.5
    ref = torchvision.ops.box_iou(torchvision.ops.box_convert(a, "xywh", "xyxy"),
                                  torchvision.ops.box_convert(b, "xywh", "xyxy")).diagonal()
    assert_close(localization_iou(a, b), ref)
    assert_close(localization_iou(a.view(2, 3, 4), b.view(2, 3, 4)), ref.view(2, 3))


def _tiny(num_objects=None):
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
    return Localizer(backbone, 128, num_classes=3, num_objects=num_objects, hidden=32)


def test_loss_falls_and_iou_rises():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 32, 32, generator=g)
    labels = torch.randint(0, 3, (8,), generator=g)
    boxes = torch.rand(8, 4, generator=g) * 0.5
    model = _tiny()

    def loss():
        return localization_loss(*model(x), labels, boxes)["loss"]

    iou_before = localization_iou(model(x)[1], boxes).mean()
    history = losses_over_steps(model, loss, steps=15, lr=1e-2)
    assert history[-1] < 0.7 * history[0]
    assert localization_iou(model(x)[1], boxes).mean() > iou_before


def test_fixed_n_objects_loss_falls():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 32, 32, generator=g)
    labels = torch.randint(0, 3, (4, 2), generator=g)
    boxes = torch.rand(4, 2, 4, generator=g) * 0.5
    model = _tiny(num_objects=2)
    out = localization_loss(*model(x), labels, boxes)
    assert set(out) == {"classification", "box_regression", "loss"}
    history = losses_over_steps(model, lambda: localization_loss(*model(x), labels, boxes)["loss"], steps=15, lr=1e-2)
    assert history[-1] < 0.7 * history[0]
