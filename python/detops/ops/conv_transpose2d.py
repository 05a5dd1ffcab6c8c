"""Transposed convolution for upsampling heads (FCN, deconvolution networks,
U-Net decoders, the Mask R-CNN mask head), with the skip connection and the
activation fused in.

Operators (``torch.ops.detops.*``), with autograd (first order):

* ``conv_transpose2d(input [N,Cin,H,W], weight [Cin,Cout/groups,kH,kW], bias [Cout]?,
  skip [N,Cout,SH,SW]?, stride, offset, output_size, skip_offset, groups, activation)
  -> [N,Cout,OH,OW]``: the window ``[offset, offset + output_size)`` of the uncropped
  transposed convolution (``offset`` is torch's ``padding``), plus bias, plus the
  window of ``skip`` at ``skip_offset``, then the activation (0 none, 1 ReLU).
* ``conv_transpose2d_backward(grad, input, weight, stride, offset, groups, output_mask)
  -> (grad_input, grad_weight, grad_bias)`` (empty tensors where the mask is False).

Algorithms (the C++ CPU and CUDA kernels choose):

* gather, for grouped and depthwise layers (FCN's bilinear 4/2, 16/8, 64/32):
  each output pixel reads only the ``ceil(k/s)**2`` taps that reach it;
* dense, for ``groups == 1`` and ``kernel == stride`` (Mask R-CNN 2/2, U-Net):
  one matrix product, then one pass that shuffles pixels and adds bias and skip
  and applies the activation. The product is cuBLAS on CUDA and a oneDNN 1x1
  convolution on CPU. On CPU a channels-last layer whose window torch can
  express runs oneDNN's direct deconvolution instead (its native layout, so
  there is nothing for the shuffle to save) with the skip add and ReLU fused
  after it, and the backward uses the column form only while one image's
  columns stay in cache, else oneDNN's deconvolution backward. On CPU a
  bfloat16/float16 product is computed in float32 and rounded once: on CPUs
  without AVX512-BF16 torch has no fast reduced-precision convolution, and its
  reference path, which ``F.conv_transpose2d`` itself takes there, was slower
  than this one at every U-Net size timed (256 -> 128 channels, bf16 NCHW,
  4x4 to 32x32 maps, one thread: torch 1.4x, 1.4x, 2.1x and 2.5x slower;
  ``bench/conv_transpose2d_crossover.py``). Where oneDNN computes the dtype
  natively (AVX512-BF16, AMX), :func:`conv_transpose2d` hands such layers on
  small maps to torch instead.

The output keeps the input's memory format (channels-last in, channels-last
out), as torch's does, and so does the input's gradient.

All index arithmetic is int64. Gradients are first order (no double backward).

:func:`conv_transpose2d` uses these kernels for depthwise/grouped layers with at
most 16 (input, output) channel pairs per group, and for dense layers with
kernel == stride; every other configuration (dilation > 1, wide groups, dense
layers with kernel != stride, integer or complex tensors) falls back to
``torch.nn.functional.conv_transpose2d`` (plus ``relu`` when asked). So do the
CPU dense layers that torch's oneDNN deconvolution serves faster: float32 NCHW
forwards without a gradient below 2**24 multiply-adds, float32 NCHW layers
that record one below 1024 input pixels (``N * H * W``), float32 channels-last
layers that record one below 4096, float32 channels-last forwards without one
that fuse no ReLU, and bfloat16/float16 layers on small maps on CPUs where
oneDNN computes them natively (the measured crossovers are in
``_torch_is_faster``).
"""


import os
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _C
from ._common import (
    DtypeError,
    ShapeError,
    check_same_device,
    check_tensor,
    is_channels_last,
    is_kernel_float,
    memory_format_of,
)

__all__ = ["conv_transpose2d", "upsample_add"]

_ops = torch.ops.detops

# An int or a pair of ints (in eager Python also any sequence), as torch's conv arguments.
IntPair = Union[int, List[int], Tuple[int, int]]

# Gather costs ceil(k/s)^2 * (Cin/groups) multiply-adds per output and reuses
# nothing across channels; past this many channel pairs per group torch's
# matrix-product form wins. (The eager C++ entry's kMaxGatherChannelPairs.)
_MAX_GATHER_CHANNEL_PAIRS = 16

# False when detops was built without its CUDA kernels (CUDA tensors then use torch).
_HAS_CUDA_KERNEL = torch._C._dispatch_has_kernel_for_dispatch_key("detops::conv_transpose2d", "CUDA")


# ------------------------------------------------------------------ registration


@torch.library.register_fake("detops::conv_transpose2d")
def _forward_fake(input, weight, bias, skip, stride, offset, output_size, skip_offset, groups, activation):
    torch._check(input.dim() == 4 and weight.dim() == 4, lambda: "input and weight must be 4-D")
    shape = (input.shape[0], weight.shape[1] * groups, output_size[0], output_size[1])
    return torch.empty(shape, dtype=input.dtype, device=input.device,
                       memory_format=memory_format_of(is_channels_last(input)))


@torch.library.register_fake("detops::conv_transpose2d_backward")
def _backward_fake(grad, input, weight, stride, offset, groups, output_mask):
    empty = input.new_empty((0,))
    return (
        torch.empty_like(input, memory_format=memory_format_of(is_channels_last(input))) if output_mask[0] else empty,
        torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else input.new_empty((0,)),
        input.new_empty((weight.shape[1] * groups,)) if output_mask[2] else input.new_empty((0,)),
    )


def _setup_context(ctx, inputs, output) -> None:
    input, weight, bias, skip, stride, offset, output_size, skip_offset, groups, activation = inputs
    ctx.save_for_backward(input, weight, output if activation == 1 else None)
    ctx.stride, ctx.offset, ctx.groups, ctx.activation = stride, offset, groups, activation
    ctx.has_bias = bias is not None
    ctx.skip_shape = None if skip is None else skip.shape
    ctx.skip_offset = skip_offset


def _backward(ctx, grad: Tensor):
    input, weight, output = ctx.saved_tensors
    if ctx.activation == 1:
        # ReLU's gradient: zero where the output was clamped (torch's threshold_backward).
        grad = torch.ops.aten.threshold_backward(grad, output, 0)
    need = ctx.needs_input_grad
    mask = [need[0], need[1], need[2] and ctx.has_bias]
    grad_input = grad_weight = grad_bias = grad_skip = None
    if any(mask):
        gi, gw, gb = _ops.conv_transpose2d_backward(grad, input, weight, ctx.stride, ctx.offset, ctx.groups, mask)
        grad_input = gi if mask[0] else None
        grad_weight = gw if mask[1] else None
        grad_bias = gb if mask[2] else None
    if ctx.skip_shape is not None and need[3]:
        sy, sx = ctx.skip_offset
        oh, ow = grad.shape[-2:]
        grad_skip = F.pad(grad, (sx, ctx.skip_shape[3] - sx - ow, sy, ctx.skip_shape[2] - sy - oh))
    return grad_input, grad_weight, grad_bias, grad_skip, None, None, None, None, None, None


torch.library.register_autograd("detops::conv_transpose2d", _backward, setup_context=_setup_context)


# ------------------------------------------------------------------ argument handling


def _pair(value: IntPair, name: str, minimum: int) -> List[int]:
    if isinstance(value, int):
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
        return [value, value]
    elif isinstance(value, list):
        pair = value
    elif torch.jit.is_scripting():
        pair = [value[0], value[1]]
    else:
        pair = list(value)
    if len(pair) == 1:
        pair = [pair[0], pair[0]]
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value}")
    if not torch.jit.is_scripting():
        if not all(isinstance(v, int) for v in pair):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value}")
    if pair[0] < minimum or pair[1] < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return [pair[0], pair[1]]


def _activation_code(activation: Optional[str]) -> int:
    if activation is None or activation == "none":
        return 0
    if activation == "relu":
        return 1
    raise ValueError(f"activation must be None, 'none' or 'relu', got '{activation}'")


def _check_inputs(input: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int) -> None:
    check_tensor(input, "input")
    check_tensor(weight, "weight")
    in_shape, kernel_shape = input.shape, weight.shape
    if len(in_shape) != 4:
        raise ShapeError(f"input must be [N, Cin, H, W] (or [Cin, H, W]), got {list(in_shape)}")
    if len(kernel_shape) != 4:
        raise ShapeError(f"weight must be [Cin, Cout / groups, kH, kW], got {list(kernel_shape)}")
    if not torch.jit.is_scripting():
        if not isinstance(groups, int):
            raise ValueError(f"groups must be a positive int, got {type(groups).__name__} {groups}")
    if groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups}")
    cin = in_shape[1]
    if cin != kernel_shape[0]:
        raise ValueError(f"weight.shape[0] must equal the input channels {cin}, got weight {list(kernel_shape)}")
    if cin % groups != 0:
        raise ValueError(f"input channels {cin} must be divisible by groups {groups}")
    dtype = input.dtype
    if bias is None:
        if not (input.is_cpu and weight.is_cpu):
            check_same_device([input, weight], ["input", "weight"])
    else:
        check_tensor(bias, "bias")
        if bias.dim() != 1 or bias.shape[0] != kernel_shape[1] * groups:
            raise ShapeError(f"bias must be [{kernel_shape[1] * groups}], got {list(bias.shape)}")
        if not (input.is_cpu and weight.is_cpu and bias.is_cpu):
            check_same_device([input, weight, bias], ["input", "weight", "bias"])
        if bias.dtype != dtype:
            raise DtypeError(f"bias must have the input's dtype {dtype}, got {bias.dtype}")
    if weight.dtype != dtype:
        raise DtypeError(f"weight must have the input's dtype {dtype}, got {weight.dtype}")


def _uses_kernels(input: Tensor, weight: Tensor, stride: List[int], groups: int) -> bool:
    """Whether our kernels serve this layer (else torch's conv_transpose2d does)."""
    if not is_kernel_float(input.dtype):
        return False
    if not input.is_cpu:
        if not input.is_cuda:
            return False
        if not torch.jit.is_scripting():
            if not _HAS_CUDA_KERNEL:  # (a scripted model is deployed with the CUDA build)
                return False
    kernel_shape = weight.shape
    if groups == 1 and kernel_shape[2] == stride[0] and kernel_shape[3] == stride[1]:
        return True
    return (input.shape[1] // groups) * kernel_shape[1] <= 16  # _MAX_GATHER_CHANNEL_PAIRS (TorchScript reads no globals)


# torch's oneDNN deconvolution serves float32 CPU dense layers below these
# sizes faster than detops' kernels; see _torch_is_faster. (The eager C++
# entry's kDenseCpuMinPixels, kDenseCpuMinMacs and kChannelsLastBackwardMinPixels.)
_DENSE_CPU_MIN_PIXELS = 1024  # N * H * W: NCHW layers that record a gradient, channels-last ReLU
_DENSE_CPU_MIN_MACS = 1 << 24  # N * H * W * Cin * Cout * kH * kW: NCHW forwards without one
_CHANNELS_LAST_BACKWARD_MIN_PIXELS = 4096  # N * H * W: channels-last layers that record one
# bfloat16/float16 where oneDNN computes them natively: torch's below these map sizes H * W.
_ONEDNN_BF16_MAX_MAP_PIXELS = 7168
_ONEDNN_FP16_MAX_MAP_PIXELS = 2048

# Whether torch's oneDNN convolution computes bfloat16 / float16 natively on
# this CPU (AVX512-BF16 or AMX; AVX512-FP16 or AMX-FP16).
_ONEDNN_NATIVE_BF16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
_ONEDNN_NATIVE_FP16 = bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def _onednn_native(dtype: torch.dtype) -> bool:
    """Whether torch's oneDNN convolution computes ``dtype`` (bfloat16 or
    float16) natively on this CPU; ``DETOPS_CT_ONEDNN_NATIVE=1|0`` overrides."""
    bf16 = dtype == torch.bfloat16
    if not torch.jit.is_scripting():
        forced = os.environ.get("DETOPS_CT_ONEDNN_NATIVE")
        if forced is not None:
            return forced == "1"
        return _ONEDNN_NATIVE_BF16 if bf16 else _ONEDNN_NATIVE_FP16
    return torch.ops.mkldnn._is_mkldnn_bf16_supported() if bf16 else torch.ops.mkldnn._is_mkldnn_fp16_supported()


def _torch_is_faster(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], groups: int,
                     act: int) -> bool:
    """Whether torch's own conv_transpose2d serves this CPU dense layer
    (``kernel == stride``, one group) faster than detops' kernel.

    float32, measured with ``bench/conv_transpose2d_crossover.py --fp32`` and
    the size sweep on two 2-core CPUs (an AMD EPYC; an Intel Xeon with
    AVX512 and AMX), U-Net's 256->128 and Mask R-CNN's 256->256 layers:

    * an NCHW forward that records no gradient runs ours (one matrix product
      and the shuffle) from 2**24 multiply-adds: U-Net 16x16 (3.4e7) 1.24-1.46x,
      a one-RoI mask head (5.1e7) 1.06-1.41x; below, torch's wins (U-Net 8x8,
      8.4e6: ours 0.93x);
    * an NCHW layer that records a gradient runs ours from 1024 input pixels
      ``N * H * W``; below, torch's forward and backward win (U-Net 16x16
      forward+backward: ours 0.89x);
    * a channels-last layer that records a gradient runs ours from 4096 input
      pixels: U-Net 32x32 forward+backward read 1.13x on the EPYC but 0.82x on
      the Xeon, 64x64 2.53x and 1.06x;
    * a channels-last forward that needs no gradient is oneDNN's deconvolution
      either way, so torch's call, with less overhead, serves it at every size
      unless it fuses a ReLU (ours from 1024 pixels).

    bfloat16/float16, where oneDNN computes them natively
    (:func:`_onednn_native`), run torch's on maps below 7168 (bfloat16) or
    2048 (float16) pixels ``H * W``, ours from there. On the Xeon (AMX,
    AVX512-FP16), ReLU fused, torch/ours time: U-Net 256->128 bfloat16 4x4 to
    80x80 1.6-2.7x, 90x90 0.70x; float16 4x4 to 40x40 1.1-1.6x, 48x48 0.80x,
    90x90 0.75x; Mask R-CNN's 256->256 head on 1 to 32 RoIs of 14x14,
    bfloat16 1.6-3.3x, float16 1.02-1.6x. Elsewhere ours (1.25-6.2x on the
    EPYC, where torch takes its reference path). float64 always runs ours
    (torch has no oneDNN path).

    Eager CPU calls take the same rule in C++ (``torch_is_faster`` in
    ``csrc/conv_transpose2d/conv_transpose2d_eager.cpp``, with the constants);
    this one serves TorchScript, ``torch.compile`` and the calls the C++ entry
    declines. ``test_dense_cpu_size_dispatch`` runs both on both sides.
    """
    if not input.is_cpu or groups != 1:
        return False
    in_shape, kernel_shape = input.shape, weight.shape
    if kernel_shape[2] != stride[0] or kernel_shape[3] != stride[1]:
        return False
    dtype = input.dtype
    if dtype == torch.bfloat16 or dtype == torch.float16:
        # The literals are _ONEDNN_BF16_MAX_MAP_PIXELS and _ONEDNN_FP16_MAX_MAP_PIXELS.
        return _onednn_native(dtype) and in_shape[2] * in_shape[3] < (7168 if dtype == torch.bfloat16 else 2048)
    if dtype != torch.float32:
        return False
    pixels = in_shape[0] * in_shape[2] * in_shape[3]
    # TorchScript reads no globals: the literals are the _DENSE_CPU_* and _CHANNELS_LAST_* constants.
    if is_channels_last(input):
        if _records_grad(input, weight, bias):
            return pixels < 4096
        return act == 0 or pixels < 1024
    macs = pixels * in_shape[1] * kernel_shape[1] * kernel_shape[2] * kernel_shape[3]
    if pixels >= 1024 and macs >= 16777216:
        return False
    return pixels < 1024 if _records_grad(input, weight, bias) else macs < 16777216


def _records_grad(input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    if not torch.is_grad_enabled():
        return False
    return input.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)


def _natural_size(size: int, stride: int, kernel: int) -> int:
    return (size - 1) * stride + kernel


# ------------------------------------------------------------------ public functions


@torch.fx.wrap
def conv_transpose2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    output_padding: IntPair = 0,
    groups: int = 1,
    dilation: IntPair = 1,
    activation: Optional[str] = None,
) -> Tensor:
    """Drop-in for :func:`torch.nn.functional.conv_transpose2d`, with an optional fused ReLU.

    Args:
        input: ``[N, Cin, H, W]`` or unbatched ``[Cin, H, W]``.
        weight: ``[Cin, Cout / groups, kH, kW]``.
        bias: ``[Cout]`` or None.
        stride, padding, output_padding, dilation: ints or pairs, as in torch.
        groups: channel groups (``groups == Cin`` is depthwise).
        activation: None or ``"relu"``, applied after the bias.

    Returns:
        ``[N, Cout, OH, OW]`` with ``OH = (H - 1) * sH - 2 * pH + dH * (kH - 1) + opH + 1``.

    Depthwise/grouped layers (at most 16 channel pairs per group) and dense layers
    with ``kernel == stride`` run detops' kernels; any other configuration
    (including ``dilation > 1``) falls back to torch's implementation, as do the
    CPU dense layers torch serves faster (float32 below measured sizes;
    bfloat16/float16 where oneDNN computes them natively): see the module
    docstring.
    """
    if not torch.jit.is_scripting():
        if not torch.compiler.is_compiling():
            # Plain CPU tensors and valid arguments: the checks and routing below, in C++
            # (_C.conv_transpose2d_eager), at the cost of torch's own binding; None otherwise.
            fast = _C.conv_transpose2d_eager(
                input, weight, bias, stride, padding, output_padding, groups, dilation, activation
            )
            if fast is not None:
                return fast
    check_tensor(input, "input")
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    _check_inputs(input, weight, bias, groups)
    act = _activation_code(activation)
    stride_ = _pair(stride, "stride", 1)
    padding_ = _pair(padding, "padding", 0)
    output_padding_ = _pair(output_padding, "output_padding", 0)
    dilation_ = _pair(dilation, "dilation", 1)
    for i in range(2):
        if output_padding_[i] >= stride_[i] and output_padding_[i] >= dilation_[i]:
            raise ValueError(
                f"output_padding must be smaller than stride or dilation, got output_padding={output_padding}, "
                f"stride={stride}, dilation={dilation}"
            )
    in_shape, kernel_shape = input.shape, weight.shape
    out_size = [
        (in_shape[2] - 1) * stride_[0] - 2 * padding_[0] + dilation_[0] * (kernel_shape[2] - 1) + output_padding_[0] + 1,
        (in_shape[3] - 1) * stride_[1] - 2 * padding_[1] + dilation_[1] * (kernel_shape[3] - 1) + output_padding_[1] + 1,
    ]
    if out_size[0] < 1 or out_size[1] < 1:
        raise ValueError(
            f"the output would be {out_size[0]}x{out_size[1]}: padding {padding} is too large for input "
            f"{list(input.shape)} and kernel {list(weight.shape[2:])}"
        )
    if (dilation_[0] != 1 or dilation_[1] != 1 or not _uses_kernels(input, weight, stride_, groups)
            or _torch_is_faster(input, weight, bias, stride_, groups, act)):
        out = F.conv_transpose2d(input, weight, bias, stride_, padding_, output_padding_, groups, dilation_)
        if act == 1:
            out = F.relu(out)
    else:
        out = _ops.conv_transpose2d(input, weight, bias, None, stride_, padding_, out_size, [0, 0], groups, act)
    return out.squeeze(0) if unbatched else out


def upsample_add(
    input: Tensor,
    skip: Tensor | None,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    crop: int | Sequence[int] = 0,
    skip_offset: int | Sequence[int] = 0,
    groups: int = 1,
    output_size: Sequence[int] | None = None,
    *,
    activation: str | None = None,
) -> Tensor:
    """Upsample with a transposed convolution, crop, and add a cropped skip connection, in one kernel.

    Computes ``act(up[..., cy : cy + OH, cx : cx + OW] + bias + skip[..., sy : sy + OH, sx : sx + OW])``
    where ``up = conv_transpose2d(input, weight, stride=stride, groups=groups)`` is the
    uncropped upsampling (FCN's ``Deconvolution`` then ``Crop`` then ``Eltwise`` sum).

    Args:
        input: ``[N, Cin, H, W]`` (e.g. FCN's ``score_fr``).
        skip: ``[N, Cout, SH, SW]`` (e.g. ``score_pool4``) or None for a crop alone.
        weight: ``[Cin, Cout / groups, kH, kW]`` (e.g. :func:`detops.nn.bilinear_kernel`).
        bias: ``[Cout]`` or None.
        stride: upsampling factor(s).
        crop: ``(cy, cx)``, where the output window starts in ``up`` (FCN-8s: 31 for the final
            ``upscore8``); acts as ``padding`` of a transposed convolution.
        skip_offset: ``(sy, sx)``, where the window starts in ``skip`` (FCN-8s: 5 for
            ``score_pool4``, 9 for ``score_pool3``).
        groups: channel groups of the transposed convolution.
        output_size: ``(OH, OW)``; default ``up``'s size less ``2 * crop``. Positions past
            ``up``'s extent receive the bias (and skip) only.
        activation: None or ``"relu"``, applied last.

    Returns:
        ``[N, Cout, OH, OW]``.
    """
    _check_inputs(input, weight, bias, groups)
    act = _activation_code(activation)
    stride_ = _pair(stride, "stride", 1)
    crop_ = _pair(crop, "crop", 0)
    skip_offset_ = _pair(skip_offset, "skip_offset", 0)
    natural = [_natural_size(s, st, k) for s, st, k in zip(input.shape[2:], stride_, weight.shape[2:])]
    if output_size is None:
        size = [n - 2 * c for n, c in zip(natural, crop_)]
    else:
        size = list(_pair(tuple(output_size)[-2:], "output_size", 0))
    if min(size) < 0:
        raise ValueError(f"crop {crop!r} is larger than the upsampled size {natural}")
    cout = weight.shape[1] * groups
    if skip is not None:
        check_tensor(skip, "skip")
        check_same_device([input, skip], ["input", "skip"])
        if skip.dtype != input.dtype:
            raise TypeError(f"skip must have the input's dtype {input.dtype}, got {skip.dtype}")
        if skip.dim() != 4 or skip.shape[0] != input.shape[0] or skip.shape[1] != cout:
            raise ValueError(f"skip must be [{input.shape[0]}, {cout}, SH, SW], got {list(skip.shape)}")
        if skip_offset_[0] + size[0] > skip.shape[2] or skip_offset_[1] + size[1] > skip.shape[3]:
            raise ValueError(
                f"skip {list(skip.shape)} is too small for a {size[0]}x{size[1]} window at skip_offset {skip_offset_}"
            )
    if _uses_kernels(input, weight, stride_, groups):
        return _ops.conv_transpose2d(input, weight, bias, skip, stride_, crop_, size, skip_offset_, groups, act)
    # Unfused fallback: the same window arithmetic with torch ops.
    up = F.conv_transpose2d(input, weight, None, stride_, 0, 0, groups)
    out = F.pad(
        up, (-crop_[1], size[1] - (natural[1] - crop_[1]), -crop_[0], size[0] - (natural[0] - crop_[0]))
    )
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    if skip is not None:
        sy, sx = skip_offset_
        out = out + skip[:, :, sy : sy + size[0], sx : sx + size[1]]
    return F.relu(out) if act == 1 else out
