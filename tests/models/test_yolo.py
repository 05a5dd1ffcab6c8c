"""YOLO v1: shapes, target encoding, the paper's loss terms, loss falls, decoding."""

from __future__ import annotations

import torch

from detops.models._backbones import tiny_backbone
from detops.models.yolo import YOLOv1, yolo_v1_loss, yolo_v1_postprocess, yolo_v1_targets
from tests.models._train import losses_over_steps


def _model():
    torch.manual_seed(0)
    return YOLOv1(tiny_backbone(channels=16), 16, num_classes=3, grid_size=4, num_boxes=2, hidden=64, dropout=0.0)


def _batch():
    boxes = [torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.6, 0.55, 0.9, 0.95]]), torch.tensor([[0.3, 0.2, 0.7, 0.6]]),
             torch.zeros(0, 4)]
    labels = [torch.tensor([0, 2]), torch.tensor([1]), torch.zeros(0, dtype=torch.int64)]
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)), boxes, labels


def test_shapes_and_targets():
    x, boxes, labels = _batch()
    pred = _model()(x)
    assert pred.shape == (3, 4, 4, 2 * 5 + 3)
    t = yolo_v1_targets(boxes, labels, 4, 3)
    assert t.shape == (3, 4, 4, 8)
    assert t[..., 4].sum() == 3 and t[2].abs().sum() == 0
    # box 0 centre (0.25, 0.3) -> cell row 1, column 1, offset (0.0, 0.2) within the cell
    torch.testing.assert_close(t[0, 1, 1, :5], torch.tensor([0.0, 0.2, 0.3, 0.4, 1.0]))
    assert t[0, 1, 1, 5:].tolist() == [1.0, 0.0, 0.0]


def test_loss_terms_by_hand():
    # One cell with an object; the second predictor overlaps it better, so it is responsible.
    target = torch.zeros(1, 2, 2, 5 + 2)
    target[0, 0, 0] = torch.tensor([0.5, 0.5, 0.25, 0.25, 1, 0, 1])
    pred = torch.zeros(1, 2, 2, 2 * 5 + 2)
    pred[0, 0, 0, :5] = torch.tensor([0.5, 0.5, 0.1, 0.1, 0.3])   # tiny box: IoU 0.01/0.0625
    pred[0, 0, 0, 5:10] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.8])  # exact box (sqrt 0.25 = 0.5): IoU 1
    pred[0, 0, 0, 10:] = torch.tensor([0.2, 0.6])
    pred[0, 1, 1, 4] = 0.4  # a confident predictor in an empty cell
    out = yolo_v1_loss(pred, target)
    torch.testing.assert_close(out["coord"], torch.tensor(0.0))
    torch.testing.assert_close(out["obj"], torch.tensor((0.8 - 1.0) ** 2))
    torch.testing.assert_close(out["noobj"], torch.tensor(0.5 * (0.3 ** 2 + 0.4 ** 2)))
    torch.testing.assert_close(out["class"], torch.tensor(0.2 ** 2 + 0.4 ** 2))
    pred[0, 0, 0, 5:7] = torch.tensor([0.7, 0.5])
    torch.testing.assert_close(yolo_v1_loss(pred, target)["coord"], torch.tensor(5.0 * 0.2 ** 2))


def test_loss_falls():
    x, boxes, labels = _batch()
    model = _model()
    target = yolo_v1_targets(boxes, labels, 4, 3)
    history = losses_over_steps(model, lambda: yolo_v1_loss(model(x), target)["loss"], steps=10)
    assert history[-1] < 0.5 * history[0]


def test_postprocess_valid_boxes():
    x, boxes, labels = _batch()
    pred = _model()(x).detach()
    pred[..., 4] = 0.9
    pred[..., 9] = 0.9
    pred[..., 10:] = 0.5
    dets = yolo_v1_postprocess(pred, (64, 96), score_threshold=0.1)
    assert len(dets) == 3
    for d in dets:
        b = d["boxes"]
        assert b.shape[1] == 4 and len(b) == len(d["scores"]) == len(d["labels"]) > 0
        assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
        assert (b >= 0).all() and (b[:, [0, 2]] <= 96).all() and (b[:, [1, 3]] <= 64).all()
        assert (d["scores"] > 0.1).all() and (d["scores"][:-1] >= d["scores"][1:]).all()
    # The ground truth encoded as a prediction decodes back to itself.
    t = yolo_v1_targets(boxes, labels, 4, 3)
    perfect = torch.zeros(3, 4, 4, 13)
    perfect[..., :2], perfect[..., 2:4], perfect[..., 4] = t[..., :2], t[..., 2:4].sqrt(), t[..., 4]
    perfect[..., 10:] = t[..., 5:]
    dets = yolo_v1_postprocess(perfect, (1, 1), score_threshold=0.5)
    for d, b, lab in zip(dets, boxes, labels):
        order = d["boxes"][:, 0].argsort()
        torch.testing.assert_close(d["boxes"][order], b[b[:, 0].argsort()])
        assert sorted(d["labels"].tolist()) == sorted(lab.tolist())
