"""COCO bbox mAP (the 12 ``COCOeval.stats``) end to end, from COCO dicts to the
stats: detops.eval.coco_stats vs pycocotools and vs faster-coco-eval.

Synthetic data shaped like a COCO val run: ~7 ground truths per image (10 %
crowd), about 60 detections per image over 80 categories, half of them jittered
copies of ground truths, scores on a coarse grid so that ties occur.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np

from detops.bench.harness import BenchCase


def synthetic_coco(
    n_images: int, dets_per_image: int = 60, n_categories: int = 80, gt_per_image: int = 7, seed: int = 0
) -> tuple[dict, list[dict]]:
    """A COCO ground-truth dict and a list of COCO bbox results."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "height": 480, "width": 640} for i in range(n_images)]
    categories = [{"id": c + 1, "name": f"class{c + 1}"} for c in range(n_categories)]
    annotations: list[dict] = []
    results: list[dict] = []
    for img in images:
        n_gt = int(rng.poisson(gt_per_image))
        xy = rng.uniform(0, 560, (n_gt, 2))
        wh = rng.uniform(4, 300, (n_gt, 2)) * rng.choice([0.1, 0.4, 1.0], (n_gt, 1))
        wh = np.maximum(wh, 1.0)
        cats = rng.integers(1, n_categories + 1, n_gt)
        crowd = rng.random(n_gt) < 0.1
        for j in range(n_gt):
            annotations.append({
                "id": len(annotations) + 1, "image_id": img["id"], "category_id": int(cats[j]),
                "bbox": [float(xy[j, 0]), float(xy[j, 1]), float(wh[j, 0]), float(wh[j, 1])],
                "area": float(wh[j, 0] * wh[j, 1]), "iscrowd": int(crowd[j]),
            })
        n_dt = int(rng.poisson(dets_per_image))
        near = rng.random(n_dt) < 0.5 if n_gt else np.zeros(n_dt, dtype=bool)
        src = rng.integers(0, max(n_gt, 1), n_dt)
        dxy = rng.uniform(0, 560, (n_dt, 2))
        dwh = np.maximum(rng.uniform(4, 300, (n_dt, 2)) * rng.choice([0.1, 0.4, 1.0], (n_dt, 1)), 1.0)
        dcat = rng.integers(1, n_categories + 1, n_dt)
        if n_gt:
            dxy[near] = xy[src[near]] + rng.normal(0, 4, (int(near.sum()), 2))
            dwh[near] = wh[src[near]] * rng.uniform(0.8, 1.2, (int(near.sum()), 2))
            dcat[near] = cats[src[near]]
        scores = np.round(rng.random(n_dt), 3)
        for j in range(n_dt):
            results.append({
                "image_id": img["id"], "category_id": int(dcat[j]),
                "bbox": [float(dxy[j, 0]), float(dxy[j, 1]), float(dwh[j, 0]), float(dwh[j, 1])],
                "score": float(scores[j]),
            })
    return {"images": images, "annotations": annotations, "categories": categories}, results


def pycocotools_stats(gt: dict, dt: list[dict]) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dt))  # loadRes edits the dicts
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats)


def faster_coco_eval_stats(gt: dict, dt: list[dict]) -> list[float]:
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(copy.deepcopy(gt))
        coco_dt = coco_gt.loadRes(copy.deepcopy(dt))
        ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats[:12])


def cases(device: str, quick: bool) -> list[BenchCase]:
    import detops.eval
    from detops._extras import optional_import

    # The rivals are optional (detops[bench]); without them there is nothing to compare.
    have_pycocotools = optional_import("pycocotools", "bench", "the pycocotools comparison") is not None
    have_faster = optional_import("faster_coco_eval", "bench", "the faster-coco-eval comparison") is not None
    out = []
    if quick:
        sizes = [50]
    elif device.startswith("cuda"):
        # The GPU suite has a few minutes for every op: the CPU baselines are
        # timed at 1000 images there, pycocotools (~6 s a call) at 200.
        sizes = [1000]
    else:
        sizes = [1000, 5000]
    for n in sizes:
        gt, dt = synthetic_coco(n)
        size = f"{n} images, {len(dt)} dets, 80 cats"
        if device.startswith("cuda") and not quick and have_pycocotools:
            small_gt, small_dt = synthetic_coco(200)
            out.append(BenchCase(
                op="coco_map", name="coco_stats bbox", size=f"200 images, {len(small_dt)} dets, 80 cats",
                detops=lambda: detops.eval.coco_stats(small_gt, small_dt, "bbox", device=device),
                baseline=lambda: pycocotools_stats(small_gt, small_dt), baseline_name="pycocotools",
            ))

        def ours(gt=gt, dt=dt):
            return detops.eval.coco_stats(gt, dt, "bbox", device=device)

        # Baselines copy their inputs (pycocotools' loadRes edits them); the copy
        # is part of using them correctly, and costs well under 5 % of their time.
        if (not device.startswith("cuda") or quick) and have_pycocotools:
            out.append(BenchCase(
                op="coco_map", name="coco_stats bbox", size=size,
                detops=ours, baseline=lambda gt=gt, dt=dt: pycocotools_stats(gt, dt),
                baseline_name="pycocotools",
            ))
        if not have_faster:
            continue
        out.append(BenchCase(
            op="coco_map", name="coco_stats bbox", size=size,
            detops=ours, baseline=lambda gt=gt, dt=dt: faster_coco_eval_stats(gt, dt),
            baseline_name="faster-coco-eval",
        ))
    return out
