"""ps_roi_pool / PSRoIPool against torchvision: bit-equal CPU forward and
gradient (fp32, fp64, NCHW and channels-last, edge-case boxes), the one
documented gradient difference, reduced precision, gradcheck, opcheck,
torch.compile and bad inputs."""

from __future__ import annotations

import pytest
import torch
import torchvision

import detops
from tests.helpers import assert_close
from tests.ops.test_ps_roi_align import _bits
from tests.ops.test_roi_align import _layout, make_rois


def _interior(rois: torch.Tensor, scale: float, size: tuple[int, int]) -> torch.Tensor:
    """The rois whose bins stay off the map's last row and column, where
    torchvision's backward is its forward's gradient."""
    c = torch.round(rois[:, 1:] * scale)
    end = torch.maximum(c[:, 2:], c[:, :2] + 1)
    keep = (end[:, 0] <= size[1] - 2) & (end[:, 1] <= size[0] - 2)
    return rois[keep]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bit_equal_to_torchvision_on_cpu(dtype, channels_last):
    g = torch.Generator().manual_seed(400 + channels_last)
    x = torch.randn(3, 3 * 3 * 4, 12, 15, generator=g, dtype=dtype)
    rois = make_rois(60, 3, (12, 15), scale=0.5, generator=g, dtype=dtype)
    huge = torch.tensor([[0.0, -1e8, -1e8, 1e8, 1e8], [2.0, 1e8, 1e8, 2e8, 2e8]], dtype=dtype)
    rois = torch.cat([rois, huge])
    xd = _layout(x, channels_last)
    out, mapping = torch.ops.detops.ps_roi_pool(xd, rois, 0.5, 3, 4)
    ref, ref_mapping = torch.ops.torchvision.ps_roi_pool(x, rois, 0.5, 3, 4)
    assert out.is_contiguous()
    assert torch.equal(_bits(out), _bits(ref))
    assert torch.equal(mapping, ref_mapping) and mapping.dtype == torch.int32

    inner = _interior(rois, 0.5, (12, 15))
    assert len(inner) >= 10
    xd.requires_grad_()
    xt = x.clone().requires_grad_()
    out = detops.ps_roi_pool(xd, inner, (3, 4), 0.5)
    ref = torchvision.ops.ps_roi_pool(xt, inner, (3, 4), 0.5)
    grad = torch.randn(ref.shape, generator=g, dtype=dtype)
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(_bits(xd.grad), _bits(xt.grad))


def test_gradient_at_the_last_row_is_the_forwards():
    """torchvision's forward never reads the map's last row and column, but its
    backward sends them gradient; detops' backward is the forward's gradient."""
    x = torch.arange(16.0, dtype=torch.float64).reshape(1, 1, 4, 4).requires_grad_()
    rois = torch.tensor([[0.0, 0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    out = detops.ps_roi_pool(x, rois, 1)
    assert torch.equal(out, torchvision.ops.ps_roi_pool(x, rois, 1))  # the mean of the top-left 3x3
    out.backward()
    expected = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    expected[..., :3, :3] = 1 / 9
    assert torch.equal(x.grad, expected)
    assert torch.autograd.gradcheck(lambda t: detops.ps_roi_pool(t, rois, 1), (x,))


def test_boxes_list_module_and_empty(device):
    g = torch.Generator().manual_seed(401)
    x = torch.randn(2, 8, 9, 10, generator=g).to(device)
    boxes = [torch.tensor([[1.0, 1.0, 7.0, 6.0], [-20.0, -20.0, -10.0, -10.0]]), torch.tensor([[2.0, 3.0, 2.0, 3.0]])]
    boxes = [b.to(device) for b in boxes]
    out = detops.ps_roi_pool(x, boxes, 2)
    assert_close(out, torchvision.ops.ps_roi_pool(x, boxes, 2), rtol=1e-6, atol=1e-6)
    assert torch.equal(out[1], torch.zeros(2, 2, 2, device=device))  # box outside the map: empty bins -> 0
    module = detops.nn.PSRoIPool((2, 2), 0.5)
    assert detops.nn.PSRoIPool is detops.PSRoIPool
    assert_close(module(x, boxes), torchvision.ops.PSRoIPool((2, 2), 0.5)(x, boxes), rtol=1e-6, atol=1e-6)
    assert repr(module) == "PSRoIPool(output_size=(2, 2), spatial_scale=0.5)"
    xe = x.clone().requires_grad_()
    empty = detops.ps_roi_pool(xe, torch.zeros(0, 5, device=device), 2)
    assert empty.shape == (0, 2, 2, 2)
    empty.sum().backward()
    assert torch.equal(xe.grad, torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision(device, dtype):
    g = torch.Generator().manual_seed(402)
    x = torch.randn(2, 18, 10, 12, generator=g)
    rois = _interior(make_rois(20, 2, (10, 12), generator=g, dtype=torch.float32), 1.0, (10, 12))
    xd = x.to(device, dtype).requires_grad_()
    out = detops.ps_roi_pool(xd, rois.to(device), 3)
    assert out.dtype == dtype
    xt = x.to(dtype).double().requires_grad_()
    ref = torchvision.ops.ps_roi_pool(xt, rois.double(), 3)
    assert_close(out.double().cpu(), ref.to(dtype).double(), rtol=1e-2, atol=1e-2)
    grad = torch.randn(ref.shape, generator=g)
    out.backward(grad.to(device, dtype))
    ref.backward(grad.to(dtype).double())
    assert_close(xd.grad.double().cpu(), xt.grad, rtol=2e-2, atol=2e-2)


def test_gradcheck_fp64():
    g = torch.Generator().manual_seed(403)
    x = torch.randn(2, 8, 6, 7, generator=g, dtype=torch.float64)
    rois = make_rois(6, 2, (6, 7), generator=g)
    for channels_last in (False, True):
        xi = _layout(x, channels_last).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: detops.ps_roi_pool(t, rois, 2, 1.0), (xi,))


def test_opcheck_and_compile():
    g = torch.Generator().manual_seed(404)
    x = torch.randn(2, 12, 6, 7, generator=g).requires_grad_()
    rois = make_rois(6, 2, (6, 7), generator=g, dtype=torch.float32)
    torch.library.opcheck(torch.ops.detops.ps_roi_pool.default, (x, rois, 1.0, 2, 2))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.detops.ps_roi_pool.default, (xc, rois, 0.5, 2, 3))

    def f(t, r):
        return detops.ps_roi_pool(t, r, 2, 1.0).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x, rois)
    (grad,) = torch.autograd.grad(out, x)
    (ref_grad,) = torch.autograd.grad(f(x, rois), x)
    assert_close(out, f(x, rois))
    assert_close(grad, ref_grad)


def test_bad_inputs():
    x = torch.randn(2, 8, 5, 5)
    with pytest.raises(detops.ShapeError, match=r"input channels \(8\) must be a multiple of .* = 9"):
        detops.ps_roi_pool(x, torch.zeros(1, 5), 3)
    with pytest.raises(AssertionError, match=r"boxes must be a Tensor\[K, 5\]"):
        detops.ps_roi_pool(x, torch.zeros(2, 6), 2)
    with pytest.raises(RuntimeError, match=r"batch index\) must be in \[0, 2\)"):
        detops.ps_roi_pool(x, torch.tensor([[-1.0, 0, 0, 2, 2]]), 2)
    with pytest.raises(ValueError, match="output_size must be positive"):
        detops.ps_roi_pool(x, torch.zeros(1, 5), (2, 0))
    with pytest.raises(RuntimeError, match="output_size must be positive"):
        torch.ops.detops.ps_roi_pool(x, torch.zeros(1, 5), 1.0, 0, 2)
    with pytest.raises(RuntimeError, match="channel_mapping must be int32 or int64"):
        torch.ops.detops.ps_roi_pool_backward(torch.zeros(1, 2, 2, 2), torch.zeros(1, 5), torch.zeros(1, 2, 2, 2),
                                              1.0, 2, 2, 2, 8, 5, 5)
