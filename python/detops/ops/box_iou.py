"""The IoU family: IoU / GIoU / DIoU / CIoU matrices, their aligned (pairwise)
forms, and the GIoU / DIoU / CIoU losses, with torchvision's signatures and
results. Boxes are ``(x1, y1, x2, y2)``.

Operators (``torch.ops.detops.*``), all with autograd:

* ``box_iou_matrix(boxes1 [B,N,4], boxes2 [B,M,4], variant, eps, fmt) -> [B,N,M]``
* ``box_iou_aligned(boxes1 [K,4], boxes2 [K,4], variant, eps, fmt) -> [K]``
* ``box_iou_loss(boxes1 [K,4], boxes2 [K,4], variant, eps) -> [K]`` (no reduction)

``variant`` is ``"iou"``, ``"giou"``, ``"diou"``, ``"ciou"`` or ``"iof"``
(intersection over the first box's area); ``fmt`` (``"xyxy"``, ``"xywh"``,
``"cxcywh"``) applies to ``"iou"`` and ``"iof"``. CPU: C++; GPU:
CUDA C++ for the matrices, Triton (``detops.kernels.box_iou``) for the losses.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .._build import triton_available
from ._common import (
    ShapeError,
    broadcast_shape,
    check_boxes,
    check_reduction,
    check_same_device,
    compute_dtype,
    is_kernel_float,
    reduce_loss,
)

__all__ = [
    "box_iou",
    "box_iof",
    "generalized_box_iou",
    "distance_box_iou",
    "complete_box_iou",
    "generalized_box_iou_loss",
    "distance_box_iou_loss",
    "complete_box_iou_loss",
]

_ops = torch.ops.detops


# ------------------------------------------------------------------ registration


@torch.library.register_fake("detops::box_iou_matrix")
def _matrix_fake(boxes1: Tensor, boxes2: Tensor, variant: str, eps: float, fmt: str = "xyxy") -> Tensor:
    torch._check(boxes1.dim() == 3 and boxes2.dim() == 3, lambda: "boxes must be [B, N, 4]")
    return boxes1.new_empty(
        (boxes1.shape[0], boxes1.shape[1], boxes2.shape[1]), dtype=compute_dtype(boxes1.dtype)
    )


def _paired_fake(boxes1: Tensor, boxes2: Tensor, variant: str, eps: float, fmt: str = "xyxy") -> Tensor:
    torch._check(boxes1.dim() == 2 and boxes1.shape == boxes2.shape, lambda: "boxes must be [K, 4] pairs")
    return boxes1.new_empty((boxes1.shape[0],), dtype=compute_dtype(boxes1.dtype))


def _backward_fake(grad: Tensor, boxes1: Tensor, boxes2: Tensor, variant: str, eps: float):
    return torch.empty_like(boxes1), torch.empty_like(boxes2)


torch.library.register_fake("detops::box_iou_aligned")(_paired_fake)
torch.library.register_fake("detops::box_iou_loss")(_paired_fake)
for _name in ("box_iou_matrix_backward", "box_iou_aligned_backward", "box_iou_loss_backward"):
    torch.library.register_fake(f"detops::{_name}")(_backward_fake)


def _setup_context(ctx, inputs, output) -> None:
    boxes1, boxes2, variant, eps = inputs[:4]
    ctx.save_for_backward(boxes1, boxes2)
    ctx.variant = variant
    ctx.eps = eps
    ctx.fmt = inputs[4] if len(inputs) > 4 else None


def _make_backward(backward_op):
    def backward(ctx, grad: Tensor):
        boxes1, boxes2 = ctx.saved_tensors
        if ctx.fmt in (None, "xyxy"):
            grad1, grad2 = backward_op(grad, boxes1, boxes2, ctx.variant, ctx.eps)
        else:
            # The backward kernels take (x1, y1, x2, y2): convert, then chain.
            grad1, grad2 = backward_op(grad, _to_xyxy(boxes1, ctx.fmt), _to_xyxy(boxes2, ctx.fmt), ctx.variant, ctx.eps)
            grad1, grad2 = _grad_from_xyxy(grad1, ctx.fmt), _grad_from_xyxy(grad2, ctx.fmt)
        return (grad1, grad2, None, None) + ((None,) if ctx.fmt is not None else ())

    return backward


for _name in ("box_iou_matrix", "box_iou_aligned", "box_iou_loss"):
    torch.library.register_autograd(
        f"detops::{_name}",
        _make_backward(getattr(_ops, f"{_name}_backward")),
        setup_context=_setup_context,
    )

# The losses are elementwise: on GPU a Triton kernel reads each pair once and
# writes the loss (or both gradients) in one pass.
_triton_lib = torch.library.Library("detops", "IMPL")  # noqa: TOR901 (kept alive by the module)
if triton_available():
    from ..kernels import box_iou as _triton_box_iou

    _triton_lib.impl("box_iou_loss", _triton_box_iou.box_iou_loss_forward, "CUDA")
    _triton_lib.impl("box_iou_loss_backward", _triton_box_iou.box_iou_loss_backward, "CUDA")


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    # Same arithmetic as torchvision's _box_inter_union for these formats.
    if fmt == "xyxy":
        return boxes
    if fmt == "xywh":
        return torch.cat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], dim=-1)
    return torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], dim=-1)


def _grad_from_xyxy(grad: Tensor, fmt: str) -> Tensor:
    """Chain rule through _to_xyxy: d/d(x, y, w, h) or d/d(cx, cy, w, h)."""
    lo, hi = grad[..., :2], grad[..., 2:]
    if fmt == "xywh":
        return torch.cat([lo + hi, hi], dim=-1)
    return torch.cat([lo + hi, (hi - lo) / 2], dim=-1)


# ------------------------------------------------------------------ dtype rules


def _float_or_f32(t: Tensor) -> torch.dtype:
    return t.dtype if t.dtype == torch.float32 or t.dtype == torch.float64 else torch.float32


def _matrix_inputs(boxes1: Tensor, boxes2: Tensor) -> Tuple[Tensor, Tensor, torch.dtype]:
    """Boxes in the dtype the kernel runs in, and the dtype torchvision returns.

    float16/bfloat16 are read natively and computed in float32; integer (and
    bool) boxes become float (float64 when both are, so that coordinates up to
    2**53 stay exact, as torchvision's integer arithmetic is); mixed dtypes
    promote as in torchvision.
    """
    if boxes1.dtype == boxes2.dtype and is_kernel_float(boxes1.dtype):
        return boxes1, boxes2, compute_dtype(boxes1.dtype)
    if not boxes1.is_floating_point() and not boxes2.is_floating_point():
        return boxes1.double(), boxes2.double(), torch.float32
    out = torch.promote_types(_float_or_f32(boxes1), _float_or_f32(boxes2))
    return boxes1.to(out), boxes2.to(out), out


def _loss_inputs(boxes1: Tensor, boxes2: Tensor) -> Tuple[Tensor, Tensor]:
    """torchvision's losses compute in float32 unless a box tensor is float64."""
    if boxes1.dtype == boxes2.dtype and is_kernel_float(boxes1.dtype):
        return boxes1, boxes2
    out = torch.promote_types(_float_or_f32(boxes1), _float_or_f32(boxes2))
    return boxes1.to(out), boxes2.to(out)


# ------------------------------------------------------------------ public functions


def _pairwise(boxes1: Tensor, boxes2: Tensor, variant: str, eps: float, aligned: bool, fmt: str = "xyxy") -> Tensor:
    if aligned:
        check_boxes(boxes1, "boxes1")
        check_boxes(boxes2, "boxes2")
    else:
        check_boxes(boxes1, "boxes1")
        check_boxes(boxes2, "boxes2", 2)
        if boxes1.dim() == 1:  # torchvision reads one [4] box as [1, 4]
            boxes1 = boxes1.unsqueeze(0)
    if boxes1.device != boxes2.device:
        check_same_device([boxes1, boxes2], ["boxes1", "boxes2"])
    b1, b2, out_dtype = _matrix_inputs(boxes1, boxes2)
    if aligned:
        if b1.shape != b2.shape:
            shape = broadcast_shape(b1.shape, b2.shape)
            if shape is None:
                raise ShapeError(
                    f"aligned=True needs boxes1 and boxes2 of the same shape, got "
                    f"{list(boxes1.shape)} and {list(boxes2.shape)}"
                )
            b1, b2 = b1.expand(shape), b2.expand(shape)
        lead = b1.shape[:-1]
        out = _ops.box_iou_aligned(b1.reshape(-1, 4), b2.reshape(-1, 4), variant, eps, fmt)
        return out.reshape(lead).to(out_dtype)
    n, m = b1.shape[-2], b2.shape[-2]
    if b1.dim() == 2 and b2.dim() == 2:  # the common case: no batch dimensions
        return _ops.box_iou_matrix(b1.unsqueeze(0), b2.unsqueeze(0), variant, eps, fmt)[0].to(out_dtype)
    batch = broadcast_shape(b1.shape[:-2], b2.shape[:-2])
    if batch is None:
        raise ShapeError(
            f"the batch dimensions of boxes1 {list(boxes1.shape[:-2])} and boxes2 "
            f"{list(boxes2.shape[:-2])} do not broadcast"
        )
    flat = 1
    for size in batch:
        flat *= size
    b1 = b1.expand(batch + [n, 4]).reshape(flat, n, 4)
    b2 = b2.expand(batch + [m, 4]).reshape(flat, m, 4)
    out = _ops.box_iou_matrix(b1, b2, variant, eps, fmt)
    return out.reshape(batch + [n, m]).to(out_dtype)


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy", aligned: bool = False) -> Tensor:
    """Intersection over union of every box in ``boxes1`` with every box in ``boxes2``.

    Args:
        boxes1: ``[..., N, 4]`` boxes (one ``[4]`` box reads as ``[1, 4]``, as in torchvision).
        boxes2: ``[..., M, 4]`` boxes; leading dimensions broadcast with ``boxes1``'s.
        fmt: ``"xyxy"`` (``(x1, y1, x2, y2)``), ``"xywh"`` or ``"cxcywh"``, read
            natively with torchvision's arithmetic (areas ``w * h``).
        aligned: if True, ``boxes1`` and ``boxes2`` are pairs of the same shape
            ``[..., 4]`` and the result is ``[...]``, the IoU of each pair.

    Returns:
        ``[..., N, M]`` (or ``[...]`` when aligned); float32 for integer,
        float16 and bfloat16 boxes, as torchvision returns.

    Examples:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
        >>> detops.box_iou(a, b)
        tensor([[0.1429, 1.0000]])
        >>> detops.box_iou(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 2.0, 2.0]]), fmt="xywh")
        tensor([[0.1429]])
    """
    _check_fmt(fmt)
    return _pairwise(boxes1, boxes2, "iou", 0.0, aligned, fmt)


def box_iof(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy", aligned: bool = False) -> Tensor:
    """Intersection over the area of the box from ``boxes1`` (mmdetection's
    ``mode="iof"``; COCO's overlap with crowd regions, where ``boxes1`` are
    the detections).

    Args:
        boxes1: ``[..., N, 4]`` boxes whose areas divide the intersection.
        boxes2: ``[..., M, 4]`` boxes; leading dimensions broadcast with ``boxes1``'s.
        fmt: ``"xyxy"`` (``(x1, y1, x2, y2)``), ``"xywh"`` or ``"cxcywh"``; the
            area of the last two is ``w * h``.
        aligned: if True, pairs of the same shape ``[..., 4]`` give ``[...]``.

    Returns:
        ``[..., N, M]`` (or ``[...]`` when aligned), dtypes as :func:`box_iou`.
    """
    _check_fmt(fmt)
    return _pairwise(boxes1, boxes2, "iof", 0.0, aligned, fmt)


def _check_fmt(fmt: str) -> None:
    if fmt != "xyxy" and fmt != "xywh" and fmt != "cxcywh":
        raise ValueError(f"fmt must be 'xyxy', 'xywh' or 'cxcywh' (rotated formats are not supported), got '{fmt}'")


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor, aligned: bool = False) -> Tensor:
    """Generalized IoU (Rezatofighi et al. 2019) of ``[..., N, 4]`` x ``[..., M, 4]``
    ``(x1, y1, x2, y2)`` boxes -> ``[..., N, M]`` (``[...]`` pairwise when ``aligned``)."""
    return _pairwise(boxes1, boxes2, "giou", 0.0, aligned)


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7, aligned: bool = False) -> Tensor:
    """Distance IoU (Zheng et al. 2020) of ``[..., N, 4]`` x ``[..., M, 4]``
    ``(x1, y1, x2, y2)`` boxes -> ``[..., N, M]`` (``[...]`` pairwise when ``aligned``)."""
    return _pairwise(boxes1, boxes2, "diou", float(eps), aligned)


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7, aligned: bool = False) -> Tensor:
    """Complete IoU (Zheng et al. 2020) of ``[..., N, 4]`` x ``[..., M, 4]``
    ``(x1, y1, x2, y2)`` boxes -> ``[..., N, M]`` (``[...]`` pairwise when ``aligned``).
    As in torchvision, the trade-off weight alpha carries no gradient."""
    return _pairwise(boxes1, boxes2, "ciou", float(eps), aligned)


def _loss(boxes1: Tensor, boxes2: Tensor, variant: str, reduction: str, eps: float) -> Tensor:
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    if boxes1.device != boxes2.device:
        check_same_device([boxes1, boxes2], ["boxes1", "boxes2"])
    check_reduction(reduction)
    b1, b2 = _loss_inputs(boxes1, boxes2)
    if b1.shape != b2.shape:
        shape = broadcast_shape(b1.shape, b2.shape)
        if shape is None:
            raise ShapeError(f"boxes1 {list(boxes1.shape)} and boxes2 {list(boxes2.shape)} do not broadcast")
        b1, b2 = b1.expand(shape), b2.expand(shape)
    lead = b1.shape[:-1]
    loss = _ops.box_iou_loss(b1.reshape(-1, 4), b2.reshape(-1, 4), variant, float(eps)).reshape(lead)
    return reduce_loss(loss, reduction)


def generalized_box_iou_loss(
    boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7
) -> Tensor:
    """``1 - GIoU`` of each pair of ``[..., 4]`` ``(x1, y1, x2, y2)`` boxes (torchvision's
    formula), reduced by ``reduction`` (``"none"``, ``"mean"`` or ``"sum"``)."""
    return _loss(boxes1, boxes2, "giou", reduction, eps)


def distance_box_iou_loss(
    boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7
) -> Tensor:
    """``1 - DIoU`` of each pair of ``[..., 4]`` ``(x1, y1, x2, y2)`` boxes (torchvision's
    formula), reduced by ``reduction`` (``"none"``, ``"mean"`` or ``"sum"``)."""
    return _loss(boxes1, boxes2, "diou", reduction, eps)


def complete_box_iou_loss(
    boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7
) -> Tensor:
    """``1 - CIoU`` of each pair of ``[..., 4]`` ``(x1, y1, x2, y2)`` boxes (torchvision's
    formula: its DIoU part uses eps=1e-7 whatever ``eps`` is; alpha carries no
    gradient), reduced by ``reduction`` (``"none"``, ``"mean"`` or ``"sum"``)."""
    return _loss(boxes1, boxes2, "ciou", reduction, eps)


# FX: symbolic tracing records these calls as graph nodes instead of tracing into the checks.
for _fn in __all__:
    torch.fx.wrap(_fn)
