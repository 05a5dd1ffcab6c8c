"""box_convert, box_area, clip_boxes_to_image, remove_small_boxes, masks_to_boxes
and _box_inter_union: bit-equal to torchvision on random and edge-case boxes."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision.ops as tvo
from torchvision.ops import boxes as tv_boxes

import detops

FORMATS = ["xyxy", "xywh", "cxcywh"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.uint8]


def _boxes(n: int, dtype: torch.dtype, seed: int = 0, lead: tuple[int, ...] = ()) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    b = torch.rand(*lead, n, 4, generator=gen, dtype=torch.float64) * 60 - 5
    b[..., 2:] += b[..., :2]
    if n > 4:  # degenerate, tied and huge boxes
        b[..., 0, :] = b[..., 1, :]
        b[..., 2, 2:] = b[..., 2, :2]
        b[..., 3, :] = b[..., 3, :] * 1e6
    if dtype.is_floating_point:
        return b.to(dtype)
    return b.abs().clamp(max=250).to(dtype)


def _with_nan(b: torch.Tensor) -> torch.Tensor:
    b = b.clone()
    b[1, 0] = float("nan")
    b[4, 3] = float("inf")
    return b


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.nan_to_num(7.5), b.nan_to_num(7.5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_fmt,out_fmt", list(itertools.product(FORMATS, FORMATS)))
def test_box_convert(in_fmt, out_fmt, dtype):
    for b in (_boxes(40, dtype), _boxes(7, dtype, lead=(2, 3)), _boxes(0, dtype)):
        assert _equal(detops.box_convert(b, in_fmt, out_fmt), tvo.box_convert(b, in_fmt, out_fmt))
    if dtype.is_floating_point:
        b = _with_nan(_boxes(20, dtype))
        assert _equal(detops.box_convert(b, in_fmt, out_fmt), tvo.box_convert(b, in_fmt, out_fmt))


@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16])
@pytest.mark.parametrize("fmt", FORMATS)
def test_box_area_and_inter_union(fmt, dtype):
    a, b = _boxes(30, dtype, 1), _boxes(20, dtype, 2)
    assert _equal(detops.box_area(a, fmt), tvo.box_area(a, fmt))
    for x, y in ((a, b), (_boxes(5, dtype, 3, lead=(2,)), _boxes(6, dtype, 4, lead=(2,))), (a[:0], b)):
        inter, union = detops._box_inter_union(x, y, fmt)
        ref_inter, ref_union = tv_boxes._box_inter_union(x, y, fmt)
        assert _equal(inter, ref_inter) and _equal(union, ref_union)
    if dtype.is_floating_point:
        a = _with_nan(a)
        assert _equal(detops.box_area(a, fmt), tvo.box_area(a, fmt))
        inter, union = detops._box_inter_union(a, b, fmt)
        ref_inter, ref_union = tv_boxes._box_inter_union(a, b, fmt)
        assert _equal(inter, ref_inter) and _equal(union, ref_union)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_boxes_to_image(dtype):
    for b in (_boxes(40, dtype), _boxes(6, dtype, lead=(3,)), _boxes(0, dtype)):
        for size in ((30, 45), (0, 10), (1000, 1)):
            try:
                ref = tvo.clip_boxes_to_image(b, size)
            except RuntimeError:  # a bound outside the dtype (uint8): detops fails alike
                with pytest.raises(RuntimeError):
                    detops.clip_boxes_to_image(b, size)
                continue
            assert _equal(detops.clip_boxes_to_image(b, size), ref)
    if dtype.is_floating_point:
        b = _with_nan(_boxes(20, dtype))
        assert _equal(detops.clip_boxes_to_image(b, (30, 20)), tvo.clip_boxes_to_image(b, (30, 20)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_remove_small_boxes(dtype):
    b = _boxes(60, dtype)
    for min_size in (0.0, 1e-2, 10, 30.5, 1e9):
        assert _equal(detops.remove_small_boxes(b, min_size), tvo.remove_small_boxes(b, min_size))
    assert _equal(detops.remove_small_boxes(b[:0], 1.0), tvo.remove_small_boxes(b[:0], 1.0))
    if dtype.is_floating_point:
        b = _with_nan(b)
        assert _equal(detops.remove_small_boxes(b, 5.0), tvo.remove_small_boxes(b, 5.0))


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.float32, torch.int64])
def test_masks_to_boxes(dtype):
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(9, 23, 31, generator=gen) > 0.97
    masks[0] = False  # empty mask
    masks[1] = False
    masks[1, 5, 7] = True  # a single pixel
    masks[2] = True  # the whole image
    masks[3] = False
    masks[3, :, 30] = True  # one column at the edge
    masks = masks.to(dtype)
    assert _equal(detops.masks_to_boxes(masks), tvo.masks_to_boxes(masks))
    empty = masks[:0]
    assert _equal(detops.masks_to_boxes(empty), tvo.masks_to_boxes(empty))


def test_bad_inputs_name_the_argument():
    b = _boxes(4, torch.float32)
    with pytest.raises(ValueError, match="in_fmt"):
        detops.box_convert(b, "xyxyxyxy", "xyxy")
    with pytest.raises(ValueError, match="fmt"):
        detops.box_area(b, "xywhr")
    with pytest.raises(ValueError, match="boxes"):
        detops.clip_boxes_to_image(torch.zeros(3, 5), (4, 4))
    with pytest.raises(ValueError, match="masks"):
        detops.masks_to_boxes(torch.ones(3, 4))
    with pytest.raises(TypeError, match="boxes"):
        detops.remove_small_boxes([[0, 0, 1, 1]], 1.0)
