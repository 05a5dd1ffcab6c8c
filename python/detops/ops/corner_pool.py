"""Corner pooling (CornerNet): ``corner_pool(input, direction)`` and the
``CornerPool`` module.

Operators (``torch.ops.detops.*``):

* ``corner_pool(input [N,C,H,W], direction) -> output [N,C,H,W]``
* ``corner_pool_backward(grad, input, output, direction) -> grad_input [N,C,H,W]``

``direction`` names where the pooled maximum comes from, as in CornerNet's
``TopPool`` / ``LeftPool`` / ``BottomPool`` / ``RightPool``:

* ``"top"``:    ``out[..., i, j] = max(input[..., i:, j])`` (the maximum below, carried upward)
* ``"left"``:   ``out[..., i, j] = max(input[..., i, j:])``
* ``"bottom"``: ``out[..., i, j] = max(input[..., :i + 1, j])`` (``input.cummax(2)``)
* ``"right"``:  ``out[..., i, j] = max(input[..., i, :j + 1])`` (``input.cummax(3)``)

The gradient goes to the argmax, with ties and NaNs broken as ``torch.cummax``
breaks them along the scan (the point met last in scan order wins, so for
``"top"`` the upper of two equal values). Channels-last maps are read in place
and give channels-last results; float16/bfloat16 are read natively.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._common import KERNEL_FLOAT_DTYPES, check_tensor, is_channels_last, memory_format_of

__all__ = ["corner_pool", "CornerPool", "CORNER_POOL_DIRECTIONS"]

_ops = torch.ops.detops

CORNER_POOL_DIRECTIONS = ("top", "left", "bottom", "right")


@torch.library.register_fake("detops::corner_pool")
def _corner_pool_fake(input: Tensor, direction: str) -> Tensor:
    torch._check(input.dim() == 4, lambda: "input must have shape [N, C, H, W]")
    return torch.empty(input.shape, dtype=input.dtype, device=input.device,
                       memory_format=memory_format_of(is_channels_last(input)))


@torch.library.register_fake("detops::corner_pool_backward")
def _corner_pool_backward_fake(grad: Tensor, input: Tensor, output: Tensor, direction: str) -> Tensor:
    return torch.empty(input.shape, dtype=input.dtype, device=input.device,
                       memory_format=memory_format_of(is_channels_last(input)))


def _setup(ctx, inputs, output) -> None:
    input, direction = inputs
    ctx.save_for_backward(input, output)
    ctx.direction = direction


def _backward(ctx, grad: Tensor):
    input, output = ctx.saved_tensors
    return _ops.corner_pool_backward(grad, input, output, ctx.direction), None


torch.library.register_autograd("detops::corner_pool", _backward, setup_context=_setup)


def _check_direction(direction: object) -> str:
    if direction not in CORNER_POOL_DIRECTIONS:
        raise ValueError(f"direction must be one of {CORNER_POOL_DIRECTIONS}, got {direction!r}")
    return direction  # type: ignore[return-value]


def corner_pool(input: Tensor, direction: str) -> Tensor:
    """CornerNet's corner pooling: a cumulative maximum along H or W.

    Args:
        input: ``[N, C, H, W]`` float16, bfloat16, float32 or float64 map (NCHW or
            channels-last), not empty.
        direction: ``"top"``, ``"left"``, ``"bottom"`` or ``"right"`` (see the module
            docstring for each one's formula).

    Returns:
        ``[N, C, H, W]`` in ``input``'s dtype and memory format.

    Raises:
        ValueError: an unknown direction, an input that is not 4-D, or an empty input.
        TypeError: an input that is not floating point.
    """
    input = check_tensor(input, "input")
    direction = _check_direction(direction)
    if input.dim() != 4:
        raise ValueError(f"input must have shape [N, C, H, W], got {list(input.shape)}")
    if input.numel() == 0:
        raise ValueError(f"input must not be empty (a corner needs a map to pool), got {list(input.shape)}")
    if input.dtype not in KERNEL_FLOAT_DTYPES:
        raise TypeError(f"input must be float16, bfloat16, float32 or float64, got {input.dtype}")
    return _ops.corner_pool(input, direction)


class CornerPool(nn.Module):
    """Module form of :func:`corner_pool` for one direction (``[N, C, H, W] -> [N, C, H, W]``)."""

    def __init__(self, direction: str) -> None:
        super().__init__()
        self.direction = _check_direction(direction)

    def forward(self, input: Tensor) -> Tensor:
        return corner_pool(input, self.direction)

    def extra_repr(self) -> str:
        return repr(self.direction)
