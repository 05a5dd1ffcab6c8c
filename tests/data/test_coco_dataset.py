"""CocoDetection reads a COCO-format folder: boxes, polygons, RLE (compressed
and list counts) and crowd flags, with masks equal to pycocotools'."""

import json

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from detops.data import CocoDetection

pycocotools = pytest.importorskip("pycocotools")
from pycocotools import mask as pmask  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402


@pytest.fixture
def coco_folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = []
    for i, (h, w) in enumerate([(40, 60), (32, 32)]):
        pixels = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        write_png(pixels, str(tmp_path / f"img{i}.png"))
        images.append({"id": 10 + i, "file_name": f"img{i}.png", "height": h, "width": w})
    dense = np.zeros((32, 32), dtype=np.uint8, order="F")
    dense[4:20, 6:15] = 1
    compressed = pmask.encode(np.asfortranarray(dense))
    compressed["counts"] = compressed["counts"].decode()
    list_counts = {"size": [40, 60], "counts": [100, 30, 70, 30, 2170]}
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 3, "bbox": [5, 6, 20, 10], "area": 150.0, "iscrowd": 0,
         "segmentation": [[5, 6, 25, 6, 25, 16, 5, 16]]},
        {"id": 2, "image_id": 10, "category_id": 7, "bbox": [1, 1, 10, 30], "area": 60.0, "iscrowd": 1,
         "segmentation": list_counts},
        {"id": 3, "image_id": 10, "category_id": 3, "bbox": [0, 0, 0, 5], "area": 0.0, "iscrowd": 0,
         "segmentation": [[0, 0, 0, 5, 0, 5]]},  # zero width: skipped
        {"id": 4, "image_id": 11, "category_id": 7, "bbox": [6, 4, 9, 16], "area": float(dense.sum()), "iscrowd": 0,
         "segmentation": compressed},
    ]
    ann = {"images": images, "annotations": annotations, "categories": [{"id": 3}, {"id": 7}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(ann))
    return tmp_path, path


def test_reads_boxes_labels_crowd_and_masks_like_pycocotools(coco_folder):
    root, ann_file = coco_folder
    ds = CocoDetection(root, ann_file, masks=True)
    assert len(ds) == 2
    coco = COCO(str(ann_file))
    for i, image_id in enumerate([10, 11]):
        image, t = ds[i]
        info = coco.imgs[image_id]
        assert image.shape == (3, info["height"], info["width"]) and image.dtype == torch.float32
        anns = [a for a in coco.imgToAnns[image_id] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        assert t["labels"].tolist() == [a["category_id"] for a in anns]
        assert t["iscrowd"].tolist() == [a["iscrowd"] for a in anns]
        want = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                             for a in anns], dtype=torch.float32)
        assert torch.equal(t["boxes"], want)
        for m, a in zip(t["masks"], anns):
            assert torch.equal(m, torch.from_numpy(coco.annToMask(a)))
        assert int(t["image_id"]) == image_id


def test_contiguous_labels_and_pixels(coco_folder):
    root, ann_file = coco_folder
    ds = CocoDetection(root, json.loads(ann_file.read_text()), contiguous_labels=True)
    assert ds.category_ids == [3, 7]
    assert ds[0][1]["labels"].tolist() == [1, 2]
    from torchvision.io import read_image

    assert torch.equal(ds[1][0], read_image(str(root / "img1.png")).float() / 255)


def test_clear_errors(coco_folder, tmp_path):
    root, ann_file = coco_folder
    with pytest.raises(ValueError, match="'images'"):
        CocoDetection(root, {"annotations": []})
    ds = CocoDetection(tmp_path / "elsewhere", ann_file)
    with pytest.raises(FileNotFoundError, match="img0.png"):
        ds[0]
