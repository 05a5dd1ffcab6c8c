"""roi_pool / RoIPool against torchvision: forward, argmax gradient, layouts,
dtypes, edge-case boxes, opcheck, torch.compile and bad inputs."""

from __future__ import annotations

import pytest
import torch
import torchvision

import detops
from tests.conftest import requires_cuda
from tests.helpers import assert_close, run_poisoning_cuda_call
from tests.ops.test_roi_align import _layout, make_rois


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_matches_torchvision(device, channels_last, scale):
    g = torch.Generator().manual_seed(100 + channels_last + int(scale * 10))
    # Distinct values (a permutation) so the argmax, hence the gradient, is unique.
    x = (torch.randperm(2 * 5 * 11 * 13, generator=g).float() / 100).reshape(2, 5, 11, 13).to(device)
    rois = make_rois(30, 2, (11, 13), scale=scale, generator=g, dtype=torch.float32).to(device)
    xd = _layout(x, channels_last).requires_grad_()
    xt = x.detach().clone().requires_grad_()
    out = detops.roi_pool(xd, rois, (3, 4), scale)
    ref = torchvision.ops.roi_pool(xt, rois, (3, 4), scale)
    assert_close(out, ref, rtol=0, atol=0)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn(ref.shape, generator=g).to(device)
    out.backward(grad)
    ref.backward(grad)
    assert_close(xd.grad, xt.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bit_equal_to_torchvision_on_cpu(dtype, channels_last):
    """Forward and gradient torch.equal to torchvision's on CPU, with ties
    (few distinct values: the first maximum in scan order wins), boxes across
    and outside the map, zero-size and inverted ones, over several images."""
    g = torch.Generator().manual_seed(200 + channels_last)
    x = torch.randint(-3, 4, (3, 4, 12, 15), generator=g).to(dtype)
    x[1] = torch.randn(4, 12, 15, generator=g, dtype=dtype)
    rois = make_rois(40, 3, (12, 15), scale=0.5, generator=g, dtype=dtype)
    xd = _layout(x, channels_last).requires_grad_()
    xt = x.detach().clone().requires_grad_()
    out = detops.roi_pool(xd, rois, (3, 4), 0.5)
    ref = torchvision.ops.roi_pool(xt, rois, (3, 4), 0.5)
    assert torch.equal(out, ref)
    grad = torch.randn(ref.shape, generator=g, dtype=dtype)
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(xd.grad, xt.grad)


def test_boxes_list_module_and_empty_bins():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 9, generator=g)
    boxes = [torch.tensor([[1.0, 1.0, 5.0, 6.0], [-20.0, -20.0, -10.0, -10.0]]), torch.tensor([[2.0, 3.0, 2.0, 3.0]])]
    out = detops.roi_pool(x, boxes, 3)
    assert_close(out, torchvision.ops.roi_pool(x, boxes, 3), rtol=0, atol=0)
    assert torch.equal(out[1], torch.zeros(3, 3, 3))  # box outside the map: every bin empty -> 0
    module = detops.RoIPool((2, 2), 0.5)
    assert_close(module(x, boxes), torchvision.ops.RoIPool((2, 2), 0.5)(x, boxes), rtol=0, atol=0)
    assert repr(module) == "RoIPool(output_size=(2, 2), spatial_scale=0.5)"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(device, dtype):
    g = torch.Generator().manual_seed(4)
    x = (torch.randperm(2 * 4 * 9 * 10, generator=g).float() / 64).reshape(2, 4, 9, 10).to(device, dtype)
    rois = make_rois(10, 2, (9, 10), generator=g, dtype=torch.float32).to(device)
    xd = x.clone().requires_grad_()
    out = detops.roi_pool(xd, rois, 2)
    assert out.dtype == dtype
    xt = x.detach().double().requires_grad_()
    ref = torchvision.ops.roi_pool(xt, rois.double(), 2)
    assert_close(out.double(), ref.to(dtype).double(), rtol=0, atol=0)
    grad = torch.randn(ref.shape, generator=g).to(device)
    out.backward(grad.to(dtype))
    ref.backward(grad.to(dtype).double())
    assert_close(xd.grad.double(), xt.grad, rtol=1e-2, atol=1e-2)


def test_gradcheck_fp64():
    g = torch.Generator().manual_seed(5)
    x = torch.randperm(2 * 2 * 6 * 7, generator=g).double().reshape(2, 2, 6, 7) / 10
    rois = make_rois(6, 2, (6, 7), generator=g)
    for channels_last in (False, True):
        xi = _layout(x, channels_last).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: detops.roi_pool(t, rois, (2, 3), 1.0), (xi,))


def test_cpu_backward_deterministic_with_ties():
    x = torch.zeros(1, 3, 6, 6)  # all ties: torchvision keeps the first maximum
    rois = torch.tensor([[0.0, 0, 0, 5, 5], [0.0, 1, 1, 4, 4]] * 10)
    grads = []
    for _ in range(2):
        xi = x.clone().requires_grad_()
        detops.roi_pool(xi, rois, 2).backward(torch.ones(20, 3, 2, 2))
        grads.append(xi.grad)
    xt = x.clone().requires_grad_()
    torchvision.ops.roi_pool(xt, rois, 2).backward(torch.ones(20, 3, 2, 2))
    assert torch.equal(grads[0], grads[1])
    assert_close(grads[0], xt.grad, rtol=0, atol=0)


@requires_cuda
def test_cuda_deterministic_backward():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 8, 20, 20, generator=g).cuda()
    rois = make_rois(100, 2, (20, 20), generator=g, dtype=torch.float32).cuda()
    grad = torch.randn(100, 8, 3, 3, generator=g).cuda()
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for _ in range(2):
            xi = x.clone().requires_grad_()
            detops.roi_pool(xi, rois, 3).backward(grad)
            results.append(xi.grad)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert torch.equal(results[0], results[1])
    xt = x.clone().requires_grad_()
    torchvision.ops.roi_pool(xt, rois, 3).backward(grad)
    assert_close(results[0], xt.grad, rtol=1e-5, atol=1e-5)


@requires_cuda
def test_cuda_bad_batch_index_asserts():
    """The CUDA kernels check the batch index (no host sync, no out-of-bounds read)."""
    proc = run_poisoning_cuda_call(
        "x = torch.randn(2, 3, 5, 5, device='cuda', requires_grad=True)\n"
        "rois = torch.tensor([[5.0, 0, 0, 2, 2]], device='cuda')\n"
        "detops.roi_pool(x, rois, 2).sum().backward()"
    )
    assert proc.returncode != 0
    assert "batch index) must be in [0, N)" in proc.stderr or "device-side assert" in proc.stderr, proc.stderr[-2000:]


def test_bad_inputs():
    x = torch.randn(2, 3, 5, 5)
    with pytest.raises(RuntimeError, match=r"batch index\) must be in \[0, 2\)"):
        detops.roi_pool(x, torch.tensor([[5.0, 0, 0, 2, 2]]), 2)
    with pytest.raises(ValueError, match=r"boxes must be a Tensor\[K, 5\]"):
        detops.roi_pool(x, torch.zeros(2, 6), 2)
    with pytest.raises(ValueError, match="output_size must be >= 0"):
        detops.roi_pool(x, torch.zeros(1, 5), -1)
    # spatial_scale <= 0 runs, as in torchvision (issue 11); a NaN one is an error.
    with pytest.raises(ValueError, match="spatial_scale must be a finite"):
        detops.roi_pool(x, torch.zeros(1, 5), 2, float("nan"))
    with pytest.raises(RuntimeError, match="output_size must be positive"):
        torch.ops.detops.roi_pool(x, torch.zeros(1, 5), 1.0, 0, 2)


def test_opcheck_and_compile():
    g = torch.Generator().manual_seed(8)
    x = torch.randperm(2 * 3 * 6 * 7, generator=g).float().reshape(2, 3, 6, 7).requires_grad_()
    rois = make_rois(6, 2, (6, 7), generator=g, dtype=torch.float32)
    torch.library.opcheck(torch.ops.detops.roi_pool.default, (x, rois, 1.0, 2, 2))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.detops.roi_pool.default, (xc, rois, 0.5, 3, 2))

    def f(t, r):
        return detops.roi_pool(t, r, 2, 1.0).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x, rois)
    (grad,) = torch.autograd.grad(out, x)
    (ref_grad,) = torch.autograd.grad(f(x, rois), x)
    assert_close(out, f(x, rois))
    assert_close(grad, ref_grad)


def test_huge_coordinates_and_nan():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 2, 6, 8, generator=g)
    # A box far larger than the map: only the middle bin overlaps it, and covers it all.
    rois = torch.tensor([[0.0, -1e10, -1e10, 1e10, 1e10]])
    out = detops.roi_pool(x, rois, 7)
    expected = torch.zeros(1, 2, 7, 7)
    expected[0, :, 3, 3] = x[0].amax(dim=(1, 2))
    assert_close(out, expected, rtol=0, atol=0)
    # NaN never wins a comparison, as in torchvision's kernel.
    xn = x.clone()
    xn[0, 0, 2, 3] = float("nan")
    box = torch.tensor([[0.0, 1.0, 1.0, 6.0, 4.0]])
    assert_close(detops.roi_pool(xn, box, 2), torchvision.ops.roi_pool(xn, box, 2), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_bit_equal_to_torchvision(dtype, channels_last):
    """Output bits (the sign of a zero included) and argmax equal torchvision's
    CPU kernel, on maps full of ties, signed zeros, -inf, -FLT_MAX and NaN."""
    g = torch.Generator().manual_seed(11 + channels_last)
    x = torch.randint(-3, 3, (2, 6, 17, 23), generator=g).to(dtype) / 2  # many ties
    specials = torch.tensor([-0.0, 0.0, float("-inf"), float("nan"), -torch.finfo(torch.float32).max], dtype=dtype)
    where = torch.rand(x.shape, generator=g)
    x = torch.where(where < 0.25, specials[torch.randint(0, 5, x.shape, generator=g)], x)
    x[1, 2] = float("-inf")  # a plane where no pixel beats the start value
    x[1, 3] = -0.0
    rois = make_rois(40, 2, (17, 23), generator=g, dtype=dtype)
    rois = torch.cat([rois, torch.tensor([[1.0, -5, -5, 40, 40], [0.0, 3, 3, 3, 3]], dtype=dtype)])
    xd = _layout(x, channels_last)
    out, argmax = torch.ops.detops.roi_pool(xd, rois, 1.0, 3, 4)
    ref, ref_argmax = torch.ops.torchvision.roi_pool(x, rois, 1.0, 3, 4)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    assert torch.equal(out.contiguous().view(bits), ref.view(bits))
    assert torch.equal(argmax.contiguous(), ref_argmax.to(torch.int64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [True, False])
def test_cpu_vector_blocks_and_widened_planes_bit_equal(dtype, channels_last):
    """Channels-last maps with full 16-channel blocks (the SSE2 path, here 16 + 4
    channels) and bfloat16 NCHW planes widened to float give torchvision's
    output bits and argmax on maps full of ties, signed zeros, -inf, -FLT_MAX
    and NaN; bfloat16 against torchvision on the float32 copy (a maximum of
    bfloat16 values converts back exactly). NCHW maps go both ways: the 42 RoIs
    read each pixel more than once on average, so the map is copied
    channels-last for the block scan; the 2 small RoIs read under a tenth of it,
    so the planes are scanned in place."""
    g = torch.Generator().manual_seed(21)
    x = torch.randint(-3, 3, (2, 20, 17, 23), generator=g).float() / 2
    specials = torch.tensor([-0.0, 0.0, float("-inf"), float("nan"), -torch.finfo(torch.float32).max])
    where = torch.rand(x.shape, generator=g)
    x = torch.where(where < 0.25, specials[torch.randint(0, 5, x.shape, generator=g)], x)
    x[1, 2] = float("-inf")
    x[0, 17] = -0.0
    x = x.to(dtype)
    rois = make_rois(40, 2, (17, 23), generator=g, dtype=torch.float32)
    dense = torch.cat([rois, torch.tensor([[1.0, -5, -5, 40, 40], [0.0, 3, 3, 3, 3]])]).to(dtype)
    sparse = torch.tensor([[1.0, 2, 3, 6, 8], [0.0, 10, 1, 13, 3]]).to(dtype)
    for rois in (dense, sparse):
        # Pixels read per map pixel (the C++ estimate: each RoI's extent + 1, clamped).
        extent = (rois[:, 3:] - rois[:, 1:3]).float().round() + 1
        reads = (extent[:, 0].clamp(1, 23) * extent[:, 1].clamp(1, 17)).sum() / (2 * 17 * 23)
        assert (reads > 1) == (rois is dense)
        out, argmax = torch.ops.detops.roi_pool(_layout(x, channels_last), rois, 1.0, 3, 4)
        ref, ref_argmax = torch.ops.torchvision.roi_pool(x.float(), rois.float(), 1.0, 3, 4)
        bits = torch.int32 if dtype == torch.float32 else torch.int16
        assert torch.equal(out.contiguous().view(bits), ref.to(dtype).view(bits))
        assert torch.equal(argmax.contiguous(), ref_argmax.to(torch.int64))
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
