"""Box encoding and decoding for detection heads, with the arithmetic of
torchvision's ``BoxCoder`` (``torchvision.models.detection._utils``). Boxes are
``(x1, y1, x2, y2)``; codes are ``(dx, dy, dw, dh)``.

Operators (``torch.ops.detops.*``), each one fused kernel, with autograd:

* ``box_decode(rel_codes [N, 4K], boxes [N, 4], weights, bbox_xform_clip) -> [N, 4K]``
* ``box_encode(reference_boxes [N, 4], proposals [N, 4], weights) -> [N, 4]``

Outputs have the inputs' dtype; float16/bfloat16 are computed in float32 and
rounded once. CPU: C++; GPU: CUDA C++ (``csrc/box_coder``).
"""

from __future__ import annotations

import math
from typing import Any, List, Tuple, Union

import torch
from torch import Tensor

from ._common import DtypeError, ShapeError, check_boxes, check_same_device, check_tensor, is_kernel_float

__all__ = ["BoxCoder", "decode_boxes", "encode_boxes"]

_ops = torch.ops.detops

DEFAULT_BBOX_XFORM_CLIP = math.log(1000.0 / 16)

# Eager calls also take any sequence of 4 numbers.
Weights = Union[Tensor, List[float], Tuple[float, float, float, float]]


# ------------------------------------------------------------------ registration


@torch.library.register_fake("detops::box_decode")
def _decode_fake(rel_codes: Tensor, boxes: Tensor, weights: list[float], bbox_xform_clip: float) -> Tensor:
    torch._check(rel_codes.dim() == 2 and boxes.dim() == 2, lambda: "rel_codes must be [N, 4K] and boxes [N, 4]")
    torch._check(rel_codes.shape[0] == boxes.shape[0], lambda: "rel_codes and boxes must have the same rows")
    return torch.empty_like(rel_codes, memory_format=torch.contiguous_format)


@torch.library.register_fake("detops::box_decode_backward")
def _decode_backward_fake(grad, rel_codes, boxes, weights, bbox_xform_clip):
    return (
        torch.empty_like(rel_codes, memory_format=torch.contiguous_format),
        torch.empty_like(boxes, memory_format=torch.contiguous_format),
    )


@torch.library.register_fake("detops::box_encode")
def _encode_fake(reference_boxes: Tensor, proposals: Tensor, weights: list[float]) -> Tensor:
    torch._check(reference_boxes.shape == proposals.shape, lambda: "reference_boxes and proposals must be [N, 4]")
    return torch.empty_like(reference_boxes, memory_format=torch.contiguous_format)


@torch.library.register_fake("detops::box_encode_backward")
def _encode_backward_fake(grad, reference_boxes, proposals, weights):
    return (
        torch.empty_like(reference_boxes, memory_format=torch.contiguous_format),
        torch.empty_like(proposals, memory_format=torch.contiguous_format),
    )


def _decode_setup(ctx, inputs, output) -> None:
    rel_codes, boxes, weights, clip = inputs
    ctx.save_for_backward(rel_codes, boxes)
    ctx.weights, ctx.clip = weights, clip


def _decode_backward(ctx, grad: Tensor):
    rel_codes, boxes = ctx.saved_tensors
    grad_rel, grad_boxes = _ops.box_decode_backward(grad, rel_codes, boxes, ctx.weights, ctx.clip)
    return grad_rel, grad_boxes, None, None


def _encode_setup(ctx, inputs, output) -> None:
    reference_boxes, proposals, weights = inputs
    ctx.save_for_backward(reference_boxes, proposals)
    ctx.weights = weights


def _encode_backward(ctx, grad: Tensor):
    reference_boxes, proposals = ctx.saved_tensors
    grad_ref, grad_prop = _ops.box_encode_backward(grad, reference_boxes, proposals, ctx.weights)
    return grad_ref, grad_prop, None


torch.library.register_autograd("detops::box_decode", _decode_backward, setup_context=_decode_setup)
torch.library.register_autograd("detops::box_encode", _encode_backward, setup_context=_encode_setup)


# ------------------------------------------------------------------ checks


@torch.jit.ignore
def _weights_from_sequence(weights: Any, name: str) -> List[float]:
    try:
        return [float(w) for w in weights]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be 4 numbers (wx, wy, ww, wh), got {weights!r}") from None


def _weights_list(weights: Weights, name: str = "weights") -> List[float]:
    """(wx, wy, ww, wh) as Python floats. A tensor is read once (a host sync on GPU)."""
    if isinstance(weights, Tensor):
        if weights.numel() != 4:
            raise ShapeError(f"{name} must have 4 values (wx, wy, ww, wh), got shape {list(weights.shape)}")
        values: List[float] = weights.detach().reshape(-1).to(torch.float64).tolist()
    elif torch.jit.is_scripting():
        if isinstance(weights, list):
            values = weights
        else:
            values = [weights[0], weights[1], weights[2], weights[3]]
    else:
        values = _weights_from_sequence(weights, name)
    if len(values) != 4:
        raise ShapeError(f"{name} must have 4 values (wx, wy, ww, wh), got {len(values)}")
    for w in values:
        if not math.isfinite(w) or w == 0.0:
            raise ValueError(f"{name} must be finite and non-zero, got {values}")
    return values


def _float_dtype(a: Tensor, b: Tensor) -> torch.dtype:
    """torchvision's result dtype: the promoted dtype, float32 for integer boxes."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    return dtype if is_kernel_float(dtype) else torch.float32


# ------------------------------------------------------------------ public functions


@torch.fx.wrap
def decode_boxes(
    rel_codes: Tensor,
    boxes: Tensor,
    weights: Weights = (1.0, 1.0, 1.0, 1.0),
    bbox_xform_clip: float = DEFAULT_BBOX_XFORM_CLIP,
) -> Tensor:
    """Apply codes to reference boxes (torchvision's ``BoxCoder.decode_single``).

    Args:
        rel_codes: ``[N, 4 * K]`` codes ``(dx, dy, dw, dh)``, K per box (e.g. one per class).
        boxes: ``[N, 4]`` reference boxes ``(x1, y1, x2, y2)``, converted to ``rel_codes``' dtype.
        weights: ``(wx, wy, ww, wh)``; codes are divided by them.
        bbox_xform_clip: ``dw`` and ``dh`` are clamped to at most this before ``exp``.

    Returns:
        ``[N, 4 * K]`` boxes ``(x1, y1, x2, y2)`` in ``rel_codes``' dtype. Differentiable
        with respect to ``rel_codes`` and ``boxes``.
    """
    check_tensor(rel_codes, "rel_codes")
    if not is_kernel_float(rel_codes.dtype):
        raise DtypeError(f"rel_codes must be a float16, bfloat16, float32 or float64 tensor, got {rel_codes.dtype}")
    if rel_codes.dim() != 2 or rel_codes.shape[1] % 4 != 0:
        raise ShapeError(f"rel_codes must have shape [N, 4 * K], got {list(rel_codes.shape)}")
    check_boxes(boxes, "boxes", 2, 2)
    if rel_codes.device != boxes.device:
        check_same_device([rel_codes, boxes], ["rel_codes", "boxes"])
    if rel_codes.shape[0] != boxes.shape[0]:
        raise ShapeError(
            f"rel_codes and boxes must have the same number of rows, got {rel_codes.shape[0]} and {boxes.shape[0]}"
        )
    clip = float(bbox_xform_clip)
    if math.isnan(clip):
        raise ValueError("bbox_xform_clip must not be NaN")
    return _ops.box_decode(rel_codes, boxes.to(rel_codes.dtype), _weights_list(weights), clip)


@torch.fx.wrap
def encode_boxes(reference_boxes: Tensor, proposals: Tensor, weights: Weights = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Codes of ``reference_boxes`` relative to ``proposals`` (torchvision's ``encode_boxes``).

    Args:
        reference_boxes: ``[N, 4]`` target boxes ``(x1, y1, x2, y2)``.
        proposals: ``[N, 4]`` boxes to encode against (anchors or proposals).
        weights: ``(wx, wy, ww, wh)`` as a tensor (as torchvision takes it; read on
            the host, and not differentiated) or a sequence of numbers.

    Returns:
        ``[N, 4]`` codes ``(dx, dy, dw, dh)`` in the promoted dtype of the boxes
        (float32 for integer boxes). Differentiable with respect to both box sets.
    """
    check_boxes(reference_boxes, "reference_boxes", 2, 2)
    check_boxes(proposals, "proposals", 2, 2)
    if reference_boxes.device != proposals.device:
        check_same_device([reference_boxes, proposals], ["reference_boxes", "proposals"])
    if reference_boxes.shape[0] != proposals.shape[0]:
        raise ShapeError(
            f"reference_boxes and proposals must have the same number of boxes, got "
            f"{reference_boxes.shape[0]} and {proposals.shape[0]}"
        )
    dtype = _float_dtype(reference_boxes, proposals)
    return _ops.box_encode(reference_boxes.to(dtype), proposals.to(dtype), _weights_list(weights))


class BoxCoder:
    """Drop-in for ``torchvision.models.detection._utils.BoxCoder``: the same
    methods and results, each call one fused kernel (TorchScript compiles it,
    as part of a scripted model or on its own).

    Args:
        weights: ``(wx, wy, ww, wh)``.
        bbox_xform_clip: the cap of ``dw`` and ``dh`` before ``exp`` when decoding.
    """

    def __init__(
        self, weights: Tuple[float, float, float, float], bbox_xform_clip: float = DEFAULT_BBOX_XFORM_CLIP
    ) -> None:
        self.weights = weights
        self.bbox_xform_clip = bbox_xform_clip
        if not torch.jit.is_scripting():
            _weights_list(weights)  # fail early on bad weights

    def encode(self, reference_boxes: List[Tensor], proposals: List[Tensor]) -> List[Tensor]:
        """Per-image ``[N_i, 4]`` reference boxes and proposals -> per-image ``[N_i, 4]`` codes."""
        boxes_per_image = [b.shape[0] for b in reference_boxes]
        targets = self.encode_single(_cat(reference_boxes, "reference_boxes"), _cat(proposals, "proposals"))
        return targets.split(boxes_per_image, 0)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """``[N, 4]`` reference boxes and proposals -> ``[N, 4]`` codes."""
        return encode_boxes(reference_boxes, proposals, self.weights)

    def decode(self, rel_codes: Tensor, boxes: List[Tensor]) -> Tensor:
        """Codes for the boxes of several images at once.

        Args:
            rel_codes: codes, reshaped to ``[sum N_i, 4 * K]``.
            boxes: per-image ``[N_i, 4]`` reference boxes.

        Returns:
            ``[sum N_i, K, 4]`` boxes (``decode_single``'s result as is when there are no boxes).
        """
        if not torch.jit.is_scripting():
            if not isinstance(boxes, (list, tuple)):
                raise TypeError(f"boxes must be a list or tuple of [N_i, 4] tensors, got {type(boxes).__name__}")
            check_tensor(rel_codes, "rel_codes")
        concat_boxes = _cat(boxes, "boxes")
        box_sum = concat_boxes.shape[0]
        if box_sum > 0:
            rel_codes = rel_codes.reshape(box_sum, -1)
        pred_boxes = self.decode_single(rel_codes, concat_boxes)
        if box_sum > 0:
            pred_boxes = pred_boxes.reshape(box_sum, -1, 4)
        return pred_boxes

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """``[N, 4K]`` codes and ``[N, 4]`` reference boxes -> ``[N, 4K]`` boxes."""
        return decode_boxes(rel_codes, boxes, self.weights, self.bbox_xform_clip)


def _cat(tensors: List[Tensor], name: str) -> Tensor:
    if len(tensors) == 0:
        raise ValueError(f"{name} must hold at least one tensor")
    for i in range(len(tensors)):
        check_boxes(tensors[i], name + "[" + str(i) + "]", 2, 2)
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
