"""Position-sensitive RoI Align (Light-Head R-CNN): ``ps_roi_align`` and the
``PSRoIAlign`` module, with torchvision's signatures and results.

Operators (``torch.ops.detops.*``, torchvision's schemas), with autograd (no
gradient for the boxes):

* ``ps_roi_align(input [N,C,H,W], rois [K,5], spatial_scale, pooled_h, pooled_w,
  sampling_ratio) -> (output [K,C/(pooled_h*pooled_w),pooled_h,pooled_w],
  channel_mapping int32, same shape)``: output channel ``c`` of bin
  ``(ph, pw)`` is RoI Align (half-pixel aligned) of input channel
  ``(c * pooled_h + ph) * pooled_w + pw``, which ``channel_mapping`` records.
* ``ps_roi_align_backward(grad, rois, channel_mapping, ..., N, C, H, W) ->
  grad_input [N,C,H,W]``: deterministic on CPU (no atomics); on CUDA it uses
  atomics unless deterministic algorithms are enabled.

``rois`` rows are ``(batch_index, x1, y1, x2, y2)``. Channels-last maps are
read in place; outputs and gradients are contiguous (NCHW), as torchvision's.
float16/bfloat16 are read natively and computed in float32. On CPU, float32
and float64 results (forward and input gradient) equal torchvision's bit for bit.
"""


import math
from typing import List, Tuple, Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from ._common import DtypeError, ShapeError
from .roi_align import _check_feature, _pooled_size, _to_rois

__all__ = ["ps_roi_align", "PSRoIAlign"]

_ops = torch.ops.detops


# ------------------------------------------------------------------ registration (shared with ps_roi_pool)


def _ps_fake(input: Tensor, rois: Tensor, pooled_height: int, pooled_width: int) -> Tuple[Tensor, Tensor]:
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "rois must be [K, 5]")
    torch._check(
        input.shape[1] % (pooled_height * pooled_width) == 0,
        lambda: "input channels must be a multiple of pooled_height * pooled_width",
    )
    shape = (rois.shape[0], input.shape[1] // (pooled_height * pooled_width), pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


def _ps_backward_fake(grad: Tensor, batch_size: int, channels: int, height: int, width: int) -> Tensor:
    return grad.new_empty((batch_size, channels, height, width))


@torch.library.register_fake("detops::ps_roi_align")
def _ps_roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    return _ps_fake(input, rois, pooled_height, pooled_width)


@torch.library.register_fake("detops::ps_roi_align_backward")
def _ps_roi_align_backward_fake(grad, rois, channel_mapping, spatial_scale, pooled_height, pooled_width,
                                sampling_ratio, batch_size, channels, height, width):
    return _ps_backward_fake(grad, batch_size, channels, height, width)


def _register_autograd(op: str) -> None:
    """Autograd of ``detops::<op>``: the gradient of the map through
    ``<op>_backward``, none for the other arguments."""
    backward_op = getattr(_ops, op + "_backward")

    def setup(ctx, inputs, output) -> None:
        input, rois, *args = inputs
        _, channel_mapping = output
        ctx.save_for_backward(rois, channel_mapping)
        ctx.args = (*args, *input.shape)
        ctx.num_inputs = len(inputs)
        ctx.mark_non_differentiable(channel_mapping)

    def backward(ctx, grad: Tensor, grad_channel_mapping):
        rois, channel_mapping = ctx.saved_tensors
        return (backward_op(grad, rois, channel_mapping, *ctx.args),) + (None,) * (ctx.num_inputs - 1)

    torch.library.register_autograd(f"detops::{op}", backward, setup_context=setup)


_register_autograd("ps_roi_align")


# ------------------------------------------------------------------ argument handling (shared with ps_roi_pool)


def _ps_args(input: Tensor, output_size: BroadcastingList2[int], spatial_scale: float) -> Tuple[int, int, float]:
    """``(pooled_h, pooled_w, spatial_scale)`` after checking them against ``input``."""
    _check_feature(input, "input")
    if input.is_quantized:
        raise DtypeError(f"input must be float16, bfloat16, float32 or float64, got {input.dtype}")
    ph, pw = _pooled_size(output_size)
    if ph == 0 or pw == 0:
        # torchvision divides the channels by 0 here (the process dies of SIGFPE).
        raise ShapeError(f"output_size must be positive, got {output_size}")
    if input.shape[1] % (ph * pw) != 0:
        raise ShapeError(
            f"input channels ({input.shape[1]}) must be a multiple of output_size[0] * output_size[1] = {ph * pw}"
        )
    scale = float(spatial_scale)
    if not math.isfinite(scale):
        raise ValueError(f"spatial_scale must be a finite number, got {spatial_scale}")
    return ph, pw, scale


# ------------------------------------------------------------------ public API


@torch.fx.wrap
def ps_roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    """Position-sensitive RoI Align (Light-Head R-CNN), as ``torchvision.ops.ps_roi_align``.

    Output channel ``c`` of bin ``(i, j)`` averages bilinear samples of input
    channel ``(c * output_size[0] + i) * output_size[1] + j`` over the bin
    (half-pixel aligned boxes, as ``roi_align(..., aligned=True)``).

    Args:
        input: ``[N, C, H, W]`` feature map (NCHW or channels-last; float16,
            bfloat16, float32 or float64), ``C`` a multiple of
            ``output_size[0] * output_size[1]``.
        boxes: ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, or a list
            of ``N`` tensors ``[L_i, 4]`` of ``(x1, y1, x2, y2)`` boxes, one per image.
            Coordinates are in image pixels; ``spatial_scale`` maps them to the map.
        output_size: ``(pooled_h, pooled_w)`` or one int for both (positive).
        spatial_scale: map size / image size (e.g. 1/16).
        sampling_ratio: samples per bin along each axis; ``<= 0`` adapts it to
            ``ceil(roi_size / output_size)``.

    Returns:
        ``[K, C / (pooled_h * pooled_w), pooled_h, pooled_w]``, contiguous, in
        ``input``'s dtype.

    Examples:
        >>> import torch, detops
        >>> x = torch.randn(1, 2 * 3 * 3, 16, 16)
        >>> boxes = torch.tensor([[0.0, 1.0, 1.0, 9.0, 12.0]])
        >>> detops.ps_roi_align(x, boxes, output_size=3, sampling_ratio=2).shape
        torch.Size([1, 2, 3, 3])
    """
    ph, pw, scale = _ps_args(input, output_size, spatial_scale)
    rois = _to_rois(boxes, input)
    return _ops.ps_roi_align(input, rois, scale, ph, pw, int(sampling_ratio))[0]


class PSRoIAlign(nn.Module):
    """Module form of :func:`ps_roi_align` (same constructor as
    ``torchvision.ops.PSRoIAlign``); ``forward(input, rois)`` takes the
    ``boxes`` of :func:`ps_roi_align`."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float, sampling_ratio: int):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return ps_roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio})"
        )
