"""detops.conv_transpose2d / upsample_add / detops.nn upsampling modules against
torch.nn.functional.conv_transpose2d (the reference: torchvision has no such op)."""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import detops
from detops.nn import BilinearUpsample, ConvTranspose2d, bilinear_kernel
from tests.helpers import assert_close

ops = torch.ops.detops


def _random_config(rng: random.Random, dense: bool | None = None) -> dict:
    """A random valid transposed-convolution layer: groups, strides, paddings,
    output_padding, non-square kernels and inputs."""
    while True:
        if dense is None:
            dense_ = rng.random() < 0.3
        else:
            dense_ = dense
        groups = 1 if dense_ else rng.choice([1, 2, 3, 4])
        cin_g, cout_g = (rng.randint(1, 3), rng.randint(1, 3)) if rng.random() < 0.6 else (1, 1)
        s = (rng.randint(1, 4), rng.randint(1, 4))
        k = s if dense_ else (rng.randint(1, 7), rng.randint(1, 7))
        p = (rng.randint(0, k[0] - 1), rng.randint(0, k[1] - 1))
        op = (rng.randint(0, s[0] - 1), rng.randint(0, s[1] - 1))
        h, w = rng.randint(1, 6), rng.randint(1, 6)
        out = [(i - 1) * st + kk - 2 * pp + o for i, st, kk, pp, o in zip((h, w), s, k, p, op)]
        if min(out) >= 1:
            return dict(n=rng.randint(1, 2), groups=groups, cin=groups * cin_g, cout_g=cout_g, k=k, s=s, p=p,
                        op=op, h=h, w=w, bias=rng.random() < 0.7)


def _make(cfg: dict, dtype=torch.float64, device="cpu", generator=None):
    x = torch.randn(cfg["n"], cfg["cin"], cfg["h"], cfg["w"], dtype=dtype, generator=generator).to(device)
    weight = torch.randn(cfg["cin"], cfg["cout_g"], *cfg["k"], dtype=dtype, generator=generator).to(device)
    bias = torch.randn(cfg["cout_g"] * cfg["groups"], dtype=dtype, generator=generator).to(device) if cfg["bias"] else None
    return x, weight, bias


def _grads(fn, tensors, grad_out):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
    out = fn(*leaves)
    wanted = [t for t in leaves if t is not None]
    return out.detach(), torch.autograd.grad(out, wanted, grad_out)


def _raw_op(x, weight, bias, cfg, act=0):
    out_size = [(i - 1) * st + kk - 2 * pp + o for i, st, kk, pp, o in
                zip((cfg["h"], cfg["w"]), cfg["s"], cfg["k"], cfg["p"], cfg["op"])]
    return ops.conv_transpose2d(x, weight, bias, None, list(cfg["s"]), list(cfg["p"]), out_size, [0, 0],
                                cfg["groups"], act)


def _torch_ref(x, weight, bias, cfg):
    return F.conv_transpose2d(x, weight, bias, cfg["s"], cfg["p"], cfg["op"], cfg["groups"])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("entry", ["public", "kernel"])
def test_forward_and_grads_equal_torch(device, seed, entry):
    """Forward and input/weight/bias gradients equal F.conv_transpose2d for random
    layers; "kernel" calls the operator directly so that our kernels are tested even
    on configurations the public function hands to torch."""
    rng = random.Random(1000 * seed + (entry == "kernel"))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(12):
        cfg = _random_config(rng)
        x, weight, bias = _make(cfg, device=device, generator=gen)
        ref_out = _torch_ref(x, weight, bias, cfg)
        grad_out = torch.randn(ref_out.shape, dtype=x.dtype, generator=gen).to(device)
        if entry == "public":
            fn = lambda a, b, c: detops.conv_transpose2d(a, b, c, cfg["s"], cfg["p"], cfg["op"], cfg["groups"])  # noqa: E731
        else:
            fn = lambda a, b, c: _raw_op(a, b, c, cfg)  # noqa: E731
        out, grads = _grads(fn, (x, weight, bias), grad_out)
        ref, ref_grads = _grads(lambda a, b, c: _torch_ref(a, b, c, cfg), (x, weight, bias), grad_out)
        assert_close(out, ref, rtol=1e-10, atol=1e-10, msg=f"forward {cfg}")
        for g, r, name in zip(grads, ref_grads, ["input", "weight", "bias"]):
            assert_close(g, r, rtol=1e-10, atol=1e-10, msg=f"grad {name} {cfg}")


@pytest.mark.parametrize(
    "n,c,k,s,hw",
    [(1, 21, 64, 32, (16, 16)), (2, 21, 16, 8, (9, 7)), (2, 21, 4, 2, (16, 12)), (3, 5, 3, 1, (6, 5))],
)
def test_fcn_depthwise_float32(device, n, c, k, s, hw):
    """FCN's depthwise bilinear layers (and a 3x3 depthwise), float32 against a float64 reference."""
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(n, c, *hw, generator=gen).to(device)
    weight = torch.randn(c, 1, k, k, generator=gen).to(device)
    out = detops.conv_transpose2d(x, weight, stride=s, groups=c)
    ref = F.conv_transpose2d(x.double(), weight.double(), stride=s, groups=c)
    assert out.dtype == torch.float32
    assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)
    grad_out = torch.randn(ref.shape, generator=gen).to(device)
    _, grads = _grads(lambda a, b: detops.conv_transpose2d(a, b, stride=s, groups=c), (x, weight), grad_out)
    _, ref_grads = _grads(lambda a, b: F.conv_transpose2d(a, b, stride=s, groups=c), (x.double(), weight.double()),
                          grad_out.double())
    for g, r in zip(grads, ref_grads):
        assert_close(g.double(), r, rtol=1e-4, atol=1e-3 * max(1.0, r.abs().max().item()) / 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dense", [True, False])
def test_dtypes(device, dtype, dense):
    gen = torch.Generator().manual_seed(3)
    if dense:
        x, weight, bias = torch.randn(2, 8, 5, 4, generator=gen), torch.randn(8, 6, 2, 2, generator=gen), None
        kwargs = dict(stride=2)
    else:
        x, weight, bias = torch.randn(2, 6, 5, 4, generator=gen), torch.randn(6, 1, 4, 4, generator=gen), None
        kwargs = dict(stride=2, padding=1, groups=6)
    bias = torch.randn(weight.shape[1] * kwargs.get("groups", 1), generator=gen)
    ref = F.conv_transpose2d(x.to(dtype).double(), weight.to(dtype).double(), bias.to(dtype).double(), **kwargs)
    out = detops.conv_transpose2d(x.to(device, dtype), weight.to(device, dtype), bias.to(device, dtype), **kwargs)
    assert out.dtype == dtype
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)
    assert_close(out.double().cpu(), ref, rtol=tol, atol=tol * 4)


@pytest.mark.parametrize("dense", [True, False])
def test_relu_fused(device, dense):
    gen = torch.Generator().manual_seed(5)
    if dense:
        cfg = dict(n=2, groups=1, cin=6, cout_g=5, k=(2, 3), s=(2, 3), p=(0, 1), op=(1, 0), h=4, w=3, bias=True)
    else:
        cfg = dict(n=2, groups=3, cin=3, cout_g=2, k=(4, 5), s=(2, 3), p=(1, 2), op=(1, 2), h=4, w=3, bias=True)
    x, weight, bias = _make(cfg, device=device, generator=gen)
    ref_fn = lambda a, b, c: F.relu(_torch_ref(a, b, c, cfg))  # noqa: E731
    fn = lambda a, b, c: detops.conv_transpose2d(  # noqa: E731
        a, b, c, cfg["s"], cfg["p"], cfg["op"], cfg["groups"], activation="relu")
    grad_out = torch.randn(ref_fn(x, weight, bias).shape, dtype=x.dtype, generator=gen).to(device)
    out, grads = _grads(fn, (x, weight, bias), grad_out)
    ref, ref_grads = _grads(ref_fn, (x, weight, bias), grad_out)
    assert (out == 0).any() and (out > 0).any()
    assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dense", [True, False])
def test_channels_last_and_unbatched(device, dense):
    gen = torch.Generator().manual_seed(6)
    groups = 1 if dense else 4
    x = torch.randn(2, 8, 5, 6, generator=gen).to(device)
    weight = torch.randn(8, 3 if dense else 1, 2, 2, generator=gen).to(device)
    bias = torch.randn(weight.shape[1] * groups, generator=gen).to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    # float64 references: cuDNN may compute float32 convolutions in TF32
    ref = F.conv_transpose2d(x.double(), weight.double(), bias.double(), stride=2, groups=groups).float()
    assert_close(detops.conv_transpose2d(x_cl, weight, bias, stride=2, groups=groups), ref, rtol=1e-5, atol=1e-5)
    assert_close(detops.conv_transpose2d(x[0], weight, bias, stride=2, groups=groups), ref[0], rtol=1e-5, atol=1e-5)
    # gradients through the channels-last input
    xg = x_cl.clone().requires_grad_(True)
    detops.conv_transpose2d(xg, weight, bias, stride=2, groups=groups).sum().backward()
    xr = x.double().requires_grad_(True)
    F.conv_transpose2d(xr, weight.double(), bias.double(), stride=2, groups=groups).sum().backward()
    assert_close(xg.grad.contiguous(), xr.grad.float(), rtol=1e-5, atol=1e-5)


def _forced_dense_layer(monkeypatch, forward, backward, layout, seed, input_shape, cout, k):
    """A float64 dense layer (kernel == stride == k) with its input in the given layout,
    and the CPU algorithms forced ("onednn" or "columns") for the rest of the test."""
    monkeypatch.setenv("DETOPS_CT_DENSE_FORWARD", forward)
    monkeypatch.setenv("DETOPS_CT_DENSE_BACKWARD", backward)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*input_shape, dtype=torch.float64, generator=gen)
    w = torch.randn(input_shape[1], cout, k, k, dtype=torch.float64, generator=gen)
    b = torch.randn(cout, dtype=torch.float64, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, w, b, gen


@pytest.mark.parametrize("forward", ["onednn", "columns"])
@pytest.mark.parametrize("backward", ["onednn", "columns"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("window", ["torch", "crop"])
def test_dense_algorithms_and_layouts(monkeypatch, forward, backward, layout, window):
    """Every CPU dense algorithm pair (each is picked by size and layout, so small
    layers are forced through each), on both layouts, through a torch window
    (padding + output_padding) and an FCN crop with skip and ReLU. The output keeps
    the input's layout, as torch's does; pixel counts off the 16-pixel blocks of
    the layout copies."""
    x, w, b, gen = _forced_dense_layer(monkeypatch, forward, backward, layout, 21, (3, 12, 7, 9), 5, 3)
    if window == "torch":
        fn = lambda a, ww, bb: detops.conv_transpose2d(a, ww, bb, stride=3, padding=1, output_padding=2)  # noqa: E731
        ref = lambda a, ww, bb: F.conv_transpose2d(a, ww, bb, stride=3, padding=1, output_padding=2)  # noqa: E731
        tensors = (x, w, b)
    else:
        skip = torch.randn(3, 5, 25, 30, dtype=torch.float64, generator=gen)
        fn = lambda a, ww, bb, sk: detops.upsample_add(  # noqa: E731
            a, sk, ww, bb, 3, (2, 1), (1, 2), 1, (22, 27), activation="relu")
        ref = lambda a, ww, bb, sk: _upsample_add_reference(  # noqa: E731
            a, sk, ww, bb, (3, 3), (2, 1), (1, 2), 1, (22, 27), True)
        tensors = (x, w, b, skip)
    grad_out = torch.randn(*ref(*tensors).shape, dtype=torch.float64, generator=gen)
    out, grads = _grads(fn, tensors, grad_out)
    ref_out, ref_grads = _grads(ref, tensors, grad_out)
    assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    # the input's gradient keeps its layout too (torch's convention)
    assert grads[0].is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    if window == "torch":
        cl = torch.channels_last
        assert out.is_contiguous(memory_format=cl) == ref_out.is_contiguous(memory_format=cl)
        assert grads[0].is_contiguous(memory_format=cl) == ref_grads[0].is_contiguous(memory_format=cl)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("crop,size", [((4, 2), None), ((7, 1), (100, 104)), ((40, 3), (60, 90)), ((2, 0), (112, 106))])
def test_dense_row_blocks(monkeypatch, layout, crop, size):
    """Layers whose columns outgrow the cache run their 1x1 convolution in blocks
    of input rows (here 37 rows in blocks of 26 and 11), each shuffled into its
    own band of output rows: bands must meet exactly, with crops that start
    inside a later block, output_padding rows past the input, and a skip window.
    The column-form backward runs in the same blocks."""
    x, w, b, gen = _forced_dense_layer(monkeypatch, "columns", "columns", layout, 23, (2, 4, 37, 35), 64, 3)
    natural = (37 * 3, 35 * 3)
    size = size or (natural[0] - 2 * crop[0], natural[1] - 2 * crop[1])
    skip = torch.randn(2, 64, size[0] + 3, size[1] + 1, dtype=torch.float64, generator=gen)
    fused = lambda a, ww, bb, sk: detops.upsample_add(  # noqa: E731
        a, sk, ww, bb, 3, crop, (3, 1), 1, size, activation="relu")
    ref = lambda a, ww, bb, sk: _upsample_add_reference(a, sk, ww, bb, (3, 3), crop, (3, 1), 1, size, True)  # noqa: E731
    grad_out = torch.randn(2, 64, *size, dtype=torch.float64, generator=gen)
    out, grads = _grads(fused, (x, w, b, skip), grad_out)
    ref_out, ref_grads = _grads(ref, (x, w, b, skip), grad_out)
    assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    assert grads[0].is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("forward", ["onednn", "columns"])
def test_dense_reduced_precision_layouts(monkeypatch, dtype, forward):
    """2- and 4-byte elements through the layout copies and shuffles, both layouts."""
    monkeypatch.setenv("DETOPS_CT_DENSE_FORWARD", forward)
    monkeypatch.setenv("DETOPS_CT_DENSE_BACKWARD", "columns")
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(2, 20, 5, 7, generator=gen)
    w = torch.randn(20, 6, 2, 2, generator=gen) * 0.2
    b = torch.randn(6, generator=gen)
    xr = x.double().requires_grad_(True)
    ref = F.conv_transpose2d(xr, w.double(), b.double(), stride=2)
    grad_out = torch.randn(ref.shape, generator=gen)
    (ref_grad,) = torch.autograd.grad(ref, xr, grad_out.double())
    tol = {torch.float16: 2e-2, torch.bfloat16: 8e-2, torch.float32: 1e-5}[dtype]
    for xin in (x, x.contiguous(memory_format=torch.channels_last)):
        xin = xin.to(dtype).requires_grad_(True)
        out = detops.conv_transpose2d(xin, w.to(dtype), b.to(dtype), stride=2)
        assert out.dtype == dtype
        assert_close(out.double(), ref.detach(), rtol=tol, atol=tol)
        relu = detops.conv_transpose2d(xin, w.to(dtype), b.to(dtype), stride=2, activation="relu")
        assert_close(relu.double(), F.relu(ref.detach()), rtol=tol, atol=tol)
        (grad_in,) = torch.autograd.grad(out, xin, grad_out.to(dtype))
        assert_close(grad_in.double(), ref_grad, rtol=tol, atol=tol * 4)


@pytest.mark.parametrize("window", ["torch", "crop"])
def test_large_dense_layers(device, window):
    """Dense layers whose column buffer exceeds the cache (U-Net decoders): on CPU
    these take oneDNN's deconvolution plus the fused skip/ReLU epilogue when torch
    can express the window, else the matrix product + shuffle."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 8, 32, 33, dtype=torch.float64, generator=gen).to(device)
    w = torch.randn(8, 128, 2, 2, dtype=torch.float64, generator=gen).to(device)
    b = torch.randn(128, dtype=torch.float64, generator=gen).to(device)
    skip = torch.randn(2, 128, 70, 70, dtype=torch.float64, generator=gen).to(device)
    crop, size = ((1, 0), (63, 67)) if window == "torch" else ((1, 3), (66, 60))
    fused = lambda a, bb, c, d: detops.upsample_add(  # noqa: E731
        a, d, bb, c, 2, crop, (2, 1), 1, size, activation="relu")
    ref = lambda a, bb, c, d: _upsample_add_reference(a, d, bb, c, (2, 2), crop, (2, 1), 1, size, True)  # noqa: E731
    grad_out = torch.randn(2, 128, *size, dtype=torch.float64, generator=gen).to(device)
    out, grads = _grads(fused, (x, w, b, skip), grad_out)
    ref_out, ref_grads = _grads(ref, (x, w, b, skip), grad_out)
    assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, rtol=1e-9, atol=1e-9)


def test_empty_batch_and_fallbacks(device):
    weight = torch.randn(4, 1, 4, 4, device=device)
    out = detops.conv_transpose2d(torch.randn(0, 4, 3, 3, device=device), weight, stride=2, groups=4)
    assert out.shape == (0, 4, 8, 8)
    # dilation > 1 and wide groups go to torch and give torch's result
    x = torch.randn(2, 8, 4, 5, device=device, dtype=torch.float64)
    w = torch.randn(8, 4, 3, 3, device=device, dtype=torch.float64)
    assert_close(detops.conv_transpose2d(x, w, stride=2, dilation=2), F.conv_transpose2d(x, w, stride=2, dilation=2))
    assert_close(detops.conv_transpose2d(x, w, stride=2, groups=2, padding=1),
                 F.conv_transpose2d(x, w, stride=2, groups=2, padding=1))


@functools.lru_cache(maxsize=None)
def _scripted_conv_transpose2d():
    return torch.jit.script(detops.conv_transpose2d)


def test_eager_entry_serves_plain_cpu_calls_only():
    """The C++ eager entry serves plain CPU tensors with valid arguments and
    declines (None) everything else, which the Python function then handles."""
    entry = detops._C.conv_transpose2d_eager
    g = torch.Generator().manual_seed(7)
    x, w, b = torch.randn(2, 4, 3, 5, generator=g), torch.randn(4, 3, 2, 2, generator=g), torch.randn(3, generator=g)
    args = dict(input=x, weight=w, bias=b, stride=2, padding=0, output_padding=0, groups=1, dilation=1,
                activation=None)

    def call(**changes):
        return entry(*{**args, **changes}.values())

    assert_close(call(), F.conv_transpose2d(x, w, b, stride=2), rtol=1e-5, atol=1e-5)
    assert_close(call(input=x[0], stride=(2,), activation="relu"),
                 F.relu(F.conv_transpose2d(x[0], w, b, stride=2)), rtol=1e-5, atol=1e-5)
    assert_close(call(padding=[1, 0], output_padding=[1, 1], dilation=2, bias=None),
                 F.conv_transpose2d(x, w, None, 2, [1, 0], 1, 1, 2), rtol=1e-5, atol=1e-5)

    class Tagged(torch.Tensor):
        pass

    declined = [
        dict(input=x.to(torch.int32), weight=w.to(torch.int32), bias=None),  # not a kernel dtype
        dict(input=x.as_subclass(Tagged)),  # a subclass has __torch_function__
        dict(groups=True),  # a bool (the Python function reads it as 1)
        dict(input=x[0, 0]),  # 2-D
        dict(weight=w[:3]),  # channel mismatch
        dict(bias=b[:2]),
        dict(bias=b.double()),
        dict(groups=3),  # 4 channels are not divisible
        dict(stride=0),
        dict(stride=[2, 2, 2]),
        dict(stride=2.0),
        dict(padding=-1),
        dict(output_padding=2),  # not below stride or dilation
        dict(padding=5),  # empty output
        dict(activation="gelu"),
        dict(input=x[:0]),  # empty: the Python function handles it
    ]
    for change in declined:
        assert call(**change) is None, change
    assert call(stride=2**40) is None  # past 2**24: the Python function's unbounded integers
    assert call(input=x[:, :, :1, :1].expand(2, 4, 2**31, 1)) is None  # a map of 2**31 rows
    with torch.overrides.TorchFunctionMode():
        assert call() is None  # a mode must see the call
    for change in declined[3:-1]:  # the Python function raises for these, with detops' error types
        with pytest.raises((ValueError, TypeError)):
            detops.conv_transpose2d(*{**args, **change}.values())


def _ran_detops_kernel(fn) -> bool:
    """Whether ``fn()`` ran detops' transposed-convolution kernel (else torch's)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return any(e.name.startswith("detops::conv_transpose2d") for e in prof.events())


@pytest.mark.parametrize(
    "shape,cout,layout,act,grad,ours",
    [
        # NCHW without a gradient: torch's deconvolution below 2**24 multiply-adds
        # N*H*W*Cin*Cout*kH*kW, ours from there (64 -> 64 channels: at 1024 px).
        ((1, 64, 31, 33), 64, "nchw", 0, False, False),
        ((1, 64, 32, 32), 64, "nchw", 0, False, True),
        ((1, 6, 32, 32), 5, "nchw", 0, False, False),  # 1024 px, but 1.2e5 multiply-adds
        # Recording a gradient: below 1024 input pixels N*H*W torch's, from 1024 on ours.
        ((3, 6, 13, 26), 5, "nchw", 1, True, False),
        ((2, 6, 16, 32), 5, "nchw", 1, True, True),
        # Channels-last, recording a gradient: below 4096 input pixels torch's, from 4096 on ours.
        ((1, 6, 63, 65), 5, "channels_last", 0, True, False),
        ((1, 6, 64, 64), 5, "channels_last", 0, True, True),
        # A channels-last forward without gradient or ReLU is oneDNN's either way: torch's call;
        # with a ReLU, ours from 1024 pixels.
        ((1, 6, 48, 48), 5, "channels_last", 0, False, False),
        ((1, 6, 48, 48), 5, "channels_last", 1, False, True),
        ((1, 6, 31, 33), 5, "channels_last", 1, False, False),
    ],
)
@pytest.mark.parametrize("entry", ["eager", "script"])
def test_dense_cpu_size_dispatch(shape, cout, layout, act, grad, ours, entry):
    """The float32 CPU crossovers, on both sides: the same results (and
    gradients) as torch wherever the layer runs. Eager calls route in C++
    (``_C.conv_transpose2d_eager``), scripted ones in Python
    (``_torch_is_faster``): both must take the same side."""
    conv = detops.conv_transpose2d if entry == "eager" else _scripted_conv_transpose2d()
    g = torch.Generator().manual_seed(sum(shape) + act)
    x = torch.randn(*shape, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(shape[1], cout, 2, 2, generator=g) / shape[1] ** 0.5
    bias = torch.randn(cout, generator=g)
    activation = "relu" if act else None

    def ref(a, w, b):
        out = F.conv_transpose2d(a, w, b, stride=2)
        return F.relu(out) if act else out

    def run(a, w, b):
        return conv(a, w, b, stride=2, activation=activation)

    if grad:
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        assert _ran_detops_kernel(lambda: run(*leaves)) == ours
        grad_out = torch.randn(shape[0], cout, 2 * shape[2], 2 * shape[3], generator=g)
        out, grads = _grads(run, (x, weight, bias), grad_out)
        ref_out, ref_grads = _grads(ref, (x, weight, bias), grad_out)
        for got, want in zip(grads, ref_grads):
            assert_close(got, want, rtol=1e-4, atol=1e-4)
    else:
        with torch.no_grad():
            assert _ran_detops_kernel(lambda: run(x, weight, bias)) == ours
            out, ref_out = run(x, weight, bias), ref(x, weight, bias)
    assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    # float64 layers run ours at every size.
    with torch.no_grad():
        assert _ran_detops_kernel(lambda: run(x.double(), weight.double(), bias.double()))


_ONEDNN_NATIVE = {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                  torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported()}


@pytest.mark.parametrize(
    "dtype,map_size,small",
    [
        # torch's below 7168 (bfloat16) / 2048 (float16) map pixels H * W, ours from there
        (torch.bfloat16, (6, 7), True),
        (torch.bfloat16, (64, 111), True),
        (torch.bfloat16, (64, 112), False),
        (torch.float16, (6, 7), True),
        (torch.float16, (32, 63), True),
        (torch.float16, (32, 64), False),
    ],
)
@pytest.mark.parametrize("native", ["0", "1", None])
@pytest.mark.parametrize("entry", ["eager", "script"])
def test_dense_cpu_reduced_precision_dispatch(dtype, map_size, small, native, entry, monkeypatch):
    """bfloat16/float16 CPU dense layers on small maps run torch's
    deconvolution where oneDNN computes the dtype natively (AVX512-BF16, AMX;
    DETOPS_CT_ONEDNN_NATIVE overrides what the CPU reports, in eager calls),
    ours elsewhere; torch's result within the dtype's rounding either way."""
    if native is not None:
        if entry == "script":
            pytest.skip("scripted calls read the CPU's answer only")
        monkeypatch.setenv("DETOPS_CT_ONEDNN_NATIVE", native)
    torch_side = small and (_ONEDNN_NATIVE[dtype] if native is None else native == "1")
    conv = detops.conv_transpose2d if entry == "eager" else _scripted_conv_transpose2d()
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 4, *map_size, generator=g).to(dtype)
    weight = (torch.randn(4, 8, 2, 2, generator=g) / 2).to(dtype)
    bias = torch.randn(8, generator=g).to(dtype)
    with torch.no_grad():
        assert _ran_detops_kernel(lambda: conv(x, weight, bias, stride=2, activation="relu")) != torch_side
        out = conv(x, weight, bias, stride=2, activation="relu")
    ref = F.relu(F.conv_transpose2d(x.double(), weight.double(), bias.double(), stride=2))
    assert out.dtype == dtype
    assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "shape,dtype,conv1x1",
    [
        ((1, 16, 64, 64), torch.float32, False),  # 64 * 2 * 2 * 64 * 64 = 2**20 columns: one matrix product
        ((1, 16, 64, 65), torch.float32, True),  # past 2**20: the 1x1 convolution
        ((1, 16, 8, 8), torch.bfloat16, True),  # bfloat16: the 1x1 convolution at every size
    ],
)
def test_dense_cpu_forward_gemm(shape, dtype, conv1x1):
    """The CPU dense forward's product on both sides of its crossover (a matrix
    product up to 2**20 columns N*Cout*kH*kW*H*W in float32 NCHW, else a 1x1
    convolution); the profiler shows which ran. Same result as torch's either way."""
    g = torch.Generator().manual_seed(shape[3])
    x = torch.randn(*shape, generator=g).to(dtype)
    weight = (torch.randn(16, 64, 2, 2, generator=g) / 4).to(dtype)
    bias = torch.randn(64, generator=g).to(dtype)
    out_size = [2 * shape[2], 2 * shape[3]]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = torch.ops.detops.conv_transpose2d(x, weight, bias, None, [2, 2], [0, 0], out_size, [0, 0], 1, 0)
    names = {e.name for e in prof.events()}
    assert ("aten::matmul" in names) != conv1x1, sorted(n for n in names if n.startswith("aten::"))
    ref = F.conv_transpose2d(x.double(), weight.double(), bias.double(), stride=2)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert_close(out.double(), ref, rtol=tol, atol=tol)


# ------------------------------------------------------------------ fused skip add


def _upsample_add_reference(x, skip, weight, bias, stride, crop, skip_offset, groups, size, act):
    """The unfused FCN sequence: Deconvolution, Crop, Eltwise sum (torch ops)."""
    up = F.conv_transpose2d(x, weight, None, stride, 0, 0, groups)
    oh, ow = size
    # positions past the upsampled extent have no taps: zeros, then bias and skip
    full = F.pad(up, (0, max(0, crop[1] + ow - up.shape[3]), 0, max(0, crop[0] + oh - up.shape[2])))
    out = full[:, :, crop[0] : crop[0] + oh, crop[1] : crop[1] + ow]
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    if skip is not None:
        out = out + skip[:, :, skip_offset[0] : skip_offset[0] + oh, skip_offset[1] : skip_offset[1] + ow]
    return F.relu(out) if act else out


@pytest.mark.parametrize(
    "name,cin,cout_g,groups,k,s,crop,skip_offset,size,skip_hw,act,bias",
    [
        # FCN-8s: upscore2 (k4 s2) + crop(score_pool4, 5)
        ("fcn_pool4", 21, 1, 21, 4, 2, (0, 0), (5, 5), None, (22, 24), False, False),
        # FCN-8s: upscore8 (k16 s8) cropped at 31 to the image, no skip
        ("fcn_final", 21, 1, 21, 16, 8, (31, 31), (0, 0), (40, 33), None, False, False),
        # window past the upsampled extent: bias + skip only there
        ("past_extent", 4, 2, 2, 3, 2, (1, 2), (0, 1), (14, 13), (15, 16), True, True),
        # dense kernel == stride with skip and ReLU (U-Net style)
        ("dense", 6, 5, 1, 2, 2, (1, 0), (2, 3), (7, 8), (10, 12), True, True),
        # wide groups: the unfused torch fallback must agree too
        ("fallback", 8, 8, 1, 3, 2, (1, 1), (1, 1), None, (12, 14), False, True),
    ],
)
def test_upsample_add_equals_unfused(device, name, cin, cout_g, groups, k, s, crop, skip_offset, size, skip_hw,
                                     act, bias):
    gen = torch.Generator().manual_seed(hash(name) % 1000)
    n, h, w = 2, 5, 6
    x = torch.randn(n, cin, h, w, dtype=torch.float64, generator=gen).to(device)
    weight = torch.randn(cin, cout_g, k, k, dtype=torch.float64, generator=gen).to(device)
    b = torch.randn(cout_g * groups, dtype=torch.float64, generator=gen).to(device) if bias else None
    skip = None
    if skip_hw is not None:
        skip = torch.randn(n, cout_g * groups, *skip_hw, dtype=torch.float64, generator=gen).to(device)
    natural = ((h - 1) * s + k, (w - 1) * s + k)
    out_size = size if size is not None else (natural[0] - 2 * crop[0], natural[1] - 2 * crop[1])
    activation = "relu" if act else None
    fused = lambda a, bb, c, d: detops.upsample_add(  # noqa: E731
        a, d, bb, c, s, crop, skip_offset, groups, size, activation=activation)
    ref = lambda a, bb, c, d: _upsample_add_reference(a, d, bb, c, s, crop, skip_offset, groups, out_size, act)  # noqa: E731
    out0 = ref(x, weight, b, skip)
    grad_out = torch.randn(out0.shape, dtype=torch.float64, generator=gen).to(device)
    out, grads = _grads(fused, (x, weight, b, skip), grad_out)
    ref_out, ref_grads = _grads(ref, (x, weight, b, skip), grad_out)
    assert out.shape == (n, cout_g * groups, *out_size)
    assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_random_windows_equal_unfused(device, seed):
    """Random layers (dense kernel == stride and grouped) with random crop windows,
    many of which torch's padding/output_padding cannot express (so every CPU
    algorithm, including the fused dense shuffle, runs), with skip and ReLU."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    for trial in range(8):
        cfg = _random_config(rng, dense=trial % 2 == 0)
        x, weight, bias = _make(cfg, device=device, generator=gen)
        s, k = cfg["s"], cfg["k"]
        natural = [(i - 1) * st + kk for i, st, kk in zip((cfg["h"], cfg["w"]), s, k)]
        crop = (rng.randint(0, natural[0] - 1), rng.randint(0, natural[1] - 1))
        size = (rng.randint(1, natural[0] + 3 - crop[0]), rng.randint(1, natural[1] + 3 - crop[1]))
        cout = cfg["cout_g"] * cfg["groups"]
        skip_offset = (rng.randint(0, 2), rng.randint(0, 2))
        skip = None
        if rng.random() < 0.5:
            skip = torch.randn(cfg["n"], cout, size[0] + skip_offset[0] + rng.randint(0, 2),
                               size[1] + skip_offset[1] + rng.randint(0, 2), dtype=x.dtype, generator=gen).to(device)
        act = rng.random() < 0.5
        fused = lambda a, b, c, d: detops.upsample_add(  # noqa: E731
            a, d, b, c, s, crop, skip_offset, cfg["groups"], size, activation="relu" if act else None)
        ref = lambda a, b, c, d: _upsample_add_reference(  # noqa: E731
            a, d, b, c, s, crop, skip_offset, cfg["groups"], size, act)
        out0 = ref(x, weight, bias, skip)
        grad_out = torch.randn(out0.shape, dtype=x.dtype, generator=gen).to(device)
        out, grads = _grads(fused, (x, weight, bias, skip), grad_out)
        ref_out, ref_grads = _grads(ref, (x, weight, bias, skip), grad_out)
        msg = f"{cfg} crop={crop} size={size} skip_offset={skip_offset} act={act}"
        assert_close(out, ref_out, rtol=1e-10, atol=1e-10, msg=msg)
        for g, r in zip(grads, ref_grads):
            assert_close(g, r, rtol=1e-10, atol=1e-10, msg=msg)


def test_upsample_add_bad_skip():
    x, weight = torch.randn(1, 3, 4, 4), torch.randn(3, 1, 4, 4)
    with pytest.raises(ValueError, match="skip"):
        detops.upsample_add(x, torch.randn(1, 3, 9, 9), weight, stride=2, groups=3, skip_offset=1)
    with pytest.raises(ValueError, match="skip"):
        detops.upsample_add(x, torch.randn(1, 4, 20, 20), weight, stride=2, groups=3)
    with pytest.raises(TypeError, match="skip"):
        detops.upsample_add(x, torch.randn(1, 3, 20, 20, dtype=torch.float64), weight, stride=2, groups=3)


# ------------------------------------------------------------------ modules


def _fcn_upsample_filt(size: int) -> np.ndarray:
    """The FCN reference code's bilinear filter (surgery.upsample_filt)."""
    factor = (size + 1) // 2
    if size % 2 == 1:
        center = factor - 1
    else:
        center = factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


@pytest.mark.parametrize("factor", [1, 2, 3, 8, 32])
def test_bilinear_init_equals_fcn(factor):
    m = BilinearUpsample(21, factor)
    k = 2 * factor - factor % 2
    assert m.weight.shape == (21, 1, k, k)
    expected = torch.from_numpy(_fcn_upsample_filt(k)).float()
    for c in range(21):
        assert_close(m.weight[c, 0], expected, rtol=0, atol=1e-7)
    assert_close(bilinear_kernel(k, torch.float64), torch.from_numpy(_fcn_upsample_filt(k)), rtol=0, atol=0)
    # FCN's dense layout: the filter on the diagonal, zero elsewhere, same output.
    dense = BilinearUpsample(4, factor, depthwise=False)
    assert dense.weight.shape == (4, 4, k, k)
    assert dense.weight[0, 1].abs().sum() == 0
    x = torch.randn(2, 4, 5, 3)
    out = dense(x)
    assert out.shape == (2, 4, 5 * factor, 3 * factor)
    assert_close(out, BilinearUpsample(4, factor)(x), rtol=1e-5, atol=1e-5)


def test_bilinear_upsample_fixed_and_learnable():
    fixed = BilinearUpsample(3, 4)
    assert "weight" in dict(fixed.named_buffers()) and not list(fixed.parameters())
    learn = BilinearUpsample(3, 4, learnable=True)
    assert [n for n, _ in learn.named_parameters()] == ["weight"]
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    learn(x).square().sum().backward()
    assert learn.weight.grad is not None and learn.weight.grad.abs().sum() > 0
    # A bilinear upsampling of a linear ramp is a linear ramp away from the borders.
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 3, 8, 8)
    up = BilinearUpsample(3, 2)(ramp)[0, 0, 4]
    diffs = up[2:-2].diff()
    assert_close(diffs, torch.full_like(diffs, 0.5), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "args,kwargs",
    [((8, 6, 2), dict(stride=2)), ((8, 8, 4), dict(stride=2, padding=1, groups=8, bias=False)),
     ((6, 4, 3), dict(stride=2, padding=1, output_padding=1)), ((4, 4, 3), dict(dilation=2))],
)
def test_conv_transpose2d_module_state_dict(device, args, kwargs):
    ours = ConvTranspose2d(*args, **kwargs).to(device)
    theirs = torch.nn.ConvTranspose2d(*args, **kwargs).to(device)
    theirs.load_state_dict(ours.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(2, args[0], 5, 7, device=device)
    theirs64 = theirs.double()  # float64 reference: cuDNN may compute float32 in TF32
    assert_close(ours(x), theirs64(x.double()).float(), rtol=1e-5, atol=1e-5)
    if kwargs.get("stride", 1) == 2 and not kwargs.get("output_padding"):
        # forward(output_size=...) picks the output_padding, as torch's module does
        want = [s + 1 for s in theirs64(x.double()).shape[-2:]]
        assert_close(ours(x, output_size=want), theirs64(x.double(), output_size=want).float(), rtol=1e-5, atol=1e-5)
    relu = ConvTranspose2d(*args, **kwargs, activation="relu").to(device)
    relu.load_state_dict(theirs.state_dict())
    assert_close(relu(x), F.relu(theirs64(x.double())).float(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ torch.library checks


def _sample_args(dense: bool, with_skip: bool, act: int):
    gen = torch.Generator().manual_seed(11)
    if dense:
        x, w = torch.randn(2, 3, 3, 4, generator=gen, dtype=torch.float64), torch.randn(3, 2, 2, 3, generator=gen,
                                                                                          dtype=torch.float64)
        stride, offset, groups, cout = [2, 3], [1, 0], 1, 2
    else:
        x, w = torch.randn(2, 4, 3, 4, generator=gen, dtype=torch.float64), torch.randn(4, 1, 4, 3, generator=gen,
                                                                                          dtype=torch.float64)
        stride, offset, groups, cout = [2, 2], [1, 1], 4, 4
    size = [5, 7]
    bias = torch.randn(cout, generator=gen, dtype=torch.float64)
    skip = torch.randn(2, cout, 7, 8, generator=gen, dtype=torch.float64) if with_skip else None
    return x, w, bias, skip, stride, offset, size, [1, 1] if with_skip else [0, 0], groups, act


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("with_skip,act", [(False, 0), (True, 1)])
def test_gradcheck(dense, with_skip, act):
    x, w, bias, skip, *rest = _sample_args(dense, with_skip, act)
    tensors = [t.requires_grad_(True) for t in (x, w, bias)] + ([skip.requires_grad_(True)] if with_skip else [])

    def fn(x, w, bias, *maybe_skip):
        return ops.conv_transpose2d(x, w, bias, maybe_skip[0] if maybe_skip else None, *rest)

    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("with_skip,act", [(False, 0), (True, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(dense, with_skip, act, channels_last):
    args = _sample_args(dense, with_skip, act)
    if channels_last:  # the fake kernel must promise the real output's layout
        args = (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    for t in args[:4]:
        if t is not None:
            t.requires_grad_(True)
    torch.library.opcheck(ops.conv_transpose2d, args)
    grad = torch.randn(2, args[1].shape[1] * args[8], 5, 7, dtype=torch.float64)
    torch.library.opcheck(ops.conv_transpose2d_backward, (grad, args[0].detach(), args[1].detach(), args[4], args[5],
                                                          args[8], [True, True, True]))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()

    def head(score_fr, score_pool4, w2, w_dense, b_dense):
        fused = detops.upsample_add(score_fr, score_pool4, w2, stride=2, skip_offset=5, groups=21)
        return detops.conv_transpose2d(fused, w_dense, b_dense, stride=2, activation="relu")

    gen = torch.Generator().manual_seed(2)
    score_fr = torch.randn(1, 21, 4, 5, generator=gen, requires_grad=True)
    score_pool4 = torch.randn(1, 21, 20, 22, generator=gen)
    w2 = bilinear_kernel(4).expand(21, 1, 4, 4).contiguous()
    w_dense = torch.randn(21, 3, 2, 2, generator=gen, requires_grad=True)
    b_dense = torch.randn(3, generator=gen)
    compiled = torch.compile(head, fullgraph=True, backend=backend)
    out = compiled(score_fr, score_pool4, w2, w_dense, b_dense)
    ref = head(score_fr, score_pool4, w2, w_dense, b_dense)
    assert_close(out, ref, rtol=1e-6, atol=1e-6)
    g1 = torch.autograd.grad(out.sum(), (score_fr, w_dense))
    g2 = torch.autograd.grad(ref.sum(), (score_fr, w_dense))
    for a, b in zip(g1, g2):
        assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_torch_compile_dynamic_shapes():
    torch._dynamo.reset()

    def fn(x, w, skip):
        return detops.upsample_add(x, skip, w, stride=2, skip_offset=1, groups=4, activation="relu") * 2

    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    w = torch.randn(4, 1, 4, 4)
    for hw in [(5, 6), (7, 9)]:
        x = torch.randn(2, 4, *hw, requires_grad=True)
        skip = torch.randn(2, 4, 2 * hw[0] + 5, 2 * hw[1] + 5)
        out, ref = compiled(x, w, skip), fn(x, w, skip)
        assert_close(out, ref, rtol=1e-6, atol=1e-6)
        assert_close(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0], rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ bad inputs


def test_bad_inputs():
    x, w = torch.randn(1, 4, 3, 3), torch.randn(4, 1, 4, 4)
    with pytest.raises(ValueError, match="input"):
        detops.conv_transpose2d(torch.randn(4, 3), w)
    with pytest.raises(ValueError, match="weight"):
        detops.conv_transpose2d(x, torch.randn(4, 4, 4))
    with pytest.raises(ValueError, match="weight"):
        detops.conv_transpose2d(x, torch.randn(3, 1, 4, 4))
    with pytest.raises(ValueError, match="groups"):
        detops.conv_transpose2d(x, w, groups=3)
    with pytest.raises(ValueError, match="bias"):
        detops.conv_transpose2d(x, w, torch.randn(3), groups=4)
    with pytest.raises(TypeError, match="weight"):
        detops.conv_transpose2d(x, w.double(), groups=4)
    with pytest.raises(ValueError, match="output_padding"):
        detops.conv_transpose2d(x, w, stride=2, output_padding=2, groups=4)
    with pytest.raises(ValueError, match="stride"):
        detops.conv_transpose2d(x, w, stride=0, groups=4)
    with pytest.raises(ValueError, match="padding"):
        detops.conv_transpose2d(x, w, padding=9, groups=4)
    with pytest.raises(ValueError, match="activation"):
        detops.conv_transpose2d(x, w, groups=4, activation="gelu")
    with pytest.raises(TypeError, match="input"):
        detops.conv_transpose2d(x.numpy(), w)
    with pytest.raises(ValueError, match="same device"):
        detops.conv_transpose2d(x, w.to("meta"), groups=4)
    with pytest.raises(ValueError, match="same device"):
        detops.upsample_add(x, torch.randn(1, 4, 9, 9, device="meta"), w, stride=2, groups=4)
    # the operator's own checks (direct torch.ops calls)
    with pytest.raises(RuntimeError, match="skip"):
        ops.conv_transpose2d(x, w, None, torch.randn(1, 4, 5, 5), [2, 2], [0, 0], [8, 8], [0, 0], 4, 0)
    with pytest.raises(RuntimeError, match="stride"):
        ops.conv_transpose2d(x, w, None, None, [0, 2], [0, 0], [8, 8], [0, 0], 4, 0)
    with pytest.raises(RuntimeError, match="activation"):
        ops.conv_transpose2d(x, w, None, None, [2, 2], [0, 0], [8, 8], [0, 0], 4, 7)
    with pytest.raises(RuntimeError, match="float32"):
        ops.conv_transpose2d(x.int(), w.int(), None, None, [2, 2], [0, 0], [8, 8], [0, 0], 4, 0)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.conv_transpose2d(x, w.double(), None, None, [2, 2], [0, 0], [8, 8], [0, 0], 4, 0)


def test_nan_propagates(device):
    x = torch.randn(1, 2, 3, 3, device=device)
    x[0, 0, 1, 1] = float("nan")
    w = torch.rand(2, 1, 4, 4, device=device) + 0.1
    out = detops.conv_transpose2d(x, w, stride=2, groups=2, activation="relu")
    ref = F.relu(F.conv_transpose2d(x.double(), w.double(), stride=2, groups=2)).float()
    assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out.isnan().sum() == 16
