"""ps_roi_align / PSRoIAlign against torchvision: bit-equal CPU forward and
gradient (fp32, fp64, NCHW and channels-last, edge-case boxes), reduced
precision, gradcheck, opcheck, torch.compile and bad inputs."""

from __future__ import annotations

import pytest
import torch
import torchvision

import detops
from tests.helpers import assert_close
from tests.ops.test_roi_align import _layout, make_rois


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit pattern (so -0.0 != 0.0 and NaN payloads compare)."""
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _edge_rois(n: int, size: tuple[int, int], dtype) -> torch.Tensor:
    """make_rois' edge cases (zero-size, inverted, outside, covering) plus huge
    and sub-pixel boxes."""
    h, w = size
    extra = torch.tensor([
        [0.0, -1e6, -1e6, 1e6, 1e6],
        [n - 1.0, 3.0, 2.0, 3.25, 2.5],
        [0.0, w - 1.0, h - 1.0, w + 0.5, h + 0.5],
    ], dtype=torch.float64)
    return extra.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_bit_equal_to_torchvision_on_cpu(dtype, channels_last, sampling_ratio):
    g = torch.Generator().manual_seed(300 + 2 * channels_last + (sampling_ratio > 0))
    x = torch.randn(3, 2 * 3 * 4, 11, 14, generator=g, dtype=dtype)
    rois = make_rois(40, 3, (11, 14), scale=0.5, generator=g, dtype=dtype)
    if sampling_ratio > 0:  # adaptive sampling of a 1e6 box would take 1e12 samples in torchvision
        rois = torch.cat([rois, _edge_rois(3, (22, 28), dtype)])
    xd = _layout(x, channels_last).requires_grad_()
    xt = x.detach().clone().requires_grad_()
    out = detops.ps_roi_align(xd, rois, (3, 4), 0.5, sampling_ratio)
    ref = torchvision.ops.ps_roi_align(xt, rois, (3, 4), 0.5, sampling_ratio)
    assert out.is_contiguous() and out.dtype == dtype
    assert torch.equal(_bits(out), _bits(ref))
    assert ref.isnan().any() == (sampling_ratio <= 0)  # zero-size boxes: 0 / 0 in torchvision, and here
    _, mapping = torch.ops.detops.ps_roi_align(xd.detach(), rois, 0.5, 3, 4, sampling_ratio)
    _, ref_mapping = torch.ops.torchvision.ps_roi_align(x, rois, 0.5, 3, 4, sampling_ratio)
    assert torch.equal(mapping, ref_mapping) and mapping.dtype == torch.int32
    grad = torch.randn(ref.shape, generator=g, dtype=dtype)
    grad[::5] = 0  # skipped zero gradients must not change a bit
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(_bits(xd.grad), _bits(xt.grad))


def test_boxes_list_module_and_empty(device):
    g = torch.Generator().manual_seed(301)
    x = torch.randn(2, 8, 9, 10, generator=g).to(device)
    boxes = [torch.tensor([[1.0, 1.0, 7.0, 6.0], [-20.0, -20.0, -10.0, -10.0]]), torch.tensor([[2.0, 3.0, 8.5, 9.0]])]
    boxes = [b.to(device) for b in boxes]
    out = detops.ps_roi_align(x, boxes, 2, 1.0, 2)
    assert_close(out, torchvision.ops.ps_roi_align(x, boxes, 2, 1.0, 2), rtol=1e-6, atol=1e-6)
    assert torch.equal(out[1], torch.zeros(2, 2, 2, device=device))  # box outside the map
    module = detops.nn.PSRoIAlign((2, 2), 0.5, 2)
    assert detops.nn.PSRoIAlign is detops.PSRoIAlign
    ref_module = torchvision.ops.PSRoIAlign((2, 2), 0.5, 2)
    assert_close(module(x, boxes), ref_module(x, boxes), rtol=1e-6, atol=1e-6)
    assert repr(module) == "PSRoIAlign(output_size=(2, 2), spatial_scale=0.5, sampling_ratio=2)"
    empty = detops.ps_roi_align(x, torch.zeros(0, 5, device=device), 2)
    assert empty.shape == (0, 2, 2, 2)
    xe = x.clone().requires_grad_()
    detops.ps_roi_align(xe, torch.zeros(0, 5, device=device), 2).sum().backward()
    assert torch.equal(xe.grad, torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision(device, dtype):
    """float16/bfloat16 are computed in float32 and rounded once (torchvision's
    CPU kernel computes float16 in float16 and has no bfloat16)."""
    g = torch.Generator().manual_seed(302)
    x = torch.randn(2, 18, 10, 12, generator=g)
    rois = make_rois(12, 2, (10, 12), generator=g, dtype=torch.float32)
    xd = x.to(device, dtype).requires_grad_()
    out = detops.ps_roi_align(xd, rois.to(device), 3, 1.0, 2)
    assert out.dtype == dtype
    xt = x.to(dtype).double().requires_grad_()
    ref = torchvision.ops.ps_roi_align(xt, rois.double(), 3, 1.0, 2)
    assert_close(out.double().cpu(), ref.to(dtype).double(), rtol=1e-2, atol=1e-2)
    grad = torch.randn(ref.shape, generator=g)
    out.backward(grad.to(device, dtype))
    ref.backward(grad.to(dtype).double())
    assert xd.grad.dtype == dtype
    assert_close(xd.grad.double().cpu(), xt.grad, rtol=2e-2, atol=2e-2)


def test_gradcheck_fp64():
    g = torch.Generator().manual_seed(303)
    x = torch.randn(2, 8, 6, 7, generator=g, dtype=torch.float64)
    rois = make_rois(6, 2, (6, 7), generator=g)
    for channels_last, sampling_ratio in ((False, -1), (True, 2)):
        xi = _layout(x, channels_last).requires_grad_()
        # Zero-size boxes give NaN bins (as torchvision's); nan_to_num keeps gradcheck on the rest.
        fn = lambda t, sr=sampling_ratio: detops.ps_roi_align(t, rois, 2, 1.0, sr).nan_to_num()  # noqa: E731
        assert torch.autograd.gradcheck(fn, (xi,))


def test_opcheck_and_compile():
    g = torch.Generator().manual_seed(304)
    x = torch.randn(2, 12, 6, 7, generator=g).requires_grad_()
    rois = make_rois(8, 2, (6, 7), generator=g, dtype=torch.float32)[2:]  # no zero-size box: no NaN
    torch.library.opcheck(torch.ops.detops.ps_roi_align.default, (x, rois, 1.0, 2, 2, 2))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.detops.ps_roi_align.default, (xc, rois, 0.5, 2, 3, -1))

    def f(t, r):
        return detops.ps_roi_align(t, r, 2, 1.0, 2).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x, rois)
    (grad,) = torch.autograd.grad(out, x)
    (ref_grad,) = torch.autograd.grad(f(x, rois), x)
    assert_close(out, f(x, rois))
    assert_close(grad, ref_grad)


def test_bad_inputs():
    x = torch.randn(2, 8, 5, 5)
    with pytest.raises(detops.ShapeError, match=r"input channels \(8\) must be a multiple of .* = 9"):
        detops.ps_roi_align(x, torch.zeros(1, 5), 3)
    with pytest.raises(RuntimeError):  # torchvision's type for that case (its kernel's check)
        detops.ps_roi_align(x, torch.zeros(1, 5), 3)
    with pytest.raises(AssertionError, match=r"boxes must be a Tensor\[K, 5\]"):  # torchvision: AssertionError
        detops.ps_roi_align(x, torch.zeros(2, 4), 2)
    with pytest.raises(ValueError, match=r"boxes\[0\] must have shape \[L, 4\]"):
        detops.ps_roi_align(x, [torch.zeros(2, 5)], 2)
    with pytest.raises(RuntimeError, match=r"batch index\) must be in \[0, 2\)"):
        detops.ps_roi_align(x, torch.tensor([[2.0, 0, 0, 2, 2]]), 2)
    with pytest.raises(RuntimeError, match=r"batch index\) must be in \[0, 2\)"):
        detops.ps_roi_align(x, torch.tensor([[float("nan"), 0, 0, 2, 2]]), 2)
    with pytest.raises(ValueError, match="output_size must be positive"):  # torchvision dies of SIGFPE
        detops.ps_roi_align(x, torch.zeros(1, 5), 0)
    with pytest.raises(ValueError, match="spatial_scale must be a finite"):
        detops.ps_roi_align(x, torch.zeros(1, 5), 2, float("inf"))
    with pytest.raises(detops.ShapeError, match=r"input must have shape \[N, C, H, W\]"):
        detops.ps_roi_align(x[0], torch.zeros(1, 5), 2)
    with pytest.raises(NotImplementedError, match="input must be float16"):  # torchvision: NotImplementedError
        detops.ps_roi_align(torch.quantize_per_tensor(x, 0.1, 0, torch.quint8), torch.zeros(1, 5), 2)
    with pytest.raises(RuntimeError, match="must be a multiple of output_size"):
        torch.ops.detops.ps_roi_align(x, torch.zeros(1, 5), 1.0, 3, 3, -1)
    with pytest.raises(RuntimeError, match=r"grad and channel_mapping must have shape"):
        torch.ops.detops.ps_roi_align_backward(torch.zeros(1, 2, 2, 2), torch.zeros(1, 5), torch.zeros(1, 2, 2, 3),
                                               1.0, 2, 2, -1, 2, 8, 5, 5)


def test_torchvision_leniency():
    """Inputs torchvision accepts: zero and negative scales, integer-valued rois of
    another float dtype, a tuple of box tensors."""
    g = torch.Generator().manual_seed(305)
    x = torch.randn(2, 8, 9, 9, generator=g)
    rois = make_rois(10, 2, (9, 9), generator=g, dtype=torch.float32)
    for scale in (0.0, -0.5):
        out, ref = detops.ps_roi_align(x, rois, 2, scale, 2), torchvision.ops.ps_roi_align(x, rois, 2, scale, 2)
        assert torch.equal(_bits(out), _bits(ref))
    boxes = (rois[:3, 1:], rois[3:, 1:])
    out, ref = detops.ps_roi_align(x, boxes, 2, 0.5), torchvision.ops.ps_roi_align(x, boxes, 2, 0.5)
    assert torch.equal(_bits(out), _bits(ref))  # NaN where torchvision's is (zero-size boxes)
