"""Mask pasting against torchvision's paste_masks_in_image (bit for bit on the
CPU, on every resize path torch takes: small and large boxes, each CPU build
torch may run) and a float64 reference: random masks and boxes, boxes across
the image border, degenerate and huge boxes, empty input, the batched form,
reduced precision, opcheck, torch.compile, TorchScript and bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

import detops
from detops.ops.paste_masks import paste_boxes
from tests.helpers import assert_close


def masks_and_boxes(n: int, height: int, width: int, *, m: int = 28, seed: int = 0, dtype=torch.float32,
                    max_frac: float = 0.6, device="cpu"):
    """Mask probabilities and boxes that overlap their image (torchvision's paste
    fails on a box wholly outside it), some crossing its border."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, 1, m, m, generator=g, dtype=torch.float64)
    size = torch.tensor([width, height], dtype=torch.float64)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size * 0.95 - 3
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * size * max_frac + 4
    boxes = torch.cat([xy, xy + wh], 1)
    return masks.to(device=device, dtype=dtype), boxes.to(device=device, dtype=dtype)


def assert_pastes_like_torchvision(masks, boxes, shape, device, padding=1):
    ours = detops.paste_masks_in_image(masks, boxes, shape, padding=padding)
    expected = tv_paste(masks.cpu(), boxes.cpu(), shape, padding=padding).to(device)
    assert ours.shape == expected.shape and ours.dtype == expected.dtype
    if device == "cpu":
        assert torch.equal(ours, expected)
    else:  # torch's CUDA resize rounds its own way
        assert_close(ours, expected, rtol=0, atol=1e-6 if masks.dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(512, 512), (300, 417), (64, 90), (17, 5)])
def test_equals_torchvision(dtype, shape, device):
    for seed in range(3):
        masks, boxes = masks_and_boxes(40, *shape, seed=seed, dtype=dtype, device=device)
        assert_pastes_like_torchvision(masks, boxes, shape, device)


@pytest.mark.parametrize("max_frac", [0.05, 0.15, 1.0])
def test_small_and_large_boxes_take_torchs_paths(max_frac, device):
    # h + w <= 128 is torch's channels-last resize, larger boxes its generic one
    masks, boxes = masks_and_boxes(60, 400, 300, seed=5, max_frac=max_frac, device=device)
    assert_pastes_like_torchvision(masks, boxes, (400, 300), device)


@pytest.mark.parametrize("padding", [0, 1, 3])
@pytest.mark.parametrize("m", [1, 14, 28])
def test_padding_and_mask_sizes(padding, m, device):
    masks, boxes = masks_and_boxes(20, 120, 160, m=m, seed=m, device=device)
    assert_pastes_like_torchvision(masks, boxes, (120, 160), device, padding=padding)


def test_boxes_equal_to_mask_size_and_degenerate(device):
    # a box exactly the padded mask's size (torch copies), zero-size and reversed boxes
    masks, _ = masks_and_boxes(6, 100, 100, device=device)
    boxes = torch.tensor([[10.0, 10.0, 36.0, 36.0], [5.0, 5.0, 5.0, 5.0], [40.0, 30.0, 40.0, 60.0],
                          [0.0, 0.0, 99.0, 99.0], [50.0, 50.0, 50.5, 50.25], [20.0, 20.0, 19.0, 60.0]],
                         device=device)
    assert_pastes_like_torchvision(masks, boxes, (100, 100), device)


def test_against_float64_reference(device):
    masks, boxes = masks_and_boxes(30, 200, 150, seed=3, device=device)
    ours = detops.paste_masks_in_image(masks, boxes, (200, 150))
    ref = detops.paste_masks_in_image(masks.double(), boxes.double(), (200, 150))
    # boxes round to the same integers in both dtypes here, so only the resize's rounding differs: a
    # float32 source position (up to 30 px) is off by a few 1e-6 px, times a step of up to 1 between taps
    same = torch.equal(paste_boxes(boxes, 28, 1),
                       paste_boxes(boxes.double(), 28, 1))
    assert same
    assert_close(ours.double(), ref, rtol=0, atol=1e-5)


def test_empty_and_boxes_outside(device):
    masks, boxes = masks_and_boxes(0, 50, 60, device=device)
    out = detops.paste_masks_in_image(masks, boxes, (50, 60))
    assert out.shape == (0, 1, 50, 60)
    assert out.shape == tv_paste(masks.cpu(), boxes.cpu(), (50, 60)).shape
    masks, _ = masks_and_boxes(3, 50, 60, device=device)
    far = torch.tensor([[500.0, 500.0, 600.0, 600.0], [-90.0, -90.0, -70.0, -60.0], [1e12, -1e12, 3e12, 1e12]],
                       device=device)
    out = detops.paste_masks_in_image(masks, far, (50, 60))  # torchvision raises here
    assert out.shape == (3, 1, 50, 60) and not out.any()
    assert detops.paste_masks_in_image(masks, far, (0, 0)).shape == (3, 1, 0, 0)


def test_batched_equals_per_image(device):
    shapes = [(120, 90), (64, 150), (100, 100)]
    masks, boxes, sizes, expected = [], [], [], []
    for i, (h, w) in enumerate(shapes):
        m, b = masks_and_boxes(7, h, w, seed=10 + i, device=device)
        masks.append(m)
        boxes.append(b)
        sizes.append(torch.tensor([[h, w]] * 7, device=device))
        expected.append(detops.paste_masks_in_image(m, b, (h, w)))
    out = detops.paste_masks(torch.cat(masks), torch.cat(boxes), torch.cat(sizes), [128, 160])
    assert out.shape == (21, 1, 128, 160)
    for i, (h, w) in enumerate(shapes):
        part = out[7 * i:7 * (i + 1)]
        assert torch.equal(part[..., :h, :w], expected[i])
        assert not part[..., h:, :].any() and not part[..., :, w:].any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_close_to_float32(dtype, device):
    masks, boxes = masks_and_boxes(20, 90, 110, seed=2, device=device)
    ours = detops.paste_masks_in_image(masks.to(dtype), boxes, (90, 110))
    ref = detops.paste_masks_in_image(masks.to(dtype).float(), boxes, (90, 110))
    assert ours.dtype == dtype
    assert_close(ours.float(), ref, rtol=0, atol=1e-2 if dtype == torch.bfloat16 else 1e-3)


_CAPABILITY_SCRIPT = """
import torch, detops
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv
g = torch.Generator().manual_seed(0)
for fraction in (0.08, 0.7):
    masks = torch.rand(50, 1, 28, 28, generator=g)
    xy = torch.rand(50, 2, generator=g) * 180
    boxes = torch.cat([xy, xy + torch.rand(50, 2, generator=g) * 200 * fraction + 1], 1)
    for dtype in (torch.float32, torch.float64):
        m, b = masks.to(dtype), boxes.to(dtype)
        assert torch.equal(detops.paste_masks_in_image(m, b, (200, 200)), tv(m, b, (200, 200))), (fraction, dtype)
print(torch.backends.cpu.get_cpu_capability())
"""


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_every_torch_cpu_build(capability):
    """torch runs the resize build its CPU allows (ATEN_CPU_CAPABILITY lowers it):
    the paste follows that build's rounding (fused multiply-adds or not)."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    proc = subprocess.run([sys.executable, "-c", _CAPABILITY_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran = proc.stdout.strip().splitlines()[-1]
    if ran.lower() != capability:
        pytest.skip(f"this CPU runs torch's {ran} build, not {capability}")


def test_opcheck():
    masks, boxes = masks_and_boxes(5, 40, 50)
    int_boxes = paste_boxes(boxes, 28, 1)
    sizes = torch.tensor([[40, 50]] * 5)
    torch.library.opcheck(torch.ops.detops.paste_masks, (masks, int_boxes, sizes, 40, 50, 1))
    torch.library.opcheck(torch.ops.detops.paste_masks, (masks[:0], int_boxes[:0], sizes[:0], 40, 50, 1))


def test_compile_fullgraph_and_script():
    masks, boxes = masks_and_boxes(9, 70, 80, seed=4)
    eager = detops.paste_masks_in_image(masks, boxes, (70, 80))
    compiled = torch.compile(detops.paste_masks_in_image, fullgraph=True)
    assert torch.equal(compiled(masks, boxes, (70, 80)), eager)
    scripted = torch.jit.script(detops.paste_masks_in_image)
    assert torch.equal(scripted(masks, boxes, (70, 80)), eager)


def test_bad_input():
    masks, boxes = masks_and_boxes(4, 40, 50)
    with pytest.raises(TypeError, match="masks must be a float16"):
        detops.paste_masks_in_image(masks.to(torch.int32), boxes, (40, 50))
    with pytest.raises(ValueError, match=r"masks must have shape \[N, 1, M_h, M_w\]"):
        detops.paste_masks_in_image(masks[:, 0], boxes, (40, 50))
    with pytest.raises(ValueError, match="same number of rows"):
        detops.paste_masks_in_image(masks, boxes[:3], (40, 50))
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\]"):
        detops.paste_masks_in_image(masks, boxes[:, :3], (40, 50))
    with pytest.raises(ValueError, match="boxes must be finite"):
        detops.paste_masks_in_image(masks, torch.where(boxes > 20, float("nan"), boxes), (40, 50))
    with pytest.raises(ValueError, match="padding must be >= 0"):
        detops.paste_masks_in_image(masks, boxes, (40, 50), padding=-1)
    with pytest.raises(ValueError, match="img_shape must be >= 0"):
        detops.paste_masks_in_image(masks, boxes, (-1, 50))
    with pytest.raises(ValueError, match="no gradient"):
        detops.paste_masks_in_image(masks.requires_grad_(), boxes, (40, 50))
    with pytest.raises(ValueError, match="at least one pixel"):
        detops.paste_masks_in_image(masks[:, :, :0], boxes, (40, 50))
    with pytest.raises(ValueError, match="image_sizes must have shape"):
        detops.paste_masks(masks.detach(), boxes, torch.zeros(3, 2, dtype=torch.int64), [40, 50])
    with pytest.raises(RuntimeError, match="boxes must be int64"):
        torch.ops.detops.paste_masks(masks.detach(), boxes, torch.zeros(4, 2, dtype=torch.int64), 40, 50, 1)
