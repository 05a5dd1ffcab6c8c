"""detops.eval COCO metrics against pycocotools (the reference) on fresh random
synthetic datasets: the 12 stats to 1e-6, plus the precision/recall arrays."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
import torch

import detops.eval as E
from detops.eval import mask as M

pycocotools = pytest.importorskip("pycocotools")
from pycocotools import mask as pmask  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

# pycocotools' decode under numpy 2 warns about __array__(copy=...): not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 64, 80  # image size for mask datasets (small: pycocotools' segm path is slow)


# ------------------------------------------------------------------ reference


def pycoco_eval(gt: dict, dt: list[dict], iou_type: str) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dt))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def assert_matches_pycocotools(gt: dict, dt: list[dict], iou_type: str) -> None:
    ev = pycoco_eval(gt, dt, iou_type)
    stats, result = E.coco_stats(gt, dt, iou_type, return_result=True)
    np.testing.assert_allclose(np.asarray(stats), ev.stats, rtol=0, atol=1e-6, err_msg="stats")
    # Stronger than the stats: every precision/recall entry.
    np.testing.assert_allclose(result.precision.numpy(), ev.eval["precision"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.recall.numpy(), ev.eval["recall"], rtol=0, atol=1e-9)


# ------------------------------------------------------------------ synthetic data


def random_bbox_dataset(
    rng: np.random.Generator,
    n_images: int,
    n_categories: int,
    *,
    max_gt: int = 8,
    max_dt: int = 25,
    crowd_rate: float = 0.15,
    many_dets_image: bool = False,
) -> tuple[dict, list[dict]]:
    """Boxes with integer, half-integer and real coordinates; areas on the
    small/medium/large boundaries; crowds; empty images; images without
    detections; scores on a coarse grid (ties); category ids not 0..K-1."""
    images = [{"id": int(i) * 3 + 7, "height": 300, "width": 300} for i in range(n_images)]
    cat_ids = [int(c) * 5 + 2 for c in range(n_categories)]
    anns: list[dict] = []
    dts: list[dict] = []
    for n, img in enumerate(images):
        n_gt = 0 if rng.random() < 0.15 else int(rng.integers(0, max_gt + 1))
        gts = []
        for _ in range(n_gt):
            x, y = rng.uniform(0, 200, 2)
            kind = rng.random()
            if kind < 0.15:  # exactly on the area boundaries
                side = float(rng.choice([32.0, 96.0]))
                w = h = side
            elif kind < 0.4:
                w, h = (float(v) for v in rng.integers(1, 120, 2))
                x, y = float(round(x)), float(round(y))
            else:
                w, h = (float(v) for v in rng.uniform(0.5, 150, 2))
            area = w * h
            if rng.random() < 0.1:  # area field not equal to the box area
                area = float(rng.choice([32.0**2, 96.0**2, area * 0.5]))
            c = cat_ids[int(rng.integers(n_categories))]
            anns.append({
                "id": len(anns) + 1, "image_id": img["id"], "category_id": c,
                "bbox": [float(x), float(y), w, h], "area": float(area),
                "iscrowd": int(rng.random() < crowd_rate),
            })
            gts.append((x, y, w, h, c))
        if rng.random() < 0.15:
            continue  # no detections on this image
        n_dt = int(rng.integers(0, max_dt + 1))
        if many_dets_image and n == 0:
            n_dt = 140  # more than maxDets=100 in one (image, category)
        for _ in range(n_dt):
            if gts and rng.random() < 0.6:
                x, y, w, h, c = gts[int(rng.integers(len(gts)))]
                if rng.random() < 0.7:
                    x, y = x + rng.normal(0, 3), y + rng.normal(0, 3)
                    w, h = w * rng.uniform(0.75, 1.25), h * rng.uniform(0.75, 1.25)
                if rng.random() < 0.15:
                    c = cat_ids[int(rng.integers(n_categories))]
            else:
                x, y = rng.uniform(0, 200, 2)
                w, h = rng.uniform(1, 120, 2)
                c = cat_ids[int(rng.integers(n_categories))]
            if many_dets_image and n == 0:
                c = cat_ids[0]
            score = float(rng.integers(0, 6)) / 5 if rng.random() < 0.5 else float(rng.random())
            dts.append({
                "image_id": img["id"], "category_id": c, "score": score,
                "bbox": [float(x), float(y), float(w), float(h)],
            })
    categories = [{"id": c, "name": str(c)} for c in cat_ids]
    return {"images": images, "annotations": anns, "categories": categories}, dts


def random_dense_mask(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    """A blob: an ellipse or rectangle, sometimes with a hole, sometimes empty."""
    yy, xx = np.mgrid[:h, :w]
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    rx, ry = rng.uniform(1, w / 2), rng.uniform(1, h / 2)
    if rng.random() < 0.5:
        m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    else:
        m = (np.abs(xx - cx) <= rx) & (np.abs(yy - cy) <= ry)
    if rng.random() < 0.2:
        m &= ((xx - cx) ** 2 + (yy - cy) ** 2) > (min(rx, ry) / 2) ** 2
    if rng.random() < 0.03:
        m[:] = False
    return np.asfortranarray(m.astype(np.uint8))


def jitter_mask(rng: np.random.Generator, m: np.ndarray) -> np.ndarray:
    dy, dx = (int(v) for v in rng.integers(-3, 4, 2))
    out = np.roll(np.roll(m, dy, 0), dx, 1)
    if rng.random() < 0.3:
        out = out | random_dense_mask(rng) * (rng.random() < 0.5)
    return np.asfortranarray(out.astype(np.uint8))


def random_polygon(rng: np.random.Generator) -> list[list[float]]:
    parts = []
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = rng.uniform(5, W - 5), rng.uniform(5, H - 5)
        k = int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        r = rng.uniform(2, 25, k)
        xs, ys = cx + r * np.cos(ang), cy + r * np.sin(ang)
        parts.append([float(v) for xy in zip(xs, ys) for v in xy])
    return parts


def random_segm_dataset(rng: np.random.Generator, n_images: int, n_categories: int) -> tuple[dict, list[dict]]:
    images = [{"id": i + 1, "height": H, "width": W} for i in range(n_images)]
    cat_ids = list(range(1, n_categories + 1))
    anns: list[dict] = []
    dts: list[dict] = []
    for img in images:
        gts = []
        for _ in range(int(rng.integers(0, 6))):
            c = int(rng.choice(cat_ids))
            crowd = int(rng.random() < 0.15)
            kind = rng.random()
            if kind < 0.3 and not crowd:
                seg = random_polygon(rng)
                rle = pmask.merge(pmask.frPyObjects(seg, H, W))
                dense = pmask.decode(rle)
            else:
                dense = random_dense_mask(rng)
                rle = pmask.encode(dense)
                if crowd or kind < 0.5:  # uncompressed RLE (list counts), as COCO crowds
                    seg = {"size": [H, W], "counts": [int(v) for v in M.rle_counts(rle)]}
                else:
                    seg = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
            area = float(pmask.area(rle))
            if rng.random() < 0.15:
                area = float(rng.choice([32.0**2, 96.0**2, area + 0.5]))
            anns.append({
                "id": len(anns) + 1, "image_id": img["id"], "category_id": c, "iscrowd": crowd,
                "segmentation": seg, "area": area, "bbox": [float(v) for v in pmask.toBbox(rle)],
            })
            gts.append((dense, c))
        if rng.random() < 0.15:
            continue
        for _ in range(int(rng.integers(0, 12))):
            if gts and rng.random() < 0.7:
                dense, c = gts[int(rng.integers(len(gts)))]
                dense = jitter_mask(rng, dense)
            else:
                dense, c = random_dense_mask(rng), int(rng.choice(cat_ids))
            rle = pmask.encode(np.asfortranarray(dense))
            rle["counts"] = rle["counts"].decode("ascii")
            score = float(rng.integers(0, 5)) / 4 if rng.random() < 0.5 else float(rng.random())
            dts.append({"image_id": img["id"], "category_id": c, "segmentation": rle, "score": score})
    return {"images": images, "annotations": anns, "categories": [{"id": c} for c in cat_ids]}, dts


# ------------------------------------------------------------------ coco_stats vs pycocotools


@pytest.mark.parametrize("seed", range(60))
def test_bbox_stats_match_pycocotools(seed):
    rng = np.random.default_rng(1000 + seed)
    n_images = int(rng.integers(1, 25))
    n_categories = int(rng.integers(1, 7))
    gt, dt = random_bbox_dataset(rng, n_images, n_categories, many_dets_image=seed % 4 == 0)
    if not dt:
        dt = [{"image_id": gt["images"][0]["id"], "category_id": gt["categories"][0]["id"],
               "bbox": [1.0, 1.0, 5.0, 5.0], "score": 0.5}]
    assert_matches_pycocotools(gt, dt, "bbox")


def test_chained_sorts_fallback_gives_the_same_result(monkeypatch):
    """Huge datasets sort with chained stable sorts instead of one composite
    int64 key; both orders are the same."""
    rng = np.random.default_rng(77)
    gt, dt = random_bbox_dataset(rng, 15, 4, many_dets_image=True)
    ref, ref_res = E.coco_stats(gt, dt, return_result=True)
    from detops.eval import coco as coco_module

    monkeypatch.setattr(coco_module, "_KEY_LIMIT", 0)
    got, got_res = E.coco_stats(gt, dt, return_result=True)
    assert got == ref
    assert torch.equal(got_res.precision, ref_res.precision)


def test_bbox_many_detections_per_image_and_ties():
    """> 100 detections in one (image, category), all with the same score:
    truncation and tie order follow pycocotools' stable sorts."""
    rng = np.random.default_rng(7)
    gt, _ = random_bbox_dataset(rng, 3, 2, crowd_rate=0.0)
    img = gt["images"][0]["id"]
    cat = gt["categories"][0]["id"]
    gt["annotations"] += [
        {"id": 900 + i, "image_id": img, "category_id": cat, "bbox": [10.0 * i, 5.0, 8.0, 8.0],
         "area": 64.0, "iscrowd": 0}
        for i in range(20)
    ]
    dt = [{"image_id": img, "category_id": cat, "bbox": [10.0 * (i % 25), 5.0, 8.0, 8.0], "score": 0.5}
          for i in range(160)]
    dt += [{"image_id": img, "category_id": cat, "bbox": [10.0 * (i % 25), 5.5, 8.0, 8.0], "score": 0.7}
           for i in range(30)]
    assert_matches_pycocotools(gt, dt, "bbox")


def test_bbox_crowd_matches_repeatedly_and_is_ignored():
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 1}, {"id": 2}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 1},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0},
        ],
    }
    dt = [
        {"image_id": 1, "category_id": 1, "bbox": [5, 5, 30, 30], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40], "score": 0.8},
        {"image_id": 1, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.8},
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.3},
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 50, 50], "score": 0.1},
    ]
    assert_matches_pycocotools(gt, dt, "bbox")
    stats = E.coco_stats(gt, dt)
    assert stats[1] == pytest.approx(1.0)  # crowd-matched detections are neither TP nor FP


def test_bbox_iou_exactly_on_thresholds_and_equal_ious():
    """IoUs exactly equal to the thresholds (50/100, 55/100, ...) count as matches;
    a detection equally close to two ground truths takes the later one, which
    decides what the next detection can match."""
    images = [{"id": i} for i in range(1, 13)]
    anns, dts = [], []
    for i in range(10):  # image i+1: a detection covering (50 + 5 i) % of a 10x10 box
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [0, 0, 10, 10],
                     "area": 100, "iscrowd": 0})
        dts.append({"image_id": i + 1, "category_id": 1, "bbox": [0, 0, 10, 5 + 0.5 * i], "score": 0.5})
    # image 11: two ground truths at the same IoU from the first detection
    anns += [
        {"id": 20, "image_id": 11, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 21, "image_id": 11, "category_id": 1, "bbox": [2, 0, 10, 10], "area": 2000, "iscrowd": 0},
    ]
    dts += [
        {"image_id": 11, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.9},
        {"image_id": 11, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8},
    ]
    # image 12: the same with the ground truths in the other order
    anns += [
        {"id": 30, "image_id": 12, "category_id": 2, "bbox": [2, 0, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 31, "image_id": 12, "category_id": 2, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
    ]
    dts += [
        {"image_id": 12, "category_id": 2, "bbox": [1, 0, 10, 10], "score": 0.9},
        {"image_id": 12, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.8},
    ]
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1}, {"id": 2}]}
    assert_matches_pycocotools(gt, dts, "bbox")


def test_bbox_ground_truth_id_zero_quirk():
    """pycocotools records a match by the ground truth's id, so an id of 0 reads
    as 'unmatched'; detops reproduces that."""
    gt = {
        "images": [{"id": 1}],
        "categories": [{"id": 1}],
        "annotations": [
            {"id": 0, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [20, 0, 10, 10], "area": 100, "iscrowd": 0},
        ],
    }
    dt = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [20, 0, 10, 10], "score": 0.8},
    ]
    assert_matches_pycocotools(gt, dt, "bbox")


def test_bbox_known_values():
    """A hand-checked case: one TP and one FP in one category -> AP@.5 = 1 (the TP
    ranks first), AR = 1; a category without ground truth is -1 and left out."""
    gt = {
        "images": [{"id": 1}],
        "categories": [{"id": 1}, {"id": 2}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}
        ],
    }
    dt = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.5},
        {"image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10], "score": 0.5},
    ]
    stats, result = E.coco_stats(gt, dt, return_result=True)
    assert stats[:4] == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert stats[4] == -1 and stats[5] == -1  # no medium/large ground truth
    assert stats[6:10] == pytest.approx([1.0] * 4)
    ap = result.per_class_ap()
    assert ap.tolist() == pytest.approx([1.0, -1.0])


def test_no_detections_and_no_ground_truth():
    gt, _ = random_bbox_dataset(np.random.default_rng(3), 5, 3, crowd_rate=0.0)
    assert gt["annotations"], "the dataset must have ground truth"
    stats = E.coco_stats(gt, [])
    has = [s for s in stats if s != -1]
    assert has and all(s == 0 for s in has)
    empty_gt = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
    dt = [{"image_id": gt["images"][0]["id"], "category_id": gt["categories"][0]["id"],
           "bbox": [0, 0, 5, 5], "score": 1.0}]
    assert E.coco_stats(empty_gt, dt) == [-1.0] * 12


def test_custom_params_match_pycocotools():
    rng = np.random.default_rng(11)
    gt, dt = random_bbox_dataset(rng, 12, 3)
    params = E.COCOParams(max_dets=(1, 5, 20))
    ev = None
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dt)), "bbox")
        ev.params.maxDets = [1, 5, 20]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats, result = E.coco_stats(gt, dt, params=params, return_result=True)
    np.testing.assert_allclose(np.asarray(stats), ev.stats, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.precision.numpy(), ev.eval["precision"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.recall.numpy(), ev.eval["recall"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(16))
def test_segm_stats_match_pycocotools(seed):
    rng = np.random.default_rng(2000 + seed)
    gt, dt = random_segm_dataset(rng, int(rng.integers(2, 9)), int(rng.integers(1, 4)))
    if not dt:
        dt = [{"image_id": 1, "category_id": 1, "score": 0.5,
               "segmentation": M.rle_encode(random_dense_mask(rng))}]
    assert_matches_pycocotools(gt, dt, "segm")


def test_segm_dense_masks_and_bbox_area_quirk():
    """Dense-array segmentations are accepted; results carrying a 'bbox' take
    their area from it, as pycocotools' loadRes does."""
    rng = np.random.default_rng(5)
    gt, dt = random_segm_dataset(rng, 4, 2)
    for d in dt:
        d["bbox"] = [float(v) for v in pmask.toBbox(d["segmentation"])]
    assert_matches_pycocotools(gt, dt, "segm")
    dense_dt = [dict(d, segmentation=torch.from_numpy(pmask.decode(d["segmentation"]))) for d in dt]
    assert E.coco_stats(gt, dense_dt, "segm") == pytest.approx(pycoco_eval(gt, dt, "segm").stats.tolist(), abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bbox_stats_on_cuda():
    rng = np.random.default_rng(99)
    gt, dt = random_bbox_dataset(rng, 20, 4, many_dets_image=True)
    cpu = E.coco_stats(gt, dt)
    cuda = E.coco_stats(gt, dt, device="cuda")
    assert cuda == pytest.approx(cpu, abs=1e-12)


# ------------------------------------------------------------------ tensor evaluator


def coco_to_tensors(gt: dict, dt: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per-image torchmetrics-style dicts (xyxy boxes) from COCO dicts."""
    preds, targets = [], []
    for img in sorted(gt["images"], key=lambda im: im["id"]):
        ga = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        da = [d for d in dt if d["image_id"] == img["id"]]

        def xyxy(items):
            b = torch.tensor([it["bbox"] for it in items], dtype=torch.float64).reshape(-1, 4)
            return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)

        targets.append({
            "boxes": xyxy(ga), "labels": torch.tensor([a["category_id"] for a in ga], dtype=torch.int64),
            "iscrowd": torch.tensor([a["iscrowd"] for a in ga], dtype=torch.int64),
            "area": torch.tensor([a["area"] for a in ga], dtype=torch.float64),
        })
        preds.append({
            "boxes": xyxy(da), "labels": torch.tensor([d["category_id"] for d in da], dtype=torch.int64),
            "scores": torch.tensor([d["score"] for d in da], dtype=torch.float64),
        })
    return preds, targets


def tensors_to_coco(preds: list[dict], targets: list[dict]) -> tuple[dict, list[dict]]:
    """COCO dicts from per-image tensors, boxes converted as torchmetrics does (w = x2 - x1)."""
    images, anns, dts, cats = [], [], [], set()
    for i, (p, t) in enumerate(zip(preds, targets)):
        images.append({"id": i})
        b = t["boxes"].double()
        for j in range(b.shape[0]):
            x1, y1, x2, y2 = b[j].tolist()
            area = float(t["area"][j]) if "area" in t else (x2 - x1) * (y2 - y1)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(t["labels"][j]),
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area,
                         "iscrowd": int(t.get("iscrowd", torch.zeros(b.shape[0]))[j])})
            cats.add(int(t["labels"][j]))
        b = p["boxes"].double()
        for j in range(b.shape[0]):
            x1, y1, x2, y2 = b[j].tolist()
            dts.append({"image_id": i, "category_id": int(p["labels"][j]), "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": float(p["scores"][j])})
            cats.add(int(p["labels"][j]))
    return {"images": images, "annotations": anns, "categories": [{"id": c} for c in sorted(cats)]}, dts


@pytest.mark.parametrize("seed", range(4))
def test_evaluator_matches_pycocotools(seed):
    rng = np.random.default_rng(3000 + seed)
    gt, dt = random_bbox_dataset(rng, 14, 4, many_dets_image=seed == 0)
    preds, targets = coco_to_tensors(gt, dt)
    if seed % 2:  # areas from the boxes
        for t in targets:
            del t["area"]
    metric = E.MeanAveragePrecision(extended_summary=True)
    half = len(preds) // 2
    metric.update(preds[:half], targets[:half])
    metric.update(preds[half:], targets[half:])
    out = metric.compute()
    ref_gt, ref_dt = tensors_to_coco(preds, targets)
    ev = pycoco_eval(ref_gt, ref_dt, "bbox")
    got = np.array([float(out[name]) for name in E.STAT_NAMES])
    np.testing.assert_allclose(got, ev.stats, rtol=0, atol=1e-6)
    # per-class AP: the mean of pycocotools' precision over thresholds and recall points
    prec = ev.eval["precision"][:, :, :, 0, -1]
    for k in range(prec.shape[2]):
        v = prec[:, :, k][prec[:, :, k] > -1]
        want = float(np.mean(v)) if v.size else -1.0
        assert float(out["map_per_class"][k]) == pytest.approx(want, abs=1e-6)
    assert out["classes"].tolist() == [c["id"] for c in ref_gt["categories"]]
    np.testing.assert_allclose(out["precision"].numpy(), ev.eval["precision"], rtol=0, atol=1e-9)


def test_evaluator_box_formats_and_pr_curve():
    """xywh input (COCO's own boxes) gives exactly coco_stats' numbers; cxcywh of
    the same boxes agrees to rounding; pr_curve is the precision array's slice."""
    rng = np.random.default_rng(21)
    gt, dt = random_bbox_dataset(rng, 10, 3)
    preds, targets = coco_to_tensors(gt, dt)

    def as_format(items, fmt):
        out = []
        for it in items:
            b = it["boxes"]
            wh = b[:, 2:] - b[:, :2]
            fb = torch.cat([b[:, :2], wh], 1) if fmt == "xywh" else torch.cat([b[:, :2] + wh / 2, wh], 1)
            out.append(dict(it, boxes=fb))
        return out

    ref_stats, ref = E.coco_stats(gt, dt, return_result=True)
    xywh = E.MeanAveragePrecision(box_format="xywh")
    xywh.update([dict(p, boxes=torch.tensor([d["bbox"] for d in dt if d["image_id"] == im["id"]],
                                            dtype=torch.float64).reshape(-1, 4))
                 for p, im in zip(preds, sorted(gt["images"], key=lambda im: im["id"]))],
                [dict(t, boxes=torch.tensor([a["bbox"] for a in gt["annotations"] if a["image_id"] == im["id"]],
                                            dtype=torch.float64).reshape(-1, 4))
                 for t, im in zip(targets, sorted(gt["images"], key=lambda im: im["id"]))])
    out = xywh.compute()
    assert [float(out[n]) for n in E.STAT_NAMES] == pytest.approx(ref_stats, abs=1e-6)  # float32 outputs
    assert xywh.result.stats.tolist() == pytest.approx(ref_stats, abs=1e-12)  # the float64 stats
    cxcywh = E.MeanAveragePrecision(box_format="cxcywh")
    cxcywh.update(as_format(preds, "cxcywh"), as_format(targets, "cxcywh"))
    assert [float(cxcywh.compute()[n]) for n in E.STAT_NAMES] == pytest.approx(ref_stats, abs=1e-6)
    cid = gt["categories"][1]["id"]
    rec, prec = ref.pr_curve(cid, iou_threshold=0.75, area="all")
    assert rec.shape == prec.shape == (101,)
    assert torch.equal(prec, ref.precision[5, :, 1, 0, 2])
    with pytest.raises(ValueError, match="unknown category"):
        ref.pr_curve(-12345)


def test_evaluator_segm_matches_pycocotools():
    rng = np.random.default_rng(41)
    gt, dt = random_segm_dataset(rng, 5, 2)
    preds, targets = [], []
    for img in gt["images"]:
        ga = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        da = [d for d in dt if d["image_id"] == img["id"]]

        def dense(items, h=img["height"], w=img["width"]):
            ms = [M.rle_decode(M.to_rle(it["segmentation"], h, w)) for it in items]
            return torch.stack(ms) if ms else torch.zeros(0, h, w, dtype=torch.bool)

        targets.append({"masks": dense(ga), "labels": torch.tensor([a["category_id"] for a in ga]),
                        "iscrowd": torch.tensor([a["iscrowd"] for a in ga]),
                        "area": torch.tensor([a["area"] for a in ga], dtype=torch.float64)})
        preds.append({"masks": dense(da), "labels": torch.tensor([d["category_id"] for d in da]),
                      "scores": torch.tensor([d["score"] for d in da], dtype=torch.float64)})
    metric = E.MeanAveragePrecision(iou_type="segm")
    metric.update(preds, targets)
    out = metric.compute()
    present = sorted({a["category_id"] for a in gt["annotations"]} | {d["category_id"] for d in dt})
    ref_gt = dict(gt, categories=[{"id": c} for c in present])
    ev = pycoco_eval(ref_gt, dt, "segm")
    got = np.array([float(out[name]) for name in E.STAT_NAMES])
    np.testing.assert_allclose(got, ev.stats, rtol=0, atol=1e-6)


def test_plot_pr_curves_writes_png(tmp_path):
    rng = np.random.default_rng(8)
    gt, dt = random_bbox_dataset(rng, 10, 3, crowd_rate=0.0)
    preds, targets = coco_to_tensors(gt, dt)
    metric = E.MeanAveragePrecision()
    with pytest.raises(RuntimeError, match="compute"):
        metric.plot_pr_curves(str(tmp_path / "x.png"))
    metric.update(preds, targets)
    metric.compute()
    path = tmp_path / "pr.png"
    metric.plot_pr_curves(str(path), class_names={c["id"]: f"c{c['id']}" for c in gt["categories"]})
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    E.plot_pr_curves(metric.result, str(tmp_path / "mean.png"), iou_threshold=None, area="small")
    assert (tmp_path / "mean.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_inputs():
    gt, dt = random_bbox_dataset(np.random.default_rng(0), 3, 2)
    with pytest.raises(ValueError, match="iou_type"):
        E.coco_stats(gt, dt, iou_type="keypoints")
    with pytest.raises(ValueError, match="image ids"):
        E.coco_stats(gt, [{"image_id": -5, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 1.0}])
    metric = E.MeanAveragePrecision()
    with pytest.raises(RuntimeError, match="update"):
        metric.compute()
    good_t = {"boxes": torch.zeros(1, 4), "labels": torch.zeros(1, dtype=torch.int64)}
    good_p = {"boxes": torch.zeros(1, 4), "labels": torch.zeros(1, dtype=torch.int64), "scores": torch.ones(1)}
    with pytest.raises(ValueError, match="same length"):
        metric.update([good_p], [good_t, good_t])
    with pytest.raises(ValueError, match="scores"):
        metric.update([{k: v for k, v in good_p.items() if k != "scores"}], [good_t])
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        metric.update([dict(good_p, boxes=torch.zeros(1, 5))], [good_t])
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        metric.update([good_p], [dict(good_t, boxes=torch.zeros(2, 4))])
    with pytest.raises(ValueError, match="iou_type"):
        E.MeanAveragePrecision(iou_type="keypoints")
    with pytest.raises(ValueError, match="box_format"):
        E.MeanAveragePrecision(box_format="xyzw")


# ------------------------------------------------------------------ mask encodings


def test_rle_encode_decode_area_bbox_match_pycocotools():
    rng = np.random.default_rng(12)
    masks = [random_dense_mask(rng) for _ in range(30)]
    masks.append(np.ones((H, W), dtype=np.uint8, order="F"))
    masks.append(np.zeros((H, W), dtype=np.uint8, order="F"))
    big = np.zeros((300, 400), dtype=np.uint8, order="F")
    big[5:290, 3:390] = 1  # runs longer than 2**15: multi-character counts
    masks.append(big)
    for m in masks:
        ref = pmask.encode(np.asfortranarray(m))
        ours = M.rle_encode(torch.from_numpy(np.ascontiguousarray(m)))
        assert ours["counts"] == ref["counts"] and ours["size"] == ref["size"]
        assert torch.equal(M.rle_decode(ref), torch.from_numpy(m.astype(bool)))
        assert M.rle_area(ref) == int(pmask.area(ref))
        assert M.rle_to_bbox(ref) == pytest.approx(pmask.toBbox(ref).tolist())
        ref_str = dict(ref, counts=ref["counts"].decode("ascii"))
        assert torch.equal(M.rle_decode(ref_str), torch.from_numpy(m.astype(bool)))
    batch = np.stack(masks[:3])
    ref = pmask.encode(np.asfortranarray(batch.transpose(1, 2, 0)))
    assert [r["counts"] for r in M.rle_encode(batch)] == [r["counts"] for r in ref]


def test_polygon_fallback_matches_pycocotools(monkeypatch):
    """The torch/numpy polygon rasteriser (used without pycocotools) equals rleFrPoly."""
    monkeypatch.setattr(M, "_pycoco_mask", None)
    rng = np.random.default_rng(13)
    polys = [random_polygon(rng) for _ in range(25)]
    polys.append([[0.0, 0.0, 10.0, 0.0, 10.0, 10.0, 0.0, 10.0]])  # an axis-aligned square
    polys.append([[-5.0, -5.0, W + 5.0, 3.0, 20.0, H + 4.0]])  # beyond the image
    for poly in polys:
        ours = M.polygons_to_rle(poly, H, W)
        ref = pmask.merge(pmask.frPyObjects(poly, H, W))
        assert torch.equal(M.rle_decode(ours), torch.from_numpy(pmask.decode(ref).astype(bool)))


def test_rle_pair_iou_matches_pycocotools():
    """The run-based pair IoU (used by segm evaluation) on compressed and
    list-count RLEs, crowds, empty and full masks, and masks of another size."""
    rng = np.random.default_rng(15)
    dts = [random_dense_mask(rng) for _ in range(9)] + [np.zeros((H, W), np.uint8), np.ones((H, W), np.uint8)]
    gts = [random_dense_mask(rng) for _ in range(6)] + [dts[2].copy(), np.zeros((H, W), np.uint8)]
    d_rle = [pmask.encode(np.asfortranarray(m)) for m in dts]
    g_rle = [pmask.encode(np.asfortranarray(m)) for m in gts]
    g_rle[1] = {"size": [H, W], "counts": [int(v) for v in M.rle_counts(g_rle[1])]}  # list counts
    g_rle[3] = dict(g_rle[3], counts=g_rle[3]["counts"].decode("ascii"))  # str counts
    crowd = rng.random(len(gts)) < 0.4
    ref = pmask.iou(d_rle, [pmask.frPyObjects(r, H, W) if isinstance(r["counts"], list) else r for r in g_rle],
                    crowd.astype(np.uint8).tolist())
    pd, pg = np.meshgrid(np.arange(len(dts)), np.arange(len(gts)), indexing="ij")
    ours = M.rle_pair_iou(M.rle_batch(d_rle), M.rle_batch(g_rle), pd.ravel(), pg.ravel(), crowd)
    np.testing.assert_array_equal(ours.reshape(len(dts), len(gts)), ref)
    other = M.rle_batch([pmask.encode(np.asfortranarray(np.ones((H + 1, W), np.uint8)))])
    assert M.rle_pair_iou(other, M.rle_batch(g_rle), np.zeros(2, int), np.array([0, 6]), crowd).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="counts sum to"):
        M.rle_batch([{"size": [H, W], "counts": [5, 7]}])


def test_mask_iou_matches_pycocotools():
    rng = np.random.default_rng(14)
    dts = [random_dense_mask(rng) for _ in range(7)]
    gts = [random_dense_mask(rng) for _ in range(5)] + [dts[0].copy()]
    crowd = [0, 1, 0, 0, 1, 0]
    ref = pmask.iou(pmask.encode(np.asfortranarray(np.stack(dts, 2))),
                    pmask.encode(np.asfortranarray(np.stack(gts, 2))), crowd)
    ours = M.mask_iou(torch.from_numpy(np.stack(dts)).bool(), torch.from_numpy(np.stack(gts)).bool(),
                      torch.tensor(crowd))
    np.testing.assert_array_equal(ours.numpy(), ref)
    with pytest.raises(ValueError, match="same H, W"):
        M.mask_iou(torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 5, dtype=torch.bool))
