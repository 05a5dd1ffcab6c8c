"""CornerNet: corner pooling module, heads, focal and pull/push losses, targets, decoding."""

from __future__ import annotations

import torch

from detops.models._backbones import tiny_backbone
from detops.models.cornernet import (
    CornerNet, CornerPoolModule, cornernet_decode, cornernet_focal_loss, cornernet_loss, cornernet_targets,
    pull_push_loss,
)
from tests.models._train import losses_over_steps


def _model():
    torch.manual_seed(0)
    return CornerNet(tiny_backbone(channels=16, num_downsamples=2), 16, num_classes=2, stride=4, head_channels=16,
                     pool_channels=8)


def _batch():
    boxes = [torch.tensor([[4.0, 8.0, 30.0, 40.0], [36.0, 4.0, 60.0, 20.0]]), torch.tensor([[10.0, 10.0, 50.0, 44.0]])]
    labels = [torch.tensor([0, 1]), torch.tensor([1])]
    return torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(0)), boxes, labels


def test_pool_module_uses_corner_pool():
    m = CornerPoolModule(4, ("top", "left"), pool_channels=3).eval()
    x = torch.randn(1, 4, 6, 7)
    p1, p2 = m.p1_conv(x), m.p2_conv(x)
    pooled = p1.flip(2).cummax(2).values.flip(2) + p2.flip(3).cummax(3).values.flip(3)
    ref = m.out_conv(torch.relu(m.p_conv(pooled) + m.shortcut(x)))
    torch.testing.assert_close(m(x), ref)


def test_shapes_targets_and_loss_falls():
    x, boxes, labels = _batch()
    model = _model()
    out = model(x)
    for c in ("tl", "br"):
        assert out[c]["heatmap"].shape == (2, 2, 12, 16)
        assert out[c]["embedding"].shape == (2, 1, 12, 16) and out[c]["offset"].shape == (2, 2, 12, 16)
    t = cornernet_targets(boxes, labels, 2, (12, 16), 4, max_objects=4)
    assert t["mask"].sum() == 3 and t["tl_heatmap"].eq(1).sum() == 3
    assert t["tl_heatmap"][0, 0, 2, 1] == 1 and t["br_heatmap"][0, 0, 10, 7] == 1  # (4, 8) / 4, (30, 40) / 4
    torch.testing.assert_close(t["br_offset"][0, 0], torch.tensor([0.5, 0.0]))
    history = losses_over_steps(model, lambda: cornernet_loss(model(x), t)["loss"], steps=3, lr=1e-2)
    assert history[-1] < history[0]


def test_focal_loss_by_hand():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 1.0]]]])
    target = torch.tensor([[[[1.0, 0.5], [0.0, 1.0]]]])
    p = logits.sigmoid()
    pos = (1 - p[0, 0, 0, 0]) ** 2 * p[0, 0, 0, 0].log() + (1 - p[0, 0, 1, 1]) ** 2 * p[0, 0, 1, 1].log()
    neg = 0.5 ** 4 * p[0, 0, 0, 1] ** 2 * (1 - p[0, 0, 0, 1]).log() + p[0, 0, 1, 0] ** 2 * (1 - p[0, 0, 1, 0]).log()
    torch.testing.assert_close(cornernet_focal_loss(logits, target), -(pos + neg) / 2)


def test_pull_push_by_hand():
    tl = torch.tensor([[0.0, 2.0, 9.0]])
    br = torch.tensor([[1.0, 2.2, 9.0]])
    mask = torch.tensor([[True, True, False]])
    pull, push = pull_push_loss(tl, br, mask)
    torch.testing.assert_close(pull, torch.tensor((0.25 + 0.25 + 0.01 + 0.01) / 2))
    # means 0.5 and 2.1: |diff| 1.6 > delta, no push; closer means push.
    torch.testing.assert_close(push, torch.tensor(0.0))
    _, push = pull_push_loss(torch.tensor([[0.0, 0.4]]), torch.tensor([[0.0, 0.4]]), torch.tensor([[True, True]]))
    torch.testing.assert_close(push, torch.tensor(0.6))


def test_decode_recovers_boxes():
    _, boxes, labels = _batch()
    t = cornernet_targets(boxes, labels, 2, (12, 16), 4, max_objects=4)
    # A perfect prediction: peaks at the corners, offsets, one embedding value per object.
    out = {}
    for c in ("tl", "br"):
        heat = torch.where(t[f"{c}_heatmap"] == 1, 10.0, -10.0)
        emb = torch.zeros(2, 1, 12 * 16)
        off = torch.zeros(2, 2, 12 * 16)
        for n in range(2):
            for k in range(int(t["mask"][n].sum())):
                emb[n, 0, t[f"{c}_index"][n, k]] = 3.0 * k
                off[n, :, t[f"{c}_index"][n, k]] = t[f"{c}_offset"][n, k]
        out[c] = {"heatmap": heat, "embedding": emb.view(2, 1, 12, 16), "offset": off.view(2, 2, 12, 16)}
    dets = cornernet_decode(out, stride=4, k=10, image_size=(48, 64), score_threshold=0.5)
    for d, b, lab in zip(dets, boxes, labels):
        assert len(d["boxes"]) == len(b)
        order, ref = d["boxes"][:, 0].argsort(), b[:, 0].argsort()
        torch.testing.assert_close(d["boxes"][order], b[ref])
        assert d["labels"][order].tolist() == lab[ref].tolist()
        assert (d["scores"] > 0.99).all()


def test_decode_on_model_output_is_valid():
    x, _, _ = _batch()
    dets = cornernet_decode(_model().eval()(x), stride=4, k=20, image_size=(48, 64))
    for d in dets:
        b = d["boxes"]
        assert len(b) > 0 and b.shape[1] == 4 and len(d["scores"]) == len(d["labels"]) == len(b)
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (b >= 0).all() and (b[:, [0, 2]] <= 64).all() and (b[:, [1, 3]] <= 48).all()
        assert (d["scores"][:-1] >= d["scores"][1:]).all()
