"""corner_pool against a torch.cummax / flip reference: values and gradients in
every direction, dtype and layout, ties and NaN, gradcheck, opcheck,
torch.compile and bad inputs."""

from __future__ import annotations

import pytest
import torch

import detops
from tests.helpers import assert_close

DIRECTIONS = ("top", "left", "bottom", "right")


def reference(x: torch.Tensor, direction: str) -> torch.Tensor:
    """CornerNet's pools from torch.cummax (its gradient goes to cummax's indices)."""
    dim = 2 if direction in ("top", "bottom") else 3
    if direction in ("bottom", "right"):
        return x.cummax(dim).values
    return x.flip(dim).cummax(dim).values.flip(dim)


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _check(x: torch.Tensor, direction: str, channels_last: bool, *, tol: float) -> None:
    g = torch.Generator().manual_seed(7)
    xd = _layout(x, channels_last).detach().requires_grad_()
    xr = x.detach().double().requires_grad_()
    out = detops.corner_pool(xd, direction)
    ref = reference(xr, direction)
    assert out.dtype == x.dtype
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # A maximum is a copy of an input value: exact in every dtype.
    assert_close(out.double(), ref, rtol=0, atol=0)
    grad = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
    out.backward(grad)
    ref.backward(grad.double())
    assert xd.grad.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close(xd.grad.double(), xr.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_matches_cummax(device, dtype, direction, channels_last):
    g = torch.Generator().manual_seed(DIRECTIONS.index(direction) * 2 + channels_last)
    # Few distinct values: many ties, which must break as cummax breaks them.
    x = torch.randint(-4, 5, (2, 3, 9, 11), generator=g).to(device, dtype)
    tol = 1e-6 if dtype in (torch.float32, torch.float64) else 3e-2
    _check(x, direction, channels_last, tol=tol)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_random_values_and_wide_lanes(device, direction):
    # Wide maps (more lanes than one CPU block) and one-pixel lines.
    g = torch.Generator().manual_seed(11)
    for shape in [(1, 3, 5, 300), (1, 300, 3, 4), (2, 1, 1, 7), (1, 2, 6, 1)]:
        x = torch.randn(shape, generator=g).to(device)
        for cl in (False, True):
            _check(x, direction, cl, tol=1e-6)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_nan_and_inf_follow_cummax(device, direction):
    x = torch.randn(1, 2, 6, 7, generator=torch.Generator().manual_seed(3)).to(device)
    x[0, 0, 2, 3] = float("nan")
    x[0, 0, 4, 1] = float("nan")
    x[0, 1, 1, :] = float("-inf")
    x[0, 1, :, 5] = float("inf")
    for cl in (False, True):
        _check(x, direction, cl, tol=1e-6)


def test_non_contiguous_input(device):
    x = torch.randn(2, 8, 6, 10, device=device)[:, ::2, :, 1::2]
    for d in DIRECTIONS:
        assert_close(detops.corner_pool(x, d), reference(x, d), rtol=0, atol=0)


def test_empty_input_is_a_clear_error(device):
    for shape in [(0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0)]:
        x = torch.randn(shape, device=device)
        with pytest.raises(ValueError, match="input must not be empty"):
            detops.corner_pool(x, "top")
        with pytest.raises(ValueError, match="input must not be empty"):
            torch.ops.detops.corner_pool(x, "left")


def test_gradcheck_fp64():
    g = torch.Generator().manual_seed(5)
    # Distinct values keep the argmax away from ties, where the max is not differentiable.
    x = (torch.randperm(2 * 3 * 5 * 6, generator=g).double() / 7).reshape(2, 3, 5, 6)
    for d in DIRECTIONS:
        for cl in (False, True):
            xi = _layout(x, cl).requires_grad_()
            assert torch.autograd.gradcheck(lambda t: detops.corner_pool(t, d), (xi,))


def test_module():
    x = torch.randn(1, 2, 4, 5)
    m = detops.CornerPool("left")
    assert_close(m(x), reference(x, "left"), rtol=0, atol=0)
    assert repr(m) == "CornerPool('left')"


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_opcheck(direction):
    x = torch.randn(2, 3, 5, 4, requires_grad=True)
    torch.library.opcheck(torch.ops.detops.corner_pool.default, (x, direction))
    xc = torch.randn(2, 3, 5, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.detops.corner_pool.default, (xc, direction))
    out = torch.ops.detops.corner_pool(x.detach(), direction)
    torch.library.opcheck(torch.ops.detops.corner_pool_backward.default, (torch.randn(2, 3, 5, 4), x.detach(), out, direction))


def test_compile_fullgraph():
    def f(x):
        return (detops.corner_pool(x, "top") + detops.corner_pool(x, "left")).sum()

    x = torch.randn(2, 3, 6, 7)
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert_close(compiled(xa), f(xb))
    compiled(xa).backward()
    f(xb).backward()
    assert_close(xa.grad, xb.grad)


def test_bad_inputs():
    x = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="direction"):
        detops.corner_pool(x, "up")
    with pytest.raises(ValueError, match="direction"):
        detops.CornerPool("diagonal")
    with pytest.raises(ValueError, match=r"input must have shape \[N, C, H, W\]"):
        detops.corner_pool(torch.randn(2, 3, 4), "top")
    with pytest.raises(ValueError, match="input must have shape"):
        detops.corner_pool(torch.randn(1, 1, 2, 3, 4), "top")
    with pytest.raises(TypeError, match="input must be"):
        detops.corner_pool(torch.ones(1, 1, 2, 2, dtype=torch.int64), "top")
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        detops.corner_pool([[1.0]], "top")
    # The raw operator checks too (it may be called without the Python layer).
    with pytest.raises(ValueError, match="direction must be"):
        torch.ops.detops.corner_pool(x, "up")
    with pytest.raises(ValueError, match="input must have shape"):
        torch.ops.detops.corner_pool(torch.randn(3, 4), "top")
