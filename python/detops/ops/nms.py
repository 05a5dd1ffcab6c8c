"""The NMS family: exact greedy NMS (torchvision's ``nms`` and ``batched_nms``),
fixed-size batched multiclass NMS (like TensorRT's EfficientNMS), Soft-NMS
(Bodla et al. 2017) and Matrix NMS (SOLOv2). Boxes are ``(x1, y1, x2, y2)``.

Operators (``torch.ops.detops.*``), CPU (C++) and CUDA (C++) kernels, no autograd
(the outputs are indices or selected scores):

* ``nms(boxes [N,4], scores [N], iou_threshold) -> keep [K]``
* ``batched_nms(boxes [N,4], scores [N], idxs [N], iou_threshold) -> keep [K]``
* ``multiclass_nms(boxes [B,N,4] | [B,N,C,4], scores [B,N,C], score_threshold,
  iou_threshold, max_per_class, max_detections) -> boxes [B,D,4], scores [B,D],
  labels [B,D], num_detections [B]``
* ``soft_nms(boxes, scores, iou_threshold, sigma, score_threshold, method) -> keep, scores``
* ``matrix_nms(boxes, scores, idxs?, method, sigma, score_threshold) -> keep, scores``

Tie and NaN rules (the same on every device):

* Order: decreasing score, equal scores by lower index (a stable descending
  sort). A box is suppressed when its IoU with a kept higher-ranked box is
  strictly greater than ``iou_threshold``, computed with torchvision's
  arithmetic (its CPU formula on CPU, its CUDA formula on CUDA).
* NaN scores rank first in ``nms``/``batched_nms`` (as ``torch.sort`` places
  them, and so torchvision); ``multiclass_nms``, ``soft_nms`` and
  ``matrix_nms`` drop boxes whose score is NaN.
* A box with a NaN or infinite coordinate, or with ``x2 <= x1`` or
  ``y2 <= y1``, never suppresses and is never suppressed (its IoU is NaN or 0
  in torchvision's formula too): it is kept in ``nms`` wherever its score puts
  it. In Soft-NMS and Matrix NMS its IoU with any box counts as 0.
* float16/bfloat16 boxes are computed in float32 (the result equals the
  result on ``boxes.float()``); returned scores are float32 for them.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._common import (
    DeviceError,
    DtypeError,
    ShapeError,
    check_boxes,
    check_same_device,
    check_tensor,
    compute_dtype,
    dequantize_if,
    is_kernel_float,
)

__all__ = ["nms", "batched_nms", "multiclass_nms", "soft_nms", "matrix_nms"]

_ops = torch.ops.detops


# ------------------------------------------------------------------ fake kernels


@torch.library.register_fake("detops::nms")
def _nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    torch._check(boxes.dim() == 2 and scores.dim() == 1, lambda: "boxes must be [N, 4] and scores [N]")
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.long)


@torch.library.register_fake("detops::batched_nms")
def _batched_nms_fake(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    torch._check(boxes.dim() == 2 and scores.dim() == 1, lambda: "boxes must be [N, 4] and scores [N]")
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.long)


@torch.library.register_fake("detops::multiclass_nms")
def _multiclass_nms_fake(boxes, scores, score_threshold, iou_threshold, max_per_class, max_detections):
    batch = scores.shape[0]
    return (
        boxes.new_empty((batch, max_detections, 4)),
        scores.new_empty((batch, max_detections)),
        scores.new_empty((batch, max_detections), dtype=torch.long),
        scores.new_empty((batch,), dtype=torch.long),
    )


def _selection_fake(boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.long), boxes.new_empty((kept,), dtype=compute_dtype(boxes.dtype))


@torch.library.register_fake("detops::soft_nms")
def _soft_nms_fake(boxes, scores, iou_threshold, sigma, score_threshold, method):
    return _selection_fake(boxes, scores)


@torch.library.register_fake("detops::matrix_nms")
def _matrix_nms_fake(boxes, scores, idxs, method, sigma, score_threshold):
    return _selection_fake(boxes, scores)


# ------------------------------------------------------------------ argument checks


def _check_threshold(value: float, name: str) -> float:
    # For the detops-only NMS forms; nms and batched_nms take any threshold, as torchvision.
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _check_method(method: str) -> str:
    if method not in ("linear", "gaussian"):
        raise ValueError(f"method must be 'linear' or 'gaussian', got {method!r}")
    return method


def _check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not sigma > 0.0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return sigma


def _float_or_f32(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


def _kernel_inputs(boxes: Tensor, scores: Tensor) -> Tuple[Tensor, Tensor]:
    """Boxes and scores in one kernel dtype. A common float dtype is kept as is;
    otherwise both go to the promoted float dtype (integers count as float32),
    which preserves the order of the scores."""
    if boxes.dtype == scores.dtype and is_kernel_float(boxes.dtype):
        return boxes, scores
    if scores.is_complex():
        raise DtypeError(f"scores must be a real floating or integer tensor, got {scores.dtype}")
    dtype = torch.promote_types(_float_or_f32(boxes), _float_or_f32(scores))
    return boxes.to(dtype), scores.to(dtype)


def _check_boxes_scores(boxes: Tensor, scores: Tensor) -> Tuple[Tensor, Tensor]:
    check_boxes(boxes, "boxes", 2, 2)
    check_tensor(scores, "scores")
    if scores.dim() != 1:
        raise ShapeError(f"scores must have shape [N], got {list(scores.shape)}")
    if boxes.shape[0] != scores.shape[0]:
        raise ShapeError(
            f"boxes and scores must have the same length, got {boxes.shape[0]} boxes and {scores.shape[0]} scores"
        )
    if boxes.device != scores.device:
        check_same_device([boxes, scores], ["boxes", "scores"])
    return _kernel_inputs(dequantize_if(boxes), dequantize_if(scores))


def _check_idxs(idxs: Tensor, n: int, device: torch.device, name: str = "idxs") -> Tensor:
    """Class ids as int64. Float ids (torchvision takes them) become the index of
    their value among the distinct values, so each distinct value is a class."""
    check_tensor(idxs, name)
    if idxs.dim() != 1 or idxs.shape[0] != n:
        raise ShapeError(f"{name} must have shape [{n}] (one class id per box), got {list(idxs.shape)}")
    if idxs.device != device:
        raise DeviceError(f"all inputs must be on the same device, got boxes on {device}, {name} on {idxs.device}")
    if idxs.dtype == torch.int64:
        return idxs
    if idxs.is_complex():
        raise DtypeError(f"{name} must be a real tensor of class ids, got {idxs.dtype}")
    if idxs.is_floating_point():
        return torch.unique(idxs, return_inverse=True)[1]
    return idxs.long()


def _greedy_negative_threshold(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor]) -> Tensor:
    """NMS with a threshold below 0, which torchvision accepts: a kept box then
    suppresses every later box whose IoU with it is a number (0 included); only
    NaN IoUs (two empty boxes, NaN coordinates) do not suppress. Rare, so this
    runs on torch ops with torchvision's CPU arithmetic. ``idxs`` restricts
    suppression to a class (torchvision's ``batched_nms`` does so only past
    its size switch; below it, its offset boxes of other classes have IoU 0,
    which suppresses too)."""
    order = torch.sort(scores, descending=True, stable=True)[1]
    b = boxes[order]
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = (x2 - x1) * (y2 - y1)
    w = (torch.minimum(x2[:, None], x2[None, :]) - torch.maximum(x1[:, None], x1[None, :])).clamp(min=0)
    h = (torch.minimum(y2[:, None], y2[None, :]) - torch.maximum(y1[:, None], y1[None, :])).clamp(min=0)
    inter = w * h
    overlaps = ~torch.isnan(inter / (area[:, None] + area[None, :] - inter))
    if idxs is not None:
        cls = idxs[order]
        overlaps &= cls[:, None] == cls[None, :]
    suppressed = torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)
    keep = torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)
    for i in range(b.shape[0]):
        if not bool(suppressed[i]):
            keep[i] = True
            suppressed |= overlaps[i]
    return order[keep]


def _nms_threshold(iou_threshold: float) -> float:
    """The kernels take thresholds in [0, 1]. No IoU exceeds 1 and NaN compares
    false, so a threshold above 1 (or NaN) keeps every box, exactly as 1 does."""
    value = float(iou_threshold)
    return value if value <= 1.0 else 1.0  # NaN <= 1 is False


# ------------------------------------------------------------------ public functions


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, identical to ``torchvision.ops.nms``.

    Args:
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)``.
        scores: ``[N]`` scores.
        iou_threshold: a box is dropped when its IoU with a kept,
            higher-scored box is greater than this (any value, as in
            torchvision: above 1 keeps every box, below 0 only the first of
            each overlapping group).

    Returns:
        ``[K]`` int64 indices of the kept boxes in decreasing score order,
        equal scores by lower index. See the module docstring for NaN boxes
        and scores. On CUDA the kernel needs one device-to-host copy (the
        number of kept boxes, to size the output). Quantized boxes and scores
        are read as their float values, as torchvision's quantized kernel does.

    Examples:
        >>> boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
        >>> scores = torch.tensor([0.9, 0.8, 0.7])
        >>> detops.nms(boxes, scores, iou_threshold=0.5)
        tensor([0, 2])
    """
    boxes, scores = _check_boxes_scores(boxes, scores)
    if iou_threshold < 0:
        return _greedy_negative_threshold(boxes, scores, None)
    return _ops.nms(boxes, scores, _nms_threshold(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Exact per-class NMS: boxes of different ``idxs`` never suppress each other.

    Each class gets exactly ``nms`` (no coordinate-offset trick, so large
    coordinates and many classes lose no precision); classes run in parallel
    on CPU and in one launch on GPU.

    Args:
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)``.
        scores: ``[N]`` scores.
        idxs: ``[N]`` class of each box (integer, or float as torchvision
            allows: each distinct value is a class).
        iou_threshold: as in :func:`nms`.

    Returns:
        ``[K]`` int64 indices of the kept boxes in decreasing score order,
        equal scores by lower index (the same keep set as torchvision's
        ``batched_nms``; torchvision's own tie order differs between its two
        internal paths). As torchvision, empty ``boxes`` of any shape give an
        empty result, and one 1-D box ``[4]`` stands for ``N`` copies of it.

    Examples:
        >>> boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [1.0, 1.0, 11.0, 11.0]])
        >>> scores = torch.tensor([0.9, 0.8, 0.7])
        >>> detops.batched_nms(boxes, scores, torch.tensor([0, 0, 1]), iou_threshold=0.5)  # class 1 keeps its box
        tensor([0, 2])
    """
    check_tensor(boxes, "boxes")
    if boxes.dim() == 1:
        if boxes.shape[0] == 0:
            return torch.empty((0,), dtype=torch.int64, device=boxes.device)
        if boxes.shape[0] == 4 and scores.dim() == 1:
            boxes = boxes.expand(scores.shape[0], 4)
    boxes, scores = _check_boxes_scores(boxes, scores)
    idxs = _check_idxs(idxs, boxes.shape[0], boxes.device)
    if iou_threshold < 0:
        per_class = boxes.numel() > (4000 if boxes.device.type == "cpu" else 20000)
        return _greedy_negative_threshold(boxes, scores, idxs if per_class else None)
    return _ops.batched_nms(boxes, scores, idxs, _nms_threshold(iou_threshold))


def multiclass_nms(
    boxes: Tensor,
    scores: Tensor,
    score_threshold: float,
    iou_threshold: float,
    max_per_class: int,
    max_detections: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batched multiclass NMS with fixed-size outputs (like TensorRT's EfficientNMS).

    For each image and class, the candidates are the boxes whose score for the
    class is greater than ``score_threshold`` (NaN scores are dropped); exact
    greedy NMS (the same as ``nms``, decreasing score, ties by lower box index)
    keeps at most ``max_per_class`` of them (the first ones NMS keeps); the
    kept detections of all classes are ranked by score, equal scores by
    ``box * C + class``, and the first ``max_detections`` are returned. This is
    ``batched_nms`` of the image's candidates with ``idxs`` = class, capped per
    class, followed by the top-k. No device-to-host synchronisation on any
    device, so it can be captured in a CUDA graph.

    Args:
        boxes: ``[B, N, 4]`` (shared by all classes) or ``[B, N, C, 4]``
            (one box per class), ``(x1, y1, x2, y2)``.
        scores: ``[B, N, C]``.
        score_threshold: candidates need a score greater than this.
        iou_threshold: in ``[0, 1]``.
        max_per_class: at most this many kept boxes per image and class (>= 1).
        max_detections: ``D``, the fixed number of output slots per image (>= 1).

    Returns:
        ``boxes [B, D, 4]``, ``scores [B, D]`` (the input dtypes), ``labels
        [B, D]`` int64 and ``num_detections [B]`` int64. Slots past
        ``num_detections`` hold zero boxes and scores and label -1.
    """
    boxes = check_boxes(boxes, "boxes", min_dim=3, max_dim=4)
    scores = check_tensor(scores, "scores")
    if scores.dim() != 3:
        raise ValueError(f"scores must have shape [B, N, C], got {list(scores.shape)}")
    expected = [list(scores.shape[:2]) + [4], list(scores.shape) + [4]]
    if list(boxes.shape) not in expected:
        raise ValueError(
            f"boxes must have shape {expected[0]} or {expected[1]} to match scores {list(scores.shape)}, "
            f"got {list(boxes.shape)}"
        )
    check_same_device((boxes, scores), ("boxes", "scores"))
    for value, name in ((max_per_class, "max_per_class"), (max_detections, "max_detections")):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    score_threshold = float(score_threshold)
    if score_threshold != score_threshold:
        raise ValueError("score_threshold must not be NaN")
    boxes, scores = _kernel_inputs(boxes, scores)
    return _ops.multiclass_nms(
        boxes, scores, score_threshold, _check_threshold(iou_threshold, "iou_threshold"), max_per_class, max_detections
    )


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "linear",
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017): decay overlapping scores instead of dropping boxes.

    Repeatedly selects the box with the highest current score (ties: lower
    index) and multiplies the score of every remaining box by
    ``1 - IoU`` when ``IoU > iou_threshold`` (``method="linear"``, as mmcv) or
    by ``exp(-IoU**2 / sigma)`` (``method="gaussian"``, every pair). Boxes whose
    score is below ``score_threshold`` (at the start or after a decay) are
    dropped. Computed in float32 (float64 for float64 inputs).

    Args:
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)``.
        scores: ``[N]``.
        iou_threshold: in ``[0, 1]``, used by the linear method.
        sigma: > 0, used by the Gaussian method.
        score_threshold: boxes scoring below it are dropped.
        method: ``"linear"`` or ``"gaussian"``.

    Returns:
        ``keep [K]`` int64 in selection order (decreasing decayed score) and
        ``scores [K]``, the decayed score of each kept box.
    """
    boxes, scores = _check_boxes_scores(boxes, scores)
    return _ops.soft_nms(
        boxes,
        scores,
        _check_threshold(iou_threshold, "iou_threshold"),
        _check_sigma(sigma),
        float(score_threshold),
        _check_method(method),
    )


def matrix_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Optional[Tensor] = None,
    method: str = "gaussian",
    sigma: float = 2.0,
    score_threshold: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Matrix NMS (SOLOv2, Wang et al. 2020) on boxes: one parallel decay step.

    With boxes ranked by score (ties: lower index) and ``comp_i`` the largest
    IoU of box ``i`` with a higher-ranked box of its class, box ``j``'s score is
    multiplied by ``min(1, min_{i ranked above j, same class} f(IoU_ij, comp_i))``
    with ``f = (1 - IoU) / (1 - comp)`` (``"linear"``; terms with ``comp >= 1``
    are skipped) or ``exp(-sigma * (IoU**2 - comp**2))`` (``"gaussian"``).

    Args:
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)``.
        scores: ``[N]``; NaN scores are dropped.
        idxs: optional ``[N]`` integer classes; boxes of different classes do
            not decay each other.
        method: ``"gaussian"`` or ``"linear"``.
        sigma: > 0, the Gaussian's sharpness.
        score_threshold: boxes whose decayed score is below it are dropped.

    Returns:
        ``keep [K]`` int64 in decreasing decayed score (ties: the score order)
        and ``scores [K]``, their decayed scores.
    """
    boxes, scores = _check_boxes_scores(boxes, scores)
    if idxs is not None:
        idxs = _check_idxs(idxs, boxes.shape[0], boxes.device)
    return _ops.matrix_nms(boxes, scores, idxs, _check_method(method), _check_sigma(sigma), float(score_threshold))


# FX: symbolic tracing records these calls as graph nodes instead of tracing into the checks.
torch.fx.wrap("nms")
torch.fx.wrap("batched_nms")
