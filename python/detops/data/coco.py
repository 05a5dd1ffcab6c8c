"""A COCO-format dataset on disk: an annotations JSON plus an image folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ..eval import mask as _mask

__all__ = ["CocoDetection"]


class CocoDetection(torch.utils.data.Dataset):
    """Images and instances of a COCO-format dataset.

    Item ``i`` is ``(image, target)`` for the ``i``-th image of the JSON's
    ``images`` list:

    * ``image``: ``[3, H, W]`` float32 in ``[0, 1]`` (grey and RGBA files are
      converted to RGB);
    * ``target["boxes"]``: ``[N, 4]`` float32 ``(x1, y1, x2, y2)`` from COCO's
      ``[x, y, w, h]``;
    * ``target["labels"]``: ``[N]`` int64, the annotations' ``category_id`` (or
      contiguous ``1..K`` with ``contiguous_labels=True``);
    * ``target["masks"]``: ``[N, H, W]`` uint8 from polygons, list-count or
      compressed RLE (only with ``masks=True``);
    * ``target["iscrowd"]``, ``target["area"]``, ``target["image_id"]``.

    Annotations with a non-positive width or height are skipped, as
    torchvision's reference scripts do.

    Args:
        root: the image folder (``file_name`` is relative to it).
        ann_file: the annotations JSON (a path, or an already loaded dict).
        masks: decode instance masks.
        contiguous_labels: map category ids to ``1..K`` in id order
            (:attr:`category_ids` holds the inverse map).
        transforms: ``callable(image, target) -> (image, target)``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        ann_file: str | os.PathLike | dict,
        *,
        masks: bool = False,
        contiguous_labels: bool = False,
        transforms: Callable[[Tensor, dict], tuple[Tensor, dict]] | None = None,
    ) -> None:
        self.root = Path(root)
        if isinstance(ann_file, dict):
            self.dataset = ann_file
        else:
            with open(ann_file) as f:
                self.dataset = json.load(f)
        for key in ("images", "annotations"):
            if key not in self.dataset:
                raise ValueError(f"ann_file has no {key!r} list: is it a COCO annotations file?")
        self.images: list[dict[str, Any]] = list(self.dataset["images"])
        self.category_ids: list[int] = sorted(c["id"] for c in self.dataset.get("categories", []))
        self._label_of = {cid: k + 1 for k, cid in enumerate(self.category_ids)} if contiguous_labels else None
        self._annotations: dict[int, list[dict]] = {im["id"]: [] for im in self.images}
        for a in self.dataset["annotations"]:
            if a["image_id"] in self._annotations:
                self._annotations[a["image_id"]].append(a)
        self.masks = masks
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.images)

    def _read_image(self, info: dict) -> Tensor:
        from torchvision.io import ImageReadMode, decode_image

        path = self.root / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {info['file_name']!r} of image id {info['id']} not found under {self.root}")
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return decode_image(data, mode=ImageReadMode.RGB).to(torch.float32) / 255

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        info = self.images[index]
        image = self._read_image(info)
        h, w = image.shape[-2:]
        anns = [a for a in self._annotations[info["id"]] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = [a["category_id"] for a in anns]
        if self._label_of is not None:
            labels = [self._label_of[c] for c in labels]
        target: dict[str, Tensor] = {
            "boxes": boxes,
            "labels": torch.tensor(labels, dtype=torch.int64),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
            "area": torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32),
            "image_id": torch.tensor(info["id"], dtype=torch.int64),
        }
        if self.masks:
            decoded = [_mask.rle_decode(_mask.to_rle(a["segmentation"], h, w)) for a in anns]
            target["masks"] = (torch.stack(decoded) if decoded else torch.zeros(0, h, w, dtype=torch.bool)).to(torch.uint8)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
