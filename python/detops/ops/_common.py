"""Argument checks and small helpers shared by the op modules.

Checks raise ``ValueError`` (bad shape or value) or ``TypeError`` (bad dtype)
with a message that names the argument, before anything reaches a kernel.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

# The dtypes every kernel reads natively; others are converted in Python.
KERNEL_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_boxes(boxes: object, name: str, *, min_dim: int = 1, max_dim: int | None = None) -> Tensor:
    """Check a tensor of boxes ``[..., 4]``: real (not bool/complex) with 4 coordinates."""
    boxes = check_tensor(boxes, name)
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"{name} must be a real floating or integer tensor, got {boxes.dtype}")
    if boxes.dim() < min_dim or (max_dim is not None and boxes.dim() > max_dim) or boxes.shape[-1:] != (4,):
        if max_dim == min_dim:
            want = "[4]" if min_dim == 1 else "[" + ", ".join(["..."] * (min_dim - 2) + ["N", "4"]) + "]"
        else:
            want = "[..., N, 4]" if min_dim >= 2 else "[..., 4]"
        raise ValueError(f"{name} must have shape {want}, got {list(boxes.shape)}")
    return boxes


def check_same_device(tensors: Sequence[Tensor], names: Sequence[str]) -> None:
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        found = ", ".join(f"{n} on {t.device}" for n, t in zip(names, tensors))
        raise ValueError(f"all inputs must be on the same device, got {found}")


def check_reduction(reduction: str) -> None:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """torchvision's reduction rule: an empty 'mean' is 0 (not NaN) and keeps the graph."""
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    return loss


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a kernel computes and returns in: float32 for float16/bfloat16."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def is_channels_last(t: Tensor) -> bool:
    """Whether the kernels walk a [N, C, H, W] tensor channels-innermost (the C++
    rule in ``csrc/common/memory_format.h``)."""
    return t.dim() == 4 and t.shape[1] > 1 and t.stride(1) == 1 and not t.is_contiguous()


def memory_format_of(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format
