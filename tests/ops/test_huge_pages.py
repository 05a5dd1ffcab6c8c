"""Large CPU outputs (32 MiB and up) are advised onto transparent huge pages
(csrc/common/huge_pages.h), which halves the cost of their first write: the
hint reaches the output's memory (its mapping carries the "hg" flag), the
values still equal torchvision's, and small outputs are left alone."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torchvision.ops as tvo
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

import detops

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"),
    reason="transparent huge pages are a Linux feature, absent here",
)

MIB = 1 << 20


def vm_flags(address: int) -> set[str]:
    """The VmFlags of the mapping of this process that holds address."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


def advised(t: torch.Tensor) -> bool:
    middle = t.data_ptr() + t.numel() * t.element_size() // 2
    return "hg" in vm_flags(middle)


def rois(n: int, size: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = torch.rand(n, 2, generator=g) * size * 0.4 + 1
    return torch.cat([torch.zeros(n, 1), xy, xy + wh], 1)


def test_roi_align_output_and_gradient():
    x = torch.randn(2, 256, 128, 128, requires_grad=True)  # 32 MiB: its gradient is advised
    r = rois(40, 128, 0)
    r[20:, 0] = 1
    ours = detops.roi_align(x, r, 7, 1.0, 2, True)
    expected = tvo.roi_align(x, r, 7, 1.0, 2, True)
    assert torch.equal(ours, expected)
    g = torch.randn_like(ours)
    (grad,) = torch.autograd.grad(ours, x, g)
    (tv_grad,) = torch.autograd.grad(expected, x, g)
    assert grad.numel() * 4 >= 32 * MIB and advised(grad)
    assert torch.equal(grad, tv_grad)

    x = torch.randn(1, 16, 64, 64)
    big = rois(1000, 64, 1)  # 1000 x 16 x 23 x 23 floats: 34 MB
    ours = detops.roi_align(x, big, 23, 1.0, 2, True)
    assert ours.numel() * 4 >= 32 * MIB and advised(ours)
    assert torch.equal(ours, tvo.roi_align(x, big, 23, 1.0, 2, True))


def test_small_outputs_are_left_alone():
    x = torch.randn(1, 16, 64, 64)
    small = detops.roi_align(x, rois(10, 64, 2), 7, 1.0, 2, True)
    assert not advised(small)


def test_roi_pool_output():
    x = torch.randn(1, 16, 64, 64)
    r = rois(1000, 64, 3)
    ours = detops.roi_pool(x, r, 23, 1.0)
    assert advised(ours)
    assert torch.equal(ours, tvo.roi_pool(x, r, 23, 1.0))


def test_paste_masks_output():
    g = torch.Generator().manual_seed(4)
    masks = torch.rand(40, 1, 28, 28, generator=g)  # into 40 x 512 x 512 floats: 42 MB
    boxes = rois(40, 512, 5)[:, 1:]
    ours = detops.paste_masks_in_image(masks, boxes, (512, 512), padding=1)
    assert advised(ours)
    assert torch.equal(ours, tv_paste(masks, boxes, (512, 512), padding=1))


def test_box_iou_output():
    a, b = rois(3000, 500, 6)[:, 1:], rois(3000, 500, 7)[:, 1:]  # 3000 x 3000 floats: 36 MB
    ours = detops.box_iou(a, b)
    assert advised(ours)
    assert torch.equal(ours, tvo.box_iou(a, b))
