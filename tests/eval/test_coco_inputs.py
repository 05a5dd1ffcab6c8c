"""coco_stats takes ground truth and results as dicts, JSON paths or
pycocotools COCO objects, and names a missing field."""

import contextlib
import io
import json

import pytest

from detops.data import SyntheticShapes
from detops.eval import coco_stats

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402


@pytest.fixture
def gt_and_dt():
    gt = SyntheticShapes(6, 64, seed=5).coco_ground_truth()
    dt = []
    for k, a in enumerate(gt["annotations"]):
        x, y, w, h = a["bbox"]
        dt.append({"image_id": a["image_id"], "category_id": a["category_id"],
                   "bbox": [x + k % 3, y, w, h - k % 2], "score": 0.3 + 0.07 * (k % 9)})
    return gt, dt


def test_paths_and_coco_objects_equal_dicts(gt_and_dt, tmp_path):
    gt, dt = gt_and_dt
    want = coco_stats(gt, dt)
    gt_path, dt_path = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_path.write_text(json.dumps({**gt, "annotations": [{k: v for k, v in a.items() if k != "segmentation"}
                                                          for a in gt["annotations"]]}))
    dt_path.write_text(json.dumps(dt))
    assert coco_stats(str(gt_path), str(dt_path)) == want
    assert coco_stats(gt_path, dt) == want
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(str(dt_path))
    assert coco_stats(coco_gt, coco_dt) == want
    assert coco_stats(coco_gt, dt) == want


def test_missing_score_names_the_field(gt_and_dt):
    gt, dt = gt_and_dt
    del dt[2]["score"]
    with pytest.raises(ValueError, match="detection 2 has no 'score'"):
        coco_stats(gt, dt)


def test_wrong_types(gt_and_dt):
    gt, dt = gt_and_dt
    with pytest.raises(TypeError, match="gt must be"):
        coco_stats(42, dt)
    with pytest.raises(TypeError, match="dt must be"):
        coco_stats(gt, {"a": 1})
