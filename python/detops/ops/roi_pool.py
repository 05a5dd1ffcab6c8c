"""RoI Pool (Fast R-CNN max pooling over quantised bins): ``roi_pool`` and the
``RoIPool`` module, with torchvision's signatures and results.

Operators (``torch.ops.detops.*``):

* ``roi_pool(input [N,C,H,W], rois [K,5], spatial_scale, pooled_h, pooled_w)
  -> (output [K,C,pooled_h,pooled_w], argmax [K,C,pooled_h,pooled_w] int64)``
* ``roi_pool_backward(grad, rois, argmax, ...) -> grad_input [N,C,H,W]``: the
  gradient goes to the argmax pixel of each bin (deterministic on CPU; on CUDA
  it uses atomics unless deterministic algorithms are enabled).

``rois`` rows are ``(batch_index, x1, y1, x2, y2)``. Channels-last maps are read
in place and give channels-last results; float16/bfloat16 are read natively.
"""


from typing import List, Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from ._common import dequantize_if, is_channels_last, memory_format_of, requantize_like
from .roi_align import _check_feature, _empty_pooled, _pooled_size, _scaled, _to_rois

__all__ = ["roi_pool", "RoIPool"]

_ops = torch.ops.detops


@torch.library.register_fake("detops::roi_pool")
def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "rois must be [K, 5]")
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    fmt = memory_format_of(is_channels_last(input))
    out = torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=fmt)
    argmax = torch.empty(shape, dtype=torch.int64, device=input.device, memory_format=fmt)
    return out, argmax


@torch.library.register_fake("detops::roi_pool_backward")
def _roi_pool_backward_fake(
    grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, channels_last
):
    return torch.empty(
        (batch_size, channels, height, width), dtype=grad.dtype, device=grad.device,
        memory_format=memory_format_of(channels_last and channels > 1),
    )


def _setup(ctx, inputs, output) -> None:
    input, rois, spatial_scale, pooled_height, pooled_width = inputs
    _, argmax = output
    ctx.save_for_backward(rois, argmax)
    ctx.args = (spatial_scale, pooled_height, pooled_width, *input.shape, is_channels_last(input))
    ctx.mark_non_differentiable(argmax)


def _backward(ctx, grad: Tensor, grad_argmax):
    rois, argmax = ctx.saved_tensors
    return _ops.roi_pool_backward(grad, rois, argmax, *ctx.args), None, None, None, None


torch.library.register_autograd("detops::roi_pool", _backward, setup_context=_setup)


@torch.fx.wrap
def roi_pool(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoI max pooling (Fast R-CNN), as ``torchvision.ops.roi_pool``.

    Args:
        input: ``[N, C, H, W]`` feature map (NCHW or channels-last; quantized
            maps are pooled on their float values and requantized with the
            input's scale).
        boxes: ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, or a list
            of ``N`` tensors ``[L_i, 4]`` of ``(x1, y1, x2, y2)`` boxes.
        output_size: ``(pooled_h, pooled_w)`` or one int for both (0 gives an empty result).
        spatial_scale: map size / image size.

    Returns:
        ``[K, C, pooled_h, pooled_w]``: the maximum of each bin (0 for an empty
        bin), in ``input``'s dtype and memory format.

    Examples:
        >>> features = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> detops.roi_pool(features, [torch.tensor([[0.0, 0.0, 3.0, 3.0]])], output_size=2)
        tensor([[[[ 5.,  7.],
                  [13., 15.]]]])
    """
    _check_feature(input, "input")
    ph, pw = _pooled_size(output_size)
    rois = _to_rois(boxes, input)
    x = dequantize_if(input)
    if ph == 0 or pw == 0:
        out = _empty_pooled(x, rois, ph, pw)
    else:
        rois, scale = _scaled(rois, spatial_scale)
        out = _ops.roi_pool(x, rois, scale, ph, pw)[0]
    return requantize_like(out, input) if input.is_quantized else out


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool` (same constructor as torchvision's)."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"
