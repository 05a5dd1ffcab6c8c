"""Argument checks, error classes and small helpers shared by the op modules.

Checks raise ``ValueError`` (bad shape or value) or ``TypeError`` (bad dtype)
with a message that names the argument, before anything reaches a kernel.
Where torchvision fails on the same argument with another exception type
(an ``assert``, a kernel's ``RuntimeError``), detops raises a class that is
both, so that code written against torchvision still catches it.

Every helper here is TorchScript-compatible (the public functions that call
them script), costs no tensor operation, and reads only tensor metadata.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

__all__ = ["ShapeError", "DtypeError", "DeviceError"]

# The dtypes every kernel reads natively; others are converted in Python.
KERNEL_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class ShapeError(ValueError, AssertionError, RuntimeError, IndexError):
    """A tensor (or list) argument of the wrong shape or length.

    torchvision reports these as ``AssertionError`` (its Python asserts, e.g.
    ``roi_align`` boxes that are not ``[K, 5]``, ``AnchorGenerator`` given a
    feature-map count that does not match its sizes), ``RuntimeError`` (its
    kernels and broadcasting, e.g. ``nms`` boxes that are not ``[N, 4]``) or
    ``IndexError`` (indexing a 1-D tensor as 2-D), depending on the op and the
    shape. This class is a ``ValueError`` (detops' documented type) and each of
    those, so every ``except`` clause written against torchvision still
    catches it, and the message says what was expected.
    """


class DtypeError(TypeError, NotImplementedError):
    """A tensor of a dtype the op does not take. torchvision's kernels raise
    ``RuntimeError`` (or its subclass ``NotImplementedError``) for these; this
    class is a ``TypeError`` and both."""


class DeviceError(ValueError, RuntimeError):
    """Tensors on different devices (torchvision's kernels: ``RuntimeError``)."""


def check_tensor(x: Tensor, name: str) -> Tensor:
    # Under TorchScript the annotation guarantees a Tensor and this branch is compiled away.
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _boxes_shape_text(min_dim: int, max_dim: int) -> str:
    if max_dim == min_dim:
        if min_dim == 1:
            return "[4]"
        lead = ""
        for _ in range(min_dim - 2):
            lead += "..., "
        return "[" + lead + "N, 4]"
    return "[..., N, 4]" if min_dim >= 2 else "[..., 4]"


def check_boxes(boxes: Tensor, name: str, min_dim: int = 1, max_dim: int = -1) -> Tensor:
    """Check a tensor of boxes ``[..., 4]``: real (not complex) with 4 coordinates
    and ``min_dim <= dim <= max_dim`` (``max_dim = -1``: any)."""
    check_tensor(boxes, name)
    if boxes.is_complex():
        raise DtypeError(f"{name} must be a real floating or integer tensor, got {boxes.dtype}")
    dim = boxes.dim()
    if dim < min_dim or (max_dim >= 0 and dim > max_dim) or dim == 0 or boxes.shape[-1] != 4:
        raise ShapeError(
            f"{name} must have shape {_boxes_shape_text(min_dim, max_dim)}, got {list(boxes.shape)}"
        )
    return boxes


def check_same_device(tensors: List[Tensor], names: List[str]) -> None:
    # All on the CPU, the common case, without building a device object per tensor.
    all_cpu = True
    for t in tensors:
        if not t.is_cpu:
            all_cpu = False
            break
    if all_cpu:
        return
    device = tensors[0].device
    for t in tensors:
        if t.device != device:
            found = ""
            for i in range(len(tensors)):
                found += ("" if i == 0 else ", ") + names[i] + " on " + str(tensors[i].device)
            raise DeviceError(f"all inputs must be on the same device, got {found}")


def broadcast_shape(a: List[int], b: List[int]) -> Optional[List[int]]:
    """The broadcast of two shapes, or None when they do not broadcast (no
    try/except, so that TorchScript compiles it)."""
    n = max(len(a), len(b))
    out: List[int] = []
    for i in range(n):
        x = a[i - n + len(a)] if i - n + len(a) >= 0 else 1
        y = b[i - n + len(b)] if i - n + len(b) >= 0 else 1
        if x != y and x != 1 and y != 1:
            return None
        out.append(y if x == 1 else x)
    return out


def check_reduction(reduction: str) -> None:
    if reduction != "none" and reduction != "mean" and reduction != "sum":
        # torchvision's key phrase, which callers match on.
        raise ValueError(
            f"Invalid Value for arg 'reduction': '{reduction}'; it must be 'none', 'mean' or 'sum'"
        )


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """torchvision's reduction rule: an empty 'mean' is 0 (not NaN) and keeps the graph."""
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    return loss


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a kernel computes and returns in: float32 for float16/bfloat16."""
    return torch.float32 if dtype == torch.float16 or dtype == torch.bfloat16 else dtype


def is_kernel_float(dtype: torch.dtype) -> bool:
    """Whether the kernels read ``dtype`` natively (``KERNEL_FLOAT_DTYPES``, written
    out so that TorchScript compiles it)."""
    return dtype == torch.float32 or dtype == torch.float64 or dtype == torch.float16 or dtype == torch.bfloat16


def is_channels_last(t: Tensor) -> bool:
    """Whether the kernels walk a [N, C, H, W] tensor channels-innermost (the C++
    rule in ``csrc/common/memory_format.h``)."""
    return t.dim() == 4 and t.shape[1] > 1 and t.stride(1) == 1 and not t.is_contiguous()


def memory_format_of(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def dequantize_if(t: Tensor) -> Tensor:
    """A quantized tensor's float values (torchvision's quantized kernels compute on them)."""
    return t.dequantize() if t.is_quantized else t


def requantize_like(out: Tensor, like: Tensor) -> Tensor:
    """``out`` quantized with ``like``'s per-tensor scale and zero point (torchvision's
    quantized roi ops return the input's quantization)."""
    return torch.quantize_per_tensor(out, like.q_scale(), like.q_zero_point(), like.dtype)


def empty_like_window(input: Tensor, shape: List[int]) -> Tensor:
    """An empty result of ``shape`` that is a view of ``input`` (so autograd sees
    the input, and its gradient is zero), for outputs with a zero-size dimension."""
    return input.reshape(-1)[:0].reshape(shape)

