"""The synthetic dataset: deterministic, consistent targets, usable by the
evaluators and the models' collate functions."""

import pytest
import torch

from detops.data import RandomHorizontalFlip, SyntheticShapes, collate_detection, collate_segmentation
from detops.eval import coco_stats


def test_same_seed_same_images_other_seed_other_images():
    a, b, c = SyntheticShapes(6, 64, seed=3), SyntheticShapes(6, 64, seed=3), SyntheticShapes(6, 64, seed=4)
    for i in range(6):
        assert torch.equal(a[i][0], b[i][0])
        assert torch.equal(a[i][1]["boxes"], b[i][1]["boxes"])
    assert not torch.equal(a[0][0], c[0][0])


@pytest.mark.parametrize("size", [64, (48, 96)])
def test_targets_are_consistent_with_masks(size):
    ds = SyntheticShapes(12, size, num_classes=4, objects=(2, 5), seed=7)
    h, w = (size, size) if isinstance(size, int) else size
    saw_overlap = False
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.shape == (3, h, w) and image.dtype == torch.float32
        assert 0 <= float(image.min()) and float(image.max()) <= 1
        n = t["labels"].numel()
        assert t["boxes"].shape == (n, 4) and t["masks"].shape == (n, h, w)
        assert ((t["labels"] >= 1) & (t["labels"] <= 4)).all()
        masks = t["masks"].bool()
        # visible masks are disjoint and each instance paints its label into the semantic map
        assert (masks.sum(0) <= 1).all()
        for m, box, label, area in zip(masks, t["boxes"], t["labels"], t["area"]):
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert torch.equal(box, torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32))
            assert int(area) == int(m.sum()) >= ds.min_visible
            assert (t["semantic"][m] == label).all()
        assert (t["semantic"][~masks.any(0)] == 0).all()
        if n > 1:
            b = t["boxes"]
            lo = torch.maximum(b[:, None, :2], b[None, :, :2])
            hi = torch.minimum(b[:, None, 2:], b[None, :, 2:])
            inter = (hi - lo).clamp(min=0).prod(-1)
            saw_overlap |= bool((inter.triu(1) > 0).any())
    assert saw_overlap, "the dataset is meant to have overlapping shapes"


def test_coco_ground_truth_scores_itself_perfectly():
    ds = SyntheticShapes(5, 64, seed=1)
    gt = ds.coco_ground_truth()
    dt = [dict(a, score=1.0) for a in gt["annotations"]]
    assert coco_stats(gt, dt)[1] == pytest.approx(1.0)
    assert coco_stats(gt, dt, "segm")[1] == pytest.approx(1.0)


def test_flip_and_collate():
    ds = SyntheticShapes(4, 32, seed=2)
    image, t = ds[0]
    flipped, ft = RandomHorizontalFlip(p=1.0)(image, t)
    assert torch.equal(flipped, image.flip(-1))
    assert torch.equal(ft["masks"], t["masks"].flip(-1))
    for m, box in zip(ft["masks"].bool(), ft["boxes"]):
        xs = torch.nonzero(m, as_tuple=True)[1]
        assert box[0] == xs.min() and box[2] == xs.max() + 1
    same, st = RandomHorizontalFlip(p=0.0)(image, t)
    assert same is image and st is t
    images, targets = collate_detection([ds[0], ds[1]])
    assert len(images) == 2 and targets[1]["image_id"] == 1
    x, y = collate_segmentation([ds[0], ds[1]])
    assert x.shape == (2, 3, 32, 32) and y.shape == (2, 32, 32) and y.dtype == torch.int64


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(4, 64, num_classes=9)
    with pytest.raises(ValueError, match="size"):
        SyntheticShapes(4, 4)
    with pytest.raises(IndexError, match="out of range"):
        SyntheticShapes(4, 32)[4]
    with pytest.raises(ValueError, match="p must be"):
        RandomHorizontalFlip(1.5)
