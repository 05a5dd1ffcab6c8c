"""Modules built on detops ops (drop-ins for torch.nn modules where one exists)."""

from ..ops.ps_roi_align import PSRoIAlign
from ..ops.ps_roi_pool import PSRoIPool
from .conv_transpose import BilinearUpsample, ConvTranspose2d, bilinear_kernel

__all__ = ["ConvTranspose2d", "BilinearUpsample", "bilinear_kernel", "PSRoIAlign", "PSRoIPool"]
