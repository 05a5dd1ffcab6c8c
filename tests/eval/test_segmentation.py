"""Semantic-segmentation metrics against a float64 numpy reference written from
the definitions (pixel loops over classes), on fresh random label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import detops.eval as E


def reference_confusion(pred: np.ndarray, target: np.ndarray, c: int, ignore: int | None) -> np.ndarray:
    conf = np.zeros((c, c), dtype=np.int64)
    for t, p in zip(target.ravel().tolist(), pred.ravel().tolist()):
        if ignore is not None and t == ignore:
            continue
        conf[t, p] += 1
    return conf


def reference_scores(pred: np.ndarray, target: np.ndarray, c: int, ignore: int | None) -> dict:
    keep = np.ones(target.shape, dtype=bool) if ignore is None else target != ignore
    p, t = pred[keep], target[keep]
    iou, acc = [], []
    for k in range(c):
        inter = np.sum((p == k) & (t == k))
        union = np.sum((p == k) | (t == k))
        iou.append(inter / union if union else math.nan)
        acc.append(inter / np.sum(t == k) if np.sum(t == k) else math.nan)
    return {
        "iou": np.array(iou),
        "miou": np.nanmean(iou),
        "pixel_accuracy": np.mean(p == t),
        "class_accuracy": np.array(acc),
        "mean_class_accuracy": np.nanmean(acc),
    }


def random_maps(rng: np.random.Generator, shape, c: int, ignore: int | None, absent: int | None = None):
    target = rng.integers(0, c, shape)
    # predictions agree with the truth most of the time, as a trained model's
    pred = np.where(rng.random(shape) < 0.7, target, rng.integers(0, c, shape))
    if absent is not None:  # a class in neither map: IoU undefined
        target[target == absent] = (absent + 1) % c
        pred[pred == absent] = (absent + 1) % c
    if ignore is not None:
        target[rng.random(shape) < 0.1] = ignore
    return pred, target


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ignore", [255, None, -1])
def test_matches_reference(device, seed, ignore):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 9))
    shape = (int(rng.integers(1, 4)), int(rng.integers(3, 20)), int(rng.integers(3, 20)))
    pred, target = random_maps(rng, shape, c, ignore, absent=c - 1 if seed % 2 else None)
    conf = E.confusion_matrix(torch.from_numpy(pred).to(device), torch.from_numpy(target).to(device), c, ignore)
    assert conf.dtype == torch.int64 and conf.device.type == torch.device(device).type
    np.testing.assert_array_equal(conf.cpu().numpy(), reference_confusion(pred, target, c, ignore))
    got = E.segmentation_scores(conf)
    ref = reference_scores(pred, target, c, ignore)
    for key, want in ref.items():
        np.testing.assert_allclose(got[key].cpu().numpy(), want, rtol=1e-12, atol=0, equal_nan=True, err_msg=key)


def test_hand_computed():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    conf = E.confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    s = E.segmentation_scores(conf)
    # class 0: inter 1, union 1+2+... = |pred 0 or target 0| = 3; class 1: 2/3; class 2: 1/2
    assert s["iou"].tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert float(s["miou"]) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert float(s["pixel_accuracy"]) == pytest.approx(4 / 6)
    assert s["class_accuracy"].tolist() == pytest.approx([1 / 2, 1.0, 1 / 2])
    assert float(s["frequency_weighted_iou"]) == pytest.approx((2 / 6) * (1 / 3) + (2 / 6) * (2 / 3) + (2 / 6) * 0.5)


def test_accumulator_equals_one_shot_and_takes_logits(device):
    rng = np.random.default_rng(3)
    c = 5
    pred, target = random_maps(rng, (4, 9, 11), c, 255)
    metric = E.SegmentationMetrics(c, ignore_index=255)
    with pytest.raises(RuntimeError, match="update"):
        metric.compute()
    pt, tt = torch.from_numpy(pred).to(device), torch.from_numpy(target).to(device)
    # logits whose argmax is pred
    noise = 0.01 * torch.rand(4, c, 9, 11, device=device)
    logits = torch.nn.functional.one_hot(pt, c).permute(0, 3, 1, 2).float() + noise
    metric.update(logits[:2], tt[:2])
    metric.update(pt[2:], tt[2:])
    out = metric.compute()
    whole = E.confusion_matrix(pt, tt, c, 255)
    assert torch.equal(out["confusion_matrix"], whole)
    assert torch.equal(out["miou"], E.segmentation_scores(whole)["miou"])
    metric.reset()
    metric.update(pt, tt)
    assert torch.equal(metric.compute()["confusion_matrix"], whole)


def test_empty_and_all_ignored():
    conf = E.confusion_matrix(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 3)
    assert conf.tolist() == [[0] * 3] * 3
    conf = E.confusion_matrix(torch.zeros(2, 2, dtype=torch.int64), torch.full((2, 2), 255), 3)
    s = E.segmentation_scores(conf)
    assert conf.sum() == 0 and math.isnan(float(s["miou"])) and math.isnan(float(s["pixel_accuracy"]))


def test_bad_inputs():
    t = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(TypeError, match="integer"):
        E.confusion_matrix(t.float(), t, 3)
    with pytest.raises(ValueError, match="same shape"):
        E.confusion_matrix(t, t[:1], 3)
    with pytest.raises(ValueError, match="target has labels outside"):
        E.confusion_matrix(t, t + 3, 3)
    with pytest.raises(ValueError, match="pred has labels outside"):
        E.confusion_matrix(t - 1, t, 3)
    with pytest.raises(ValueError, match="num_classes"):
        E.confusion_matrix(t, t, 0)
    with pytest.raises(ValueError, match="square"):
        E.segmentation_scores(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="num_classes"):
        E.SegmentationMetrics(0)
