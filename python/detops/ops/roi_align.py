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

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor, nn

from ._common import KERNEL_FLOAT_DTYPES, check_same_device, check_tensor, is_channels_last, memory_format_of

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


def _pair(output_size: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(output_size, int):
        size = (output_size, output_size)
    else:
        size = tuple(output_size)
        if len(size) == 1:
            size = (size[0], size[0])
    if len(size) != 2 or not all(isinstance(s, int) for s in size):
        raise ValueError(f"output_size must be an int or a pair of ints, got {output_size!r}")
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return size  # type: ignore[return-value]


def _check_feature(input: object, name: str) -> Tensor:
    input = check_tensor(input, name)
    if input.dim() != 4:
        raise ValueError(f"{name} must have shape [N, C, H, W], got {list(input.shape)}")
    if input.dtype not in KERNEL_FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {input.dtype}")
    return input


def _to_rois(boxes: Union[Tensor, Sequence[Tensor]], input: Tensor) -> Tensor:
    """``Tensor[K, 5]`` rois ``(batch_index, x1, y1, x2, y2)`` from either box form."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                f"boxes must be a Tensor[K, 5] (batch_index, x1, y1, x2, y2) or a list of Tensor[L, 4], "
                f"got a tensor of shape {list(boxes.shape)}"
            )
        rois = boxes
    elif isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            check_tensor(b, f"boxes[{i}]")
            if b.dim() != 2 or b.shape[1] != 4:
                raise ValueError(f"boxes[{i}] must have shape [L, 4], got {list(b.shape)}")
        if len(boxes) == 0:
            rois = input.new_zeros((0, 5))
        else:
            concat = torch.cat(list(boxes), dim=0)
            ids = torch.cat([torch.full_like(b[:, :1], i, dtype=concat.dtype) for i, b in enumerate(boxes)], dim=0)
            rois = torch.cat([ids, concat], dim=1)
    else:
        raise TypeError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    check_same_device((input, rois), ("input", "boxes"))
    if rois.dtype == torch.bool or rois.is_complex():
        raise TypeError(f"boxes must be a real tensor, got {rois.dtype}")
    if not rois.is_floating_point():
        rois = rois.to(torch.float64 if input.dtype == torch.float64 else torch.float32)
    return rois


def _check_scale(spatial_scale: float, name: str = "spatial_scale") -> float:
    scale = float(spatial_scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{name} must be a positive number, got {spatial_scale!r}")
    return scale


# ------------------------------------------------------------------ public API


def roi_align(
    input: Tensor,
    boxes: Union[Tensor, list[Tensor]],
    output_size: Union[int, tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoI Align (Mask R-CNN), as ``torchvision.ops.roi_align``.

    Args:
        input: ``[N, C, H, W]`` feature map (NCHW or channels-last; float16,
            bfloat16, float32 or float64).
        boxes: ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, or a list
            of ``N`` tensors ``[L_i, 4]`` of ``(x1, y1, x2, y2)`` boxes, one per image.
            Coordinates are in image pixels; ``spatial_scale`` maps them to the map.
        output_size: ``(pooled_h, pooled_w)`` or one int for both.
        spatial_scale: map size / image size (e.g. 1/16).
        sampling_ratio: samples per bin along each axis; ``<= 0`` adapts it to
            ``ceil(roi_size / output_size)``.
        aligned: shift the box by -0.5 pixel (the half-pixel convention).

    Returns:
        ``[K, C, pooled_h, pooled_w]`` in ``input``'s dtype and memory format.
    """
    input = _check_feature(input, "input")
    ph, pw = _pair(output_size)
    rois = _to_rois(boxes, input)
    scale = _check_scale(spatial_scale)
    return _ops.roi_align(input, rois, scale, ph, pw, int(sampling_ratio), bool(aligned))


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (same constructor as torchvision's)."""

    def __init__(
        self,
        output_size: Union[int, tuple[int, int]],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
    ):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Union[Tensor, list[Tensor]]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})"
        )


def _infer_scale(feature: Tensor, original_size: Sequence[int]) -> float:
    # torchvision's rule: the scale is 2 ** round(log2(map size / image size)), from the height.
    approx = float(feature.shape[-2]) / float(original_size[0])
    return 2.0 ** float(torch.tensor(approx).log2().round())


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

    def __init__(
        self,
        featmap_names: list[str],
        output_size: Union[int, tuple[int], list[int]],
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
        self.scales: list[float] | None = None
        self.k_min: int | None = None
        self.k_max: int | None = None
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.eps = 1e-6

    def _setup_scales(self, features: list[Tensor], image_shapes: list[tuple[int, int]]) -> None:
        if not image_shapes:
            raise ValueError("image_shapes must not be empty")
        max_h = max(int(s[0]) for s in image_shapes)
        max_w = max(int(s[1]) for s in image_shapes)
        self.scales = [_infer_scale(f, (max_h, max_w)) for f in features]
        self.k_min = int(-torch.log2(torch.tensor(self.scales[0], dtype=torch.float32)).item())
        self.k_max = int(-torch.log2(torch.tensor(self.scales[-1], dtype=torch.float32)).item())

    def _levels(self, rois: Tensor) -> Tensor:
        # torchvision's LevelMapper, op for op, so boxes on a level boundary map alike.
        area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
        s = torch.sqrt(area)
        lvl = torch.floor(self.canonical_level + torch.log2(s / self.canonical_scale) + torch.tensor(self.eps, dtype=s.dtype))
        lvl = torch.clamp(lvl, min=self.k_min, max=self.k_max)
        return lvl.to(torch.int64) - self.k_min

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """
        Args:
            x: feature maps by name, each ``[N, C, H_l, W_l]`` (same N and C).
            boxes: ``N`` tensors ``[L_i, 4]`` of ``(x1, y1, x2, y2)`` boxes in image pixels.
            image_shapes: ``(height, width)`` of each image before the backbone.

        Returns:
            ``[sum L_i, C, h, w]``, boxes in the order given.
        """
        features = [v for k, v in x.items() if k in self.featmap_names]
        if not features:
            raise ValueError(f"none of featmap_names {self.featmap_names} is in x (keys {list(x.keys())})")
        for i, f in enumerate(features):
            _check_feature(f, f"x[{i}]")
        if self.scales is None:
            self._setup_scales(features, image_shapes)
        assert self.scales is not None
        rois = _to_rois(list(boxes), features[0])
        if len(features) == 1:
            return roi_align(features[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self._levels(rois)
        return _ops.multi_scale_roi_align(
            features, rois, levels, self.scales, self.output_size[0], self.output_size[1],
            int(self.sampling_ratio), False,
        )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(featmap_names={self.featmap_names}, "
            f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio})"
        )
