"""Upsampling modules built on :func:`detops.conv_transpose2d`."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from ..ops.conv_transpose2d import conv_transpose2d

__all__ = ["ConvTranspose2d", "BilinearUpsample", "bilinear_kernel"]

# FX: the modules' calls become graph nodes when traced. (ConvTranspose2d's optional
# output_size, like torch's, is read in Python: trace it with
# concrete_args={"output_size": None}; torch's own conv modules are FX leaves.)
torch.fx.wrap("conv_transpose2d")


class ConvTranspose2d(nn.ConvTranspose2d):
    """:class:`torch.nn.ConvTranspose2d` running :func:`detops.conv_transpose2d`.

    Same constructor, parameters and state_dict as torch's module (a torch
    checkpoint loads unchanged), plus ``activation`` (None or ``"relu"``), fused
    after the bias.
    """

    def __init__(self, *args, activation: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if activation not in (None, "none", "relu"):
            raise ValueError(f"activation must be None, 'none' or 'relu', got {activation!r}")
        self.activation = None if activation == "none" else activation

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only 'zeros' padding mode is supported for ConvTranspose2d")
        num_spatial_dims = 2
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, num_spatial_dims, self.dilation
        )
        weight, bias = self.weight, self.bias
        # torch's module runs in the autocast dtype (conv_transpose2d is on autocast's
        # lower-precision list); the custom op has no autocast rule, so cast here
        if not torch.jit.is_scripting():  # TorchScript has no autocast of its own to follow
            # (under FX tracing the device is a proxy's: the traced call has no autocast either)
            if not isinstance(input, torch.fx.Proxy) and torch.is_autocast_enabled(input.device.type):
                dtype = torch.get_autocast_dtype(input.device.type)
                input, weight = input.to(dtype), weight.to(dtype)
                bias = None if bias is None else bias.to(dtype)
        return conv_transpose2d(
            input, weight, bias, self.stride, self.padding, output_padding, self.groups, self.dilation,
            activation=self.activation,
        )

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", activation={self.activation!r}" if self.activation else "")


def bilinear_kernel(kernel_size: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """FCN's bilinear upsampling filter ``[kernel_size, kernel_size]`` (``upsample_filt`` of
    the FCN reference code): ``(1 - |i - c| / f) * (1 - |j - c| / f)`` with
    ``f = ceil(kernel_size / 2)`` and ``c = f - 1`` (odd size) or ``f - 0.5`` (even size)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor
    return torch.outer(filt, filt).to(dtype=dtype, device=device)


class BilinearUpsample(nn.Module):
    """Upsample ``[N, C, H, W]`` by an integer ``factor`` with a transposed convolution
    initialised as FCN does (kernel ``2 * factor - factor % 2``, stride ``factor``,
    the bilinear filter on each channel).

    Args:
        channels: C.
        factor: the integer upsampling factor.
        learnable: if False the weight is a fixed buffer (FCN's ``lr_mult: 0``);
            if True it is a parameter initialised to the bilinear filter.
        depthwise: if True (default) one filter per channel (``groups = C``);
            if False a dense ``[C, C, k, k]`` weight that is the filter on the
            diagonal and 0 elsewhere (FCN's layout; only useful when learnable).
        padding: torch's ``padding``; default ``ceil((factor - 1) / 2)``, which makes the
            output exactly ``factor`` times the input. Use 0 with an FCN crop.
    """

    def __init__(
        self, channels: int, factor: int, *, learnable: bool = False, depthwise: bool = True,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be a positive int, got {factor!r}")
        self.channels, self.factor, self.depthwise = channels, factor, depthwise
        self.kernel_size = 2 * factor - factor % 2
        self.padding = factor // 2 if padding is None else padding  # = ceil((factor - 1) / 2)
        filt = bilinear_kernel(self.kernel_size)
        if depthwise:
            weight = filt.expand(channels, 1, -1, -1).clone()
        else:
            weight = torch.zeros(channels, channels, self.kernel_size, self.kernel_size)
            weight[range(channels), range(channels)] = filt
        if learnable:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight)

    def forward(self, input: Tensor) -> Tensor:
        return conv_transpose2d(
            input, self.weight.to(input.dtype), None, self.factor, self.padding,
            groups=self.channels if self.depthwise else 1,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, factor={self.factor}, kernel_size={self.kernel_size}, padding={self.padding}, "
            f"depthwise={self.depthwise}, learnable={isinstance(self.weight, nn.Parameter)}"
        )
