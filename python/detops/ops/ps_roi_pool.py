"""Position-sensitive RoI Pool (R-FCN): ``ps_roi_pool`` and the ``PSRoIPool``
module, with torchvision's signatures and results.

Operators (``torch.ops.detops.*``, torchvision's schemas), with autograd (no
gradient for the boxes):

* ``ps_roi_pool(input [N,C,H,W], rois [K,5], spatial_scale, pooled_h, pooled_w)
  -> (output [K,C/(pooled_h*pooled_w),pooled_h,pooled_w], channel_mapping int32)``:
  output channel ``c`` of bin ``(ph, pw)`` is the mean of input channel
  ``(c * pooled_h + ph) * pooled_w + pw`` over the bin's pixels (corners
  rounded to map pixels; 0 for an empty bin).
* ``ps_roi_pool_backward(grad, rois, channel_mapping, ..., N, C, H, W) ->
  grad_input [N,C,H,W]``: deterministic on CPU (no atomics); on CUDA it uses
  atomics unless deterministic algorithms are enabled.

As torchvision's forward, bins never include the map's last row and column.
torchvision's backward does spread gradient there (it is not its forward's
gradient for bins that reach them); detops' backward is the forward's
gradient, and equals torchvision's for every other bin. Channels-last maps
are read in place; outputs and gradients are contiguous (NCHW).
"""


from typing import List, Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from .ps_roi_align import _ps_args, _ps_backward_fake, _ps_fake, _register_autograd
from .roi_align import _to_rois

__all__ = ["ps_roi_pool", "PSRoIPool"]

_ops = torch.ops.detops


@torch.library.register_fake("detops::ps_roi_pool")
def _ps_roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    return _ps_fake(input, rois, pooled_height, pooled_width)


@torch.library.register_fake("detops::ps_roi_pool_backward")
def _ps_roi_pool_backward_fake(grad, rois, channel_mapping, spatial_scale, pooled_height, pooled_width, batch_size,
                               channels, height, width):
    return _ps_backward_fake(grad, batch_size, channels, height, width)


_register_autograd("ps_roi_pool")


@torch.fx.wrap
def ps_roi_pool(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Position-sensitive RoI Pool (R-FCN), as ``torchvision.ops.ps_roi_pool``.

    Output channel ``c`` of bin ``(i, j)`` is the mean of input channel
    ``(c * output_size[0] + i) * output_size[1] + j`` over the bin's pixels.

    Args:
        input: ``[N, C, H, W]`` feature map (NCHW or channels-last; float16,
            bfloat16, float32 or float64), ``C`` a multiple of
            ``output_size[0] * output_size[1]``.
        boxes: ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, or a list
            of ``N`` tensors ``[L_i, 4]`` of ``(x1, y1, x2, y2)`` boxes, one per image.
        output_size: ``(pooled_h, pooled_w)`` or one int for both (positive).
        spatial_scale: map size / image size.

    Returns:
        ``[K, C / (pooled_h * pooled_w), pooled_h, pooled_w]`` (0 for an empty
        bin), contiguous, in ``input``'s dtype.

    Examples:
        >>> import torch, detops
        >>> x = torch.arange(4 * 8 * 8, dtype=torch.float32).reshape(1, 4, 8, 8)
        >>> boxes = [torch.tensor([[0.0, 0.0, 4.0, 4.0]])]
        >>> detops.ps_roi_pool(x, boxes, output_size=2)
        tensor([[[[  4.5000,  70.5000],
                  [148.5000, 214.5000]]]])
    """
    ph, pw, scale = _ps_args(input, output_size, spatial_scale)
    rois = _to_rois(boxes, input)
    return _ops.ps_roi_pool(input, rois, scale, ph, pw)[0]


class PSRoIPool(nn.Module):
    """Module form of :func:`ps_roi_pool` (same constructor as
    ``torchvision.ops.PSRoIPool``); ``forward(input, rois)`` takes the
    ``boxes`` of :func:`ps_roi_pool`."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"
