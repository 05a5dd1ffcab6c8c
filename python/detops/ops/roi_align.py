"""RoI Align: ``roi_align``, the ``RoIAlign`` module and ``MultiScaleRoIAlign``,
with torchvision's signatures and results.

Operators (``torch.ops.detops.*``), with autograd (no gradient for the boxes):

* ``roi_align(input [N,C,H,W], rois [K,5], spatial_scale, pooled_h, pooled_w,
  sampling_ratio, aligned) -> [K,C,pooled_h,pooled_w]``
* ``multi_scale_roi_align(features [L x [N,C,Hl,Wl]], rois [K,5], levels [K],
  scales [L], ...) -> [K,C,pooled_h,pooled_w]``: every FPN level in one kernel.

``rois`` rows are ``(batch_index, x1, y1, x2, y2)`` in image coordinates.
Channels-last feature maps are read in place (no copy of the map) and give a
channels-last output; float16/bfloat16 maps are read natively and accumulated
in float32 (also under autocast: the map is not cast to float32). The CPU
backward never uses atomics and is deterministic; on CUDA a gather-form
backward is used when ``torch.are_deterministic_algorithms_enabled()``.
"""


import math
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2
from torch.nn.modules.utils import _pair

from ._common import (
    DtypeError,
    ShapeError,
    check_same_device,
    check_tensor,
    dequantize_if,
    is_channels_last,
    is_kernel_float,
    memory_format_of,
    requantize_like,
)

__all__ = ["roi_align", "RoIAlign", "MultiScaleRoIAlign"]

_ops = torch.ops.detops


# ------------------------------------------------------------------ registration


@torch.library.register_fake("detops::roi_align")
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "rois must be [K, 5]")
    return torch.empty(
        (rois.shape[0], input.shape[1], pooled_height, pooled_width),
        dtype=input.dtype, device=input.device, memory_format=memory_format_of(is_channels_last(input)),
    )


@torch.library.register_fake("detops::roi_align_backward")
def _roi_align_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width,
    sampling_ratio, aligned, channels_last,
):
    return torch.empty(
        (batch_size, channels, height, width), dtype=grad.dtype, device=grad.device,
        memory_format=memory_format_of(channels_last and channels > 1),
    )


@torch.library.register_fake("detops::multi_scale_roi_align")
def _multi_fake(features, rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned):
    first = features[0]
    return torch.empty(
        (rois.shape[0], first.shape[1], pooled_height, pooled_width),
        dtype=first.dtype, device=first.device, memory_format=memory_format_of(is_channels_last(first)),
    )


@torch.library.register_fake("detops::multi_scale_roi_align_backward")
def _multi_backward_fake(grad, features, rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned):
    return [torch.empty_like(f, memory_format=memory_format_of(is_channels_last(f))) for f in features]


@torch.library.register_fake("detops::_roi_align_backward_gather")
def _gather_fake(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width,
                 sampling_ratio, aligned):
    # CPU reference of the deterministic CUDA backward's arithmetic (tests only).
    return grad.new_empty((batch_size, channels, height, width))


def _roi_align_setup(ctx, inputs, output) -> None:
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, pooled_height, pooled_width)
    ctx.shape = tuple(input.shape)
    ctx.rest = (sampling_ratio, aligned, is_channels_last(input))


def _roi_align_backward(ctx, grad: Tensor):
    (rois,) = ctx.saved_tensors
    sampling_ratio, aligned, channels_last = ctx.rest
    grad_input = _ops.roi_align_backward(
        grad, rois, *ctx.args, *ctx.shape, sampling_ratio, aligned, channels_last
    )
    return grad_input, None, None, None, None, None, None


torch.library.register_autograd("detops::roi_align", _roi_align_backward, setup_context=_roi_align_setup)


def _multi_setup(ctx, inputs, output) -> None:
    features, rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois, levels, *features)
    ctx.rest = (scales, pooled_height, pooled_width, sampling_ratio, aligned)


def _multi_backward(ctx, grad: Tensor):
    rois, levels, *features = ctx.saved_tensors
    grads = _ops.multi_scale_roi_align_backward(grad, features, rois, levels, *ctx.rest)
    return list(grads), None, None, None, None, None, None, None


torch.library.register_autograd("detops::multi_scale_roi_align", _multi_backward, setup_context=_multi_setup)


# ------------------------------------------------------------------ argument handling


def _pooled_size(output_size: BroadcastingList2[int]) -> Tuple[int, int]:
    """``(pooled_h, pooled_w)`` from an int, a pair or a one-element sequence.
    0 is allowed (an empty result, as torchvision gives)."""
    size = _pair(output_size)
    if len(size) == 1:
        size = [size[0], size[0]]
    if len(size) != 2:
        raise ValueError(f"output_size must be an int or a pair of ints, got {output_size}")
    ph, pw = size[0], size[1]
    if not torch.jit.is_scripting():
        if not isinstance(ph, (int, torch.SymInt)) or not isinstance(pw, (int, torch.SymInt)):
            raise DtypeError(f"output_size must be an int or a pair of ints, got {output_size}")
    if ph < 0 or pw < 0:
        raise ShapeError(f"output_size must be >= 0, got {output_size}")
    return ph, pw


def _check_feature(input: Tensor, name: str) -> Tensor:
    check_tensor(input, name)
    if input.dim() != 4:
        raise ShapeError(f"{name} must have shape [N, C, H, W], got {list(input.shape)}")
    if not is_kernel_float(input.dtype) and not input.is_quantized:
        raise DtypeError(f"{name} must be float16, bfloat16, float32 or float64 (or quantized), got {input.dtype}")
    return input


def _list_to_rois(boxes: List[Tensor], input: Tensor) -> Tensor:
    """``[K, 5]`` rois from one ``[L_i, 4]`` tensor of boxes per image."""
    for i in range(len(boxes)):
        b = check_tensor(boxes[i], "boxes[" + str(i) + "]")
        if b.dim() != 2 or b.shape[1] != 4:
            raise ShapeError(f"boxes[{i}] must have shape [L, 4] (x1, y1, x2, y2), got {list(b.shape)}")
    if len(boxes) == 0:
        return torch.zeros((0, 5), dtype=input.dtype if input.is_floating_point() else torch.float32,
                           device=input.device)
    concat = dequantize_if(boxes[0]) if len(boxes) == 1 else torch.cat([dequantize_if(b) for b in boxes], dim=0)
    ids: List[Tensor] = []
    for i in range(len(boxes)):
        ids.append(torch.full((boxes[i].shape[0], 1), i, dtype=concat.dtype, device=concat.device))
    return torch.cat([torch.cat(ids, dim=0), concat], dim=1)


def _to_rois(boxes: Union[Tensor, List[Tensor]], input: Tensor) -> Tensor:
    """``Tensor[K, 5]`` rois ``(batch_index, x1, y1, x2, y2)`` from either box form,
    floating (quantized rois are dequantized, integer ones converted)."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ShapeError(
                f"boxes must be a Tensor[K, 5] (batch_index, x1, y1, x2, y2) or a list of Tensor[L, 4], "
                f"got a tensor of shape {list(boxes.shape)}"
            )
        rois = dequantize_if(boxes)
    else:
        if not torch.jit.is_scripting():
            if not isinstance(boxes, (list, tuple)):
                raise TypeError(
                    f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}"
                )
        rois = _list_to_rois(boxes, input)
    if rois.device != input.device:
        check_same_device([input, rois], ["input", "boxes"])
    if not rois.is_floating_point():
        if rois.is_complex():
            raise DtypeError(f"boxes must be a real tensor, got {rois.dtype}")
        rois = rois.to(torch.float64 if input.dtype == torch.float64 else torch.float32)
    return rois


def _scaled(rois: Tensor, spatial_scale: float) -> Tuple[Tensor, float]:
    """The kernels take a positive ``spatial_scale``; torchvision also runs with 0
    or a negative one. Those scale the coordinates here (``x * s * 1.0`` is
    ``x * s`` exactly), so the kernel sees the same RoIs. NaN and infinite
    scales stay errors (torchvision reads garbage from them)."""
    scale = float(spatial_scale)
    if scale > 0 and scale != math.inf:
        return rois, scale
    if not math.isfinite(scale):
        raise ValueError(f"spatial_scale must be a finite number, got {spatial_scale}")
    return torch.cat([rois[:, :1], rois[:, 1:] * scale], dim=1), 1.0


def _empty_pooled(input: Tensor, rois: Tensor, ph: int, pw: int) -> Tensor:
    # output_size 0: torchvision returns an empty [K, C, ph, pw]; a view of input keeps it in the graph.
    return input.reshape(-1)[:0].reshape([rois.shape[0], input.shape[1], ph, pw])


def _check_scale(spatial_scale: float, name: str = "spatial_scale") -> float:
    scale = float(spatial_scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{name} must be a positive number, got {spatial_scale}")
    return scale


# ------------------------------------------------------------------ public API


@torch.fx.wrap
def roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoI Align (Mask R-CNN), as ``torchvision.ops.roi_align``.

    Args:
        input: ``[N, C, H, W]`` feature map (NCHW or channels-last; float16,
            bfloat16, float32 or float64; quantized maps are computed on their
            float values and requantized with the input's scale, as torchvision).
        boxes: ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, or a list
            of ``N`` tensors ``[L_i, 4]`` of ``(x1, y1, x2, y2)`` boxes, one per image.
            Coordinates are in image pixels; ``spatial_scale`` maps them to the map.
        output_size: ``(pooled_h, pooled_w)`` or one int for both (0 gives an empty result).
        spatial_scale: map size / image size (e.g. 1/16).
        sampling_ratio: samples per bin along each axis; ``<= 0`` adapts it to
            ``ceil(roi_size / output_size)``.
        aligned: shift the box by -0.5 pixel (the half-pixel convention).

    Returns:
        ``[K, C, pooled_h, pooled_w]`` in ``input``'s dtype and memory format.

    Examples:
        >>> features = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> rois = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0]])  # (batch index, x1, y1, x2, y2)
        >>> detops.roi_align(features, rois, output_size=2, spatial_scale=1.0, sampling_ratio=1, aligned=True)
        tensor([[[[0., 1.],
                  [4., 5.]]]])
    """
    _check_feature(input, "input")
    ph, pw = _pooled_size(output_size)
    rois = _to_rois(boxes, input)
    x = dequantize_if(input)
    if ph == 0 or pw == 0:
        out = _empty_pooled(x, rois, ph, pw)
    else:
        rois, scale = _scaled(rois, spatial_scale)
        out = _ops.roi_align(x, rois, scale, ph, pw, int(sampling_ratio), bool(aligned))
    return requantize_like(out, input) if input.is_quantized else out


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (same constructor as torchvision's)."""

    def __init__(
        self,
        output_size: BroadcastingList2[int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
    ):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})"
        )


def _infer_scale(feature: Tensor, original_size: List[int]) -> float:
    # torchvision's rule: the scale is 2 ** round(log2(map size / image size)), from the height.
    approx = float(feature.shape[-2]) / float(original_size[0])
    return 2.0 ** float(torch.tensor(approx).log2().round())


@torch.fx.wrap
def _filter_input(x: Dict[str, Tensor], featmap_names: List[str]) -> List[Tensor]:
    features: List[Tensor] = []
    for k, v in x.items():
        if k in featmap_names:
            features.append(v)
    if len(features) == 0:
        raise ValueError(f"none of featmap_names {featmap_names} is in x (keys {list(x.keys())})")
    for i in range(len(features)):
        _check_feature(features[i], "x[" + str(i) + "]")
    return features


@torch.fx.wrap
def _setup_scales(features: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tuple[List[float], int, int]:
    """Per level, torchvision's inferred scale; and the coarsest and finest FPN levels."""
    if len(image_shapes) == 0:
        raise ValueError("image_shapes must not be empty")
    max_h = 0
    max_w = 0
    for shape in image_shapes:
        max_h = max(int(shape[0]), max_h)
        max_w = max(int(shape[1]), max_w)
    scales = [_infer_scale(f, [max_h, max_w]) for f in features]
    k_min = int(-torch.log2(torch.tensor(scales[0], dtype=torch.float32)).item())
    k_max = int(-torch.log2(torch.tensor(scales[-1], dtype=torch.float32)).item())
    return scales, k_min, k_max


def _fpn_levels(rois: Tensor, k_min: int, k_max: int, canonical_scale: int, canonical_level: int, eps: float) -> Tensor:
    # torchvision's LevelMapper, op for op, so boxes on a level boundary map alike.
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
    s = torch.sqrt(area)
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    lvl = torch.clamp(lvl, min=k_min, max=k_max)
    return lvl.to(torch.int64) - k_min


@torch.fx.wrap
def _multiscale_roi_align(
    features: List[Tensor],
    boxes: Union[Tensor, List[Tensor]],
    output_size: List[int],
    sampling_ratio: int,
    scales: List[float],
    k_min: int,
    k_max: int,
    canonical_scale: int,
    canonical_level: int,
    eps: float,
) -> Tensor:
    rois = _to_rois(boxes, features[0])
    if len(features) == 1:
        return roi_align(features[0], rois, output_size, scales[0], sampling_ratio)
    levels = _fpn_levels(rois, k_min, k_max, canonical_scale, canonical_level, eps)
    return _ops.multi_scale_roi_align(
        features, rois, levels, scales, output_size[0], output_size[1], int(sampling_ratio), False,
    )


class MultiScaleRoIAlign(nn.Module):
    """Drop-in for ``torchvision.ops.MultiScaleRoIAlign``: pools each box from its
    FPN level (level ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)``,
    clamped to the levels present) with one fused kernel over all levels.

    Args:
        featmap_names: names of the feature maps (keys of the dict passed to
            ``forward``) to pool from, finest first.
        output_size: pooled size, int or ``(h, w)``.
        sampling_ratio: as in :func:`roi_align`.
        canonical_scale, canonical_level: the FPN paper's 224 and 4.
    """

    __annotations__ = {"scales": Optional[List[float]], "k_min": Optional[int], "k_max": Optional[int]}

    def __init__(
        self,
        featmap_names: List[str],
        output_size: Union[int, Tuple[int], List[int]],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = featmap_names
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.scales = None
        self.k_min = None
        self.k_max = None
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.eps = 1e-6

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        """
        Args:
            x: feature maps by name, each ``[N, C, H_l, W_l]`` (same N and C).
            boxes: ``N`` tensors ``[L_i, 4]`` of ``(x1, y1, x2, y2)`` boxes in image pixels.
            image_shapes: ``(height, width)`` of each image before the backbone.

        Returns:
            ``[sum L_i, C, h, w]``, boxes in the order given.
        """
        return self._pool(x, boxes, image_shapes)

    def forward_rois(self, x: Dict[str, Tensor], rois: Tensor, image_shapes: List[Tuple[int, int]]) -> Tensor:
        """:meth:`forward` for boxes already in one tensor, as batched detectors
        and export mode hold them.

        Args:
            x: feature maps by name, each ``[N, C, H_l, W_l]``.
            rois: ``[K, 5]`` ``(image index, x1, y1, x2, y2)`` in image pixels.
            image_shapes: ``(height, width)`` of each image before the backbone.

        Returns:
            ``[K, C, h, w]``, rois in the order given.
        """
        return self._pool(x, rois, image_shapes)

    def _pool(self, x: Dict[str, Tensor], boxes: Union[Tensor, List[Tensor]],
              image_shapes: List[Tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        scales, k_min, k_max = self.scales, self.k_min, self.k_max
        if scales is None or k_min is None or k_max is None:
            scales, k_min, k_max = _setup_scales(features, image_shapes)
            if torch.jit.is_scripting():
                self.scales, self.k_min, self.k_max = scales, k_min, k_max
            elif not isinstance(scales, torch.fx.Proxy):  # FX tracing must not store its proxies
                self.scales, self.k_min, self.k_max = scales, k_min, k_max
        return _multiscale_roi_align(
            features, boxes, [self.output_size[0], self.output_size[1]], self.sampling_ratio, scales,
            k_min, k_max, self.canonical_scale, self.canonical_level, self.eps,
        )

    @torch.jit.unused
    def _levels(self, rois: Tensor) -> Tensor:
        """The level index of each ``[K, 5]`` roi (after a forward has set the scales)."""
        assert self.k_min is not None and self.k_max is not None
        return _fpn_levels(rois, self.k_min, self.k_max, self.canonical_scale, self.canonical_level, self.eps)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(featmap_names={self.featmap_names}, "
            f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio})"
        )
