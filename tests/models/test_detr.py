"""DETR: Hungarian matching (optimal vs scipy and brute force, images with no
targets, one host copy), the set loss, the small model and its postprocess."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

from detops.models._backbones import tiny_backbone
from detops.models.detr import DETR, HungarianMatcher, SetCriterion, detr_postprocess
from tests.models._train import losses_over_steps


def _random_boxes(n, g):
    cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    return torch.cat([cxcy, wh], 1)


def _outputs(B, Q, C, g):
    return {"pred_logits": torch.randn(B, Q, C + 1, generator=g), "pred_boxes": _random_boxes(B * Q, g).view(B, Q, 4)}


def _reference_cost(logits, boxes, labels, tboxes, wc=1.0, wb=5.0, wg=2.0):
    """DETR's cost, from torch and torchvision alone."""
    prob = logits.softmax(-1)
    return (-wc * prob[:, labels] + wb * torch.cdist(boxes, tboxes, p=1)
            - wg * generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(tboxes, "cxcywh", "xyxy")))


def test_matching_is_scipy_optimal_on_random_matrices():
    g = torch.Generator().manual_seed(0)
    matcher = HungarianMatcher()
    B, Q, C = 4, 7, 5
    for trial in range(3):
        out = _outputs(B, Q, C, g)
        sizes = [3, 0, 7, 1] if trial == 0 else torch.randint(0, Q + 1, (B,), generator=g).tolist()
        targets = [{"labels": torch.randint(0, C, (n,), generator=g), "boxes": _random_boxes(n, g)} for n in sizes]
        result = matcher(out, targets)
        for b, ((qi, ti), t) in enumerate(zip(result, targets)):
            assert len(qi) == len(ti) == min(Q, len(t["boxes"]))
            if len(t["boxes"]) == 0:
                continue
            cost = _reference_cost(out["pred_logits"][b], out["pred_boxes"][b], t["labels"], t["boxes"])
            assert len(set(qi.tolist())) == len(qi) and len(set(ti.tolist())) == len(ti)
            rows, cols = linear_sum_assignment(cost.numpy())
            torch.testing.assert_close(cost[qi, ti].sum(), cost[rows, cols].sum())
            if len(t["boxes"]) <= 3:  # brute force: no assignment is cheaper
                best = min(sum(cost[q, j] for j, q in enumerate(p)) for p in itertools.permutations(range(Q), len(ti)))
                torch.testing.assert_close(cost[qi, ti].sum(), torch.as_tensor(best))


def test_matching_with_no_targets_at_all():
    g = torch.Generator().manual_seed(1)
    out = _outputs(2, 4, 3, g)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    result = HungarianMatcher()(out, [empty, empty])
    assert all(len(q) == 0 and len(t) == 0 for q, t in result)
    losses = SetCriterion(3)(out, [empty, empty])
    assert losses["loss_bbox"] == 0 and losses["loss_giou"] == 0 and losses["loss_ce"] > 0


def test_matching_copies_to_host_once(monkeypatch):
    calls = []
    original = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        calls.append(self.shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    g = torch.Generator().manual_seed(2)
    targets = [{"labels": torch.tensor([0, 1]), "boxes": _random_boxes(2, g)},
               {"labels": torch.tensor([2]), "boxes": _random_boxes(1, g)}]
    HungarianMatcher()(_outputs(2, 5, 3, g), targets)
    assert calls == [torch.Size([2, 5, 3])]


def test_set_loss_terms():
    g = torch.Generator().manual_seed(3)
    out = _outputs(1, 3, 2, g)
    t = [{"labels": torch.tensor([1]), "boxes": _random_boxes(1, g)}]
    crit = SetCriterion(2, eos_coef=0.1)
    losses = crit(out, t)
    (q,), (j,) = crit.matcher(out, t)[0]
    src, tgt = out["pred_boxes"][0, q], t[0]["boxes"][j]
    torch.testing.assert_close(losses["loss_bbox"], (src - tgt).abs().sum())
    giou = generalized_box_iou(box_convert(src[None], "cxcywh", "xyxy"), box_convert(tgt[None], "cxcywh", "xyxy"))
    torch.testing.assert_close(losses["loss_giou"], 1 - giou[0, 0])
    classes = torch.full((3,), 2)
    classes[q] = 1
    ce = torch.nn.functional.cross_entropy(out["pred_logits"][0], classes, torch.tensor([1.0, 1.0, 0.1]))
    torch.testing.assert_close(losses["loss_ce"], ce)
    torch.testing.assert_close(losses["loss"], ce + 5 * losses["loss_bbox"] + 2 * losses["loss_giou"])


def test_model_shapes_loss_falls_postprocess():
    torch.manual_seed(0)
    model = DETR(tiny_backbone(channels=16), 16, num_classes=3, num_queries=6, hidden_dim=32, nheads=4,
                 num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64, dropout=0.0)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 48, 64, generator=g)
    out = model(x)
    assert out["pred_logits"].shape == (2, 6, 4) and out["pred_boxes"].shape == (2, 6, 4)
    targets = [{"labels": torch.tensor([0, 2]), "boxes": _random_boxes(2, g)},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    crit = SetCriterion(3)
    history = losses_over_steps(model, lambda: crit(model(x), targets)["loss"], steps=4, lr=1e-3)
    assert history[-1] < history[0]
    dets = detr_postprocess(model(x), [(48, 64), (48, 64)])
    for d in dets:
        b = d["boxes"]
        assert b.shape == (6, 4) and (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert ((d["scores"] > 0) & (d["scores"] <= 1)).all() and (d["labels"] < 3).all()


def test_matcher_rejects_all_zero_costs():
    with pytest.raises(ValueError, match="non-zero"):
        HungarianMatcher(0, 0, 0)
