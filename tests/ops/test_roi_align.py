"""roi_align / RoIAlign / MultiScaleRoIAlign against torchvision and a float64
reference: forward, gradients (gradcheck and torchvision's), layouts, dtypes,
edge-case boxes, opcheck, torch.compile and bad inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
import torchvision

import detops
from tests.conftest import requires_cuda
from tests.helpers import assert_close, run_poisoning_cuda_call


def make_rois(k: int, n: int, size: tuple[int, int], *, scale: float = 1.0, generator=None, dtype=torch.float64):
    """``[k, 5]`` rois over an image of ``size / scale`` pixels: most inside, some
    partly or wholly outside, plus zero-size and inverted ones."""
    h, w = size[0] / scale, size[1] / scale
    g = generator
    xy = torch.rand(k, 2, dtype=torch.float64, generator=g) * torch.tensor([w * 1.3, h * 1.3]) - torch.tensor([w * 0.15, h * 0.15])
    wh = torch.rand(k, 2, dtype=torch.float64, generator=g) * torch.tensor([w * 0.6, h * 0.6])
    boxes = torch.cat([xy, xy + wh], dim=1)
    if k >= 6:
        boxes[0, 2:] = boxes[0, :2]  # zero size
        boxes[1, 2:] = boxes[1, :2] - 3.0  # inverted
        boxes[2] = torch.tensor([-50.0, -40.0, -10.0, -5.0])  # wholly outside (top-left)
        boxes[3] = torch.tensor([w + 5, h + 5, w + 30, h + 20])  # wholly outside (bottom-right)
        boxes[4] = torch.tensor([-5.0, -5.0, w + 5, h + 5])  # covers everything
    batch = torch.randint(0, n, (k, 1), generator=g).to(torch.float64)
    return torch.cat([batch, boxes], dim=1).to(dtype)


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A fresh copy of ``x`` in the requested memory format."""
    return x.detach().clone(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 4])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_torchvision_fp32(device, sampling_ratio, aligned, channels_last):
    g = torch.Generator().manual_seed(1000 + sampling_ratio * 10 + aligned * 2 + channels_last)
    x = torch.randn(2, 5, 13, 17, generator=g)
    rois = make_rois(30, 2, (13, 17), scale=0.5, generator=g, dtype=torch.float32)
    x, rois = x.to(device), rois.to(device)
    xd = _layout(x, channels_last).requires_grad_()
    xt = x.detach().clone().requires_grad_()
    out = detops.roi_align(xd, rois, (3, 4), 0.5, sampling_ratio, aligned)
    ref = torchvision.ops.roi_align(xt, rois, (3, 4), 0.5, sampling_ratio, aligned)
    assert_close(out, ref, rtol=1e-5, atol=1e-6)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn(ref.shape, generator=g).to(device)
    out.backward(grad)
    ref.backward(grad)
    assert_close(xd.grad, xt.grad, rtol=1e-5, atol=1e-5)
    if channels_last:
        assert xd.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bit_equal_to_torchvision_on_cpu(dtype, sampling_ratio, aligned, channels_last):
    """The CPU kernels follow torchvision's order of operations: forward and
    input gradient are torch.equal to torchvision's, on boxes inside, across
    and outside the map, zero-size, inverted, tiny and huge, over several images."""
    g = torch.Generator().manual_seed(2000 + sampling_ratio * 10 + aligned * 2 + channels_last)
    x = torch.randn(3, 5, 19, 23, generator=g, dtype=dtype)
    rois = make_rois(40, 3, (19, 23), scale=0.5, generator=g, dtype=dtype)
    rois[5, 1:] = torch.tensor([7.3, 9.1, 7.31, 9.12])  # tiny
    rois[6, 1:] = torch.tensor([-300.7, -250.2, 410.9, 380.4])  # far larger than the map
    rois[7, 1:] = torch.tensor([0.0, 0.0, 46.0, 38.0])  # the whole map exactly
    xd = _layout(x, channels_last).requires_grad_()
    xt = x.detach().clone().requires_grad_()
    out = detops.roi_align(xd, rois, (3, 4), 0.5, sampling_ratio, aligned)
    ref = torchvision.ops.roi_align(xt, rois, (3, 4), 0.5, sampling_ratio, aligned)
    assert torch.equal(out, ref)
    grad = torch.randn(ref.shape, generator=g, dtype=dtype)
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(xd.grad, xt.grad)


@pytest.mark.parametrize("channels_last", [False, True])
def test_non_finite_first_pixel_poisons_bins_with_dropped_samples(channels_last):
    """torchvision adds each sample outside the map as 0 * input[0]: NaN when
    that pixel is not finite. detops gives the same NaNs, and elsewhere equal values."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 8, 9, generator=g)
    x[0, 0, 0, 0] = float("inf")
    x[1, 2, 0, 0] = float("nan")
    rois = make_rois(12, 2, (8, 9), generator=g, dtype=torch.float32)
    for sampling_ratio in (-1, 2):
        out = detops.roi_align(_layout(x, channels_last), rois, 3, 1.0, sampling_ratio)
        ref = torchvision.ops.roi_align(x, rois, 3, 1.0, sampling_ratio)
        assert ref.isnan().any()
        assert torch.equal(out.isnan(), ref.isnan())
        assert torch.equal(out.nan_to_num(0.0), ref.nan_to_num(0.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("strided", [False, True])
def test_sparse_and_crowded_images_bit_equal(dtype, sampling_ratio, strided):
    """The NCHW forward reads an image's planes directly when its RoIs are few
    and far apart, and through an interleaved tile of 16 channels when they
    read their window several times over. Both, side by side in one call,
    equal torchvision's bits, with a channel count that leaves a partial tile,
    a strided map, and non-finite first pixels poisoning bins that drop samples."""
    g = torch.Generator().manual_seed(40 + sampling_ratio + strided)
    base = torch.randn(2, 20, 64, 128 if strided else 64, generator=g, dtype=dtype)
    x = base[..., ::2] if strided else base
    x[0, 3, 0, 0] = float("nan")
    x[1, 17, 0, 0] = float("inf")
    sparse = torch.tensor([[0, 1.0, 2.0, 4.0, 5.0], [0, 55.0, 57.0, 61.0, 62.0], [0, -6.0, -5.0, 3.0, 2.0]], dtype=dtype)
    crowded = make_rois(60, 1, (64, 64), generator=g, dtype=dtype)
    crowded[:, 0] = 1
    rois = torch.cat([crowded[:30], sparse, crowded[30:]])
    out = detops.roi_align(x, rois, (5, 6), 1.0, sampling_ratio)
    ref = torchvision.ops.roi_align(x.contiguous(), rois, (5, 6), 1.0, sampling_ratio)
    assert ref[30:33].isnan().any() and ref[:30].isnan().any()
    assert torch.equal(out.isnan(), ref.isnan())
    assert torch.equal(out.nan_to_num(0.0), ref.nan_to_num(0.0))


_CAPABILITY_SCRIPT = """
import itertools, sys, torch
from tests.ops.test_roi_align import test_sparse_and_crowded_images_bit_equal as check
for dtype, ratio, strided in itertools.product((torch.float32, torch.float64), (-1, 2), (False, True)):
    check(dtype, ratio, strided)
print(torch.backends.cpu.get_cpu_capability())
"""


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_every_torch_cpu_build(capability):
    """The interleaved tile's RoI loop runs the vector width of torch's CPU build
    (ATEN_CPU_CAPABILITY lowers it): each build equals torchvision's bits."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", _CAPABILITY_SCRIPT], env=env, cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran = proc.stdout.strip().splitlines()[-1]
    if ran.lower() != capability:
        pytest.skip(f"this CPU runs torch's {ran} build, not {capability}")


def test_boxes_as_list_and_module(device):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 10, 12, generator=g).to(device)
    boxes = [make_rois(7, 1, (10, 12), generator=g, dtype=torch.float32)[:, 1:].to(device) for _ in range(3)]
    boxes[1] = boxes[1][:0]  # an image without boxes
    out = detops.roi_align(x, boxes, 2, 1.0, 2)
    ref = torchvision.ops.roi_align(x, boxes, 2, 1.0, 2)
    assert_close(out, ref, rtol=1e-5, atol=1e-6)
    module = detops.RoIAlign((2, 3), 0.5, -1, aligned=True)
    ref_module = torchvision.ops.RoIAlign((2, 3), 0.5, -1, aligned=True)
    assert_close(module(x, boxes), ref_module(x, boxes), rtol=1e-5, atol=1e-6)
    assert "RoIAlign(output_size=(2, 3)" in repr(module)


@pytest.mark.parametrize("aligned", [False, True])
def test_float64_reference_and_gradcheck(aligned):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=g)
    rois = make_rois(8, 2, (6, 7), generator=g)
    out = detops.roi_align(x, rois, (2, 3), 1.0, -1, aligned)
    ref = torchvision.ops.roi_align(x, rois, (2, 3), 1.0, -1, aligned)
    assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for channels_last in (False, True):
        xi = _layout(x, channels_last).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: detops.roi_align(t, rois, (2, 3), 1.0, 2, aligned), (xi,))


def test_bilinear_reference_by_hand():
    """One bin, one sample at (y, x) = (1.25, 2.5): the bilinear mix of four pixels."""
    x = torch.arange(20, dtype=torch.float64).reshape(1, 1, 4, 5)
    # Box [2, 1, 3, 1.5] with aligned=True and sampling 1: sample at (1.25 - 0.5, 2.5 - 0.5) = (0.75, 2.0).
    rois = torch.tensor([[0.0, 2.0, 1.0, 3.0, 1.5]], dtype=torch.float64)
    out = detops.roi_align(x, rois, 1, 1.0, 1, aligned=True)
    expected = 0.25 * x[0, 0, 0, 2] + 0.75 * x[0, 0, 1, 2]
    assert_close(out.reshape(()), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_reduced_precision(device, dtype, channels_last):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 9, 11, generator=g).to(device)
    rois = make_rois(12, 2, (9, 11), generator=g, dtype=torch.float32).to(device)
    xh = _layout(x.to(dtype), channels_last).requires_grad_()
    out = detops.roi_align(xh, rois, 3, 1.0, 2)
    assert out.dtype == dtype
    ref = torchvision.ops.roi_align(xh.detach().float(), rois, 3, 1.0, 2)
    tol = 1e-2 if dtype == torch.float16 else 2e-2
    assert_close(out.float(), ref, rtol=tol, atol=tol)
    grad = torch.randn(out.shape, generator=g).to(device)
    out.backward(grad.to(dtype))
    xf = xh.detach().float().requires_grad_()
    torchvision.ops.roi_align(xf, rois, 3, 1.0, 2).backward(grad.to(dtype).float())
    assert xh.grad.dtype == dtype
    assert_close(xh.grad.float(), xf.grad, rtol=tol, atol=tol)


def test_autocast_keeps_map_dtype():
    x = torch.randn(1, 4, 8, 8).to(torch.bfloat16)
    rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = detops.roi_align(x, rois, 2, 1.0, 2)
    assert out.dtype == torch.bfloat16


def test_empty_rois_and_grad(device):
    x = torch.randn(2, 3, 5, 5, device=device, requires_grad=True)
    rois = torch.zeros(0, 5, device=device)
    out = detops.roi_align(x, rois, 2)
    assert out.shape == (0, 3, 2, 2)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_huge_coordinates_and_strided_input():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(2, 8, 12, 10, generator=g)
    x = base[:, ::2]  # non-contiguous channel stride
    rois = torch.tensor(
        [[0, -1e6, -1e6, 1e6, 1e6], [1, 3.0, 2.0, 5e4, 4.0], [1, 1e7, 1e7, 1e7 + 1, 1e7 + 1]], dtype=torch.float32
    )
    out = detops.roi_align(x, rois, 2, 1.0, 2)
    ref = torchvision.ops.roi_align(x.contiguous(), rois, 2, 1.0, 2)
    assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_adaptive_sampling_on_boxes_far_larger_than_the_map(channels_last):
    # 1000 samples per bin along each axis, nearly all outside the map: only
    # the valid ones are visited, and the average still divides by all.
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64, generator=g)
    rois = torch.tensor([[0, -2000.0, -2000.0, 2000.0, 2000.0], [0, -1000.0, 2.0, 1000.0, 4.0]], dtype=torch.float64)
    xd = _layout(x, channels_last).requires_grad_()
    xt = x.detach().clone().requires_grad_()
    out = detops.roi_align(xd, rois, 2, 1.0, -1)
    ref = torchvision.ops.roi_align(xt, rois, 2, 1.0, -1)
    assert_close(out, ref, rtol=1e-10, atol=1e-12)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    out.backward(grad)
    ref.backward(grad)
    assert_close(xd.grad, xt.grad, rtol=1e-10, atol=1e-12)


def test_cpu_backward_is_deterministic():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, 9, 9, generator=g)
    rois = make_rois(40, 2, (9, 9), generator=g, dtype=torch.float32)
    grads = []
    threads = torch.get_num_threads()
    try:
        for n_threads in (threads, 1, threads):  # also independent of the thread count
            torch.set_num_threads(n_threads)
            for channels_last in (False, True):
                xi = _layout(x, channels_last).requires_grad_()
                detops.roi_align(xi, rois, 3, 1.0, 2).backward(torch.ones(40, 4, 3, 3))
                grads.append(xi.grad.contiguous())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[i], grads[i + 2]) for i in range(len(grads) - 2))


@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2, 4])
@pytest.mark.parametrize("aligned", [False, True])
def test_gather_form_gradient_matches_torchvision(sampling_ratio, aligned):
    """The deterministic CUDA backward evaluates gather_roi_grad per map element;
    its CPU reference op must give torchvision's gradient on the same edge cases."""
    g = torch.Generator().manual_seed(50 + sampling_ratio + 10 * aligned)
    # A map of several 16x16 tiles, so that the per-tile RoI lists matter.
    x = torch.randn(2, 2, 37, 50, dtype=torch.float64, generator=g)
    rois = make_rois(30, 2, (37, 50), scale=0.5, generator=g)
    rois[5:10, 1:] = rois[5:10, 1:] / 4  # small boxes: in one or two tiles
    xt = x.clone().requires_grad_()
    ref = torchvision.ops.roi_align(xt, rois, (3, 2), 0.5, sampling_ratio, aligned)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    ref.backward(grad)
    gathered = torch.ops.detops._roi_align_backward_gather(grad, rois, 0.5, 3, 2, 2, 2, 37, 50, sampling_ratio, aligned)
    assert_close(gathered, xt.grad, rtol=1e-10, atol=1e-10)


@requires_cuda
def test_cuda_deterministic_backward_bit_identical():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 16, 25, 30, generator=g).cuda()
    rois = make_rois(200, 2, (25, 30), generator=g, dtype=torch.float32).cuda()
    grad = torch.randn(200, 16, 7, 7, generator=g).cuda()
    results = []
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for channels_last in (False, True, False):
            xi = _layout(x, channels_last).requires_grad_()
            detops.roi_align(xi, rois, 7, 1.0, 2).backward(grad)
            results.append(xi.grad.contiguous())
    finally:
        torch.use_deterministic_algorithms(prev)
    assert torch.equal(results[0], results[2])
    xt = x.detach().clone().requires_grad_()
    torchvision.ops.roi_align(xt, rois, 7, 1.0, 2).backward(grad)
    assert_close(results[0], xt.grad, rtol=1e-4, atol=1e-4)
    assert_close(results[1], xt.grad, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ bad inputs


@requires_cuda
@pytest.mark.parametrize("index", ["-1.0", "float('nan')"])
def test_cuda_bad_batch_index_asserts(index):
    """On CUDA the kernels check the batch index themselves (no host sync): a
    device-side assertion naming it, never an out-of-bounds read."""
    proc = run_poisoning_cuda_call(
        "x = torch.randn(2, 3, 5, 5, device='cuda', requires_grad=True)\n"
        f"rois = torch.tensor([[0.0, 0, 0, 2, 2], [{index}, 0, 0, 2, 2]], device='cuda')\n"
        "detops.roi_align(x, rois, 2).sum().backward()"
    )
    assert proc.returncode != 0
    assert "batch index) must be in [0, N)" in proc.stderr or "device-side assert" in proc.stderr, proc.stderr[-2000:]


def test_bad_inputs():
    x = torch.randn(2, 3, 5, 5)
    good = torch.tensor([[0.0, 0, 0, 2, 2]])
    with pytest.raises(RuntimeError, match=r"batch index\) must be in \[0, 2\)"):
        detops.roi_align(x, torch.tensor([[2.0, 0, 0, 2, 2]]), 2)
    with pytest.raises(RuntimeError, match="batch index"):
        detops.roi_align(x, torch.tensor([[-1.0, 0, 0, 2, 2]]), 2)
    with pytest.raises(RuntimeError, match="batch index"):
        detops.roi_align(x, torch.tensor([[float("nan"), 0, 0, 2, 2]]), 2)
    with pytest.raises(ValueError, match=r"boxes must be a Tensor\[K, 5\]"):
        detops.roi_align(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match=r"boxes\[0\] must have shape \[L, 4\]"):
        detops.roi_align(x, [torch.zeros(3, 5)], 2)
    # output_size 0 and spatial_scale <= 0 run, as in torchvision (issue 11).
    with pytest.raises(ValueError, match="output_size must be >= 0"):
        detops.roi_align(x, good, (-1, 2))
    with pytest.raises(ValueError, match="spatial_scale must be a finite"):
        detops.roi_align(x, good, 2, float("inf"))
    with pytest.raises(ValueError, match=r"input must have shape \[N, C, H, W\]"):
        detops.roi_align(x[0], good, 2)
    with pytest.raises(TypeError, match="input must be float16"):
        detops.roi_align(x.long(), good, 2)
    # Direct calls to the operator are checked in C++ too.
    with pytest.raises(RuntimeError, match=r"rois must have shape \[K, 5\]"):
        torch.ops.detops.roi_align(x, torch.zeros(2, 4), 1.0, 2, 2, 2, False)
    with pytest.raises(RuntimeError, match="output_size must be positive"):
        torch.ops.detops.roi_align(x, good, 1.0, -2, 2, 2, False)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="same device"):
            detops.roi_align(x.cuda(), good, 2)


# ------------------------------------------------------------------ operator checks


def test_opcheck():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 6, 7, generator=g, requires_grad=True)
    rois = make_rois(6, 2, (6, 7), generator=g, dtype=torch.float32)
    torch.library.opcheck(torch.ops.detops.roi_align.default, (x, rois, 1.0, 2, 2, 2, False))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.detops.roi_align.default, (xc, rois, 0.5, 3, 2, -1, True))
    grad = torch.randn(6, 3, 2, 2, generator=g)
    torch.library.opcheck(
        torch.ops.detops.roi_align_backward.default, (grad, rois, 1.0, 2, 2, 2, 3, 6, 7, 2, False, False)
    )
    feats = [torch.randn(2, 3, 8, 8, generator=g, requires_grad=True), torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)]
    levels = torch.tensor([0, 1, 1, 0, 0, 1])
    torch.library.opcheck(
        torch.ops.detops.multi_scale_roi_align.default, (feats, rois, levels, [1.0, 0.5], 2, 2, 2, False)
    )


def test_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 8, 9, generator=g, requires_grad=True)
    rois = make_rois(5, 2, (8, 9), generator=g, dtype=torch.float32)

    def f(t, r):
        return detops.roi_align(t, r, (2, 2), 1.0, 2, True).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x, rois)
    (grad,) = torch.autograd.grad(out, x)
    (ref_grad,) = torch.autograd.grad(f(x, rois), x)
    assert_close(out, f(x, rois))
    assert_close(grad, ref_grad)


# ------------------------------------------------------------------ MultiScaleRoIAlign


def _fpn(g, n=2, c=4, image=(64, 96), channels_last=False, dtype=torch.float32):
    feats = OrderedDict()
    for i, stride in enumerate([4, 8, 16, 32]):
        f = torch.randn(n, c, image[0] // stride, image[1] // stride, generator=g).to(dtype)
        feats[f"p{i + 2}"] = _layout(f, channels_last)
    feats["pool"] = torch.randn(n, c, 1, 2, generator=g).to(dtype)
    return feats


def _fpn_boxes(g, counts, image=(64, 96)):
    boxes = []
    for k in counts:
        xy = torch.rand(k, 2, generator=g) * torch.tensor([image[1], image[0]])
        # Sizes up to 8x the image so that every FPN level gets boxes.
        wh = torch.rand(k, 2, generator=g) ** 2 * torch.tensor([image[1], image[0]]) * 8 + 0.5
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    return boxes


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_multi_scale_matches_torchvision(device, channels_last, sampling_ratio):
    """On CPU the fused multi-level kernel is torch.equal to torchvision's
    per-level roi_align calls, forward and gradient; elsewhere close."""
    g = torch.Generator().manual_seed(20 + channels_last)
    feats = OrderedDict((k, v.to(device)) for k, v in _fpn(g, channels_last=channels_last).items())
    boxes = [b.to(device) for b in _fpn_boxes(g, [40, 25])]
    names = ["p2", "p3", "p4", "p5"]
    ours = detops.MultiScaleRoIAlign(names, 3, sampling_ratio)
    ref = torchvision.ops.MultiScaleRoIAlign(names, 3, sampling_ratio)
    leaves = OrderedDict((k, v.clone().requires_grad_()) for k, v in feats.items())
    ref_leaves = OrderedDict((k, v.detach().contiguous().requires_grad_()) for k, v in feats.items())
    out = ours(leaves, boxes, [(64, 96), (60, 90)])
    expected = ref(ref_leaves, boxes, [(64, 96), (60, 90)])
    exact = device == "cpu"
    assert torch.equal(out, expected) if exact else assert_close(out, expected, rtol=1e-5, atol=1e-6)
    levels = ours._levels(torch.cat([torch.zeros(65, 1, device=device), torch.cat(boxes)], dim=1))
    assert len(levels.unique()) == 4, "the boxes must exercise every level"
    grad = torch.randn(expected.shape, generator=g).to(device)
    out.backward(grad)
    expected.backward(grad)
    for k in names:
        if exact:
            assert torch.equal(leaves[k].grad, ref_leaves[k].grad), k
        else:
            assert_close(leaves[k].grad, ref_leaves[k].grad, rtol=1e-5, atol=1e-5, msg=k)
    assert repr(ours) == repr(ref)


def test_multi_scale_forward_rois_equals_forward():
    """The [K, 5] entry point pools exactly what forward pools from box lists."""
    g = torch.Generator().manual_seed(23)
    feats = _fpn(g)
    boxes = _fpn_boxes(g, [7, 5])
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)])
    shapes = [(64, 96), (60, 90)]
    pooler = detops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 3, 2)
    assert torch.equal(pooler.forward_rois(feats, rois, shapes),
                       detops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 3, 2)(feats, boxes, shapes))


def test_multi_scale_single_level_and_gradcheck():
    g = torch.Generator().manual_seed(30)
    feats = _fpn(g, c=2, dtype=torch.float64)
    boxes = [b.double() for b in _fpn_boxes(g, [5, 4])]
    one = detops.MultiScaleRoIAlign(["p3"], (2, 3), 2)
    ref = torchvision.ops.MultiScaleRoIAlign(["p3"], (2, 3), 2)
    assert_close(one(feats, boxes, [(64, 96)]), ref(feats, boxes, [(64, 96)]), rtol=1e-12, atol=1e-12)

    names = ["p2", "p3", "p4", "p5"]
    module = detops.MultiScaleRoIAlign(names, 2, 2)
    leaves = [feats[k].clone().requires_grad_() for k in names]

    def f(*maps):
        return module(OrderedDict(zip(names, maps)), boxes, [(64, 96)])

    assert torch.autograd.gradcheck(f, tuple(leaves))


def test_multi_scale_bad_levels():
    feats = [torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2)]
    rois = torch.tensor([[0.0, 0, 0, 2, 2]])
    with pytest.raises(RuntimeError, match=r"levels\[0\] must be in \[0, 2\)"):
        torch.ops.detops.multi_scale_roi_align(feats, rois, torch.tensor([2]), [1.0, 0.5], 2, 2, 2, False)
    with pytest.raises(RuntimeError, match="same batch size and channels"):
        torch.ops.detops.multi_scale_roi_align(
            [feats[0], torch.randn(1, 3, 2, 2)], rois, torch.tensor([0]), [1.0, 0.5], 2, 2, 2, False
        )


def test_multi_scale_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(40)
    feats = _fpn(g, c=2)
    boxes = _fpn_boxes(g, [6, 5])
    names = ["p2", "p3", "p4", "p5"]
    module = detops.MultiScaleRoIAlign(names, 2, 2)
    expected = module(feats, boxes, [(64, 96)])  # the first call infers the scales (host values)
    compiled = torch.compile(lambda f, b: module(f, b, [(64, 96)]), fullgraph=True, backend="aot_eager")
    assert_close(compiled(feats, boxes), expected)
