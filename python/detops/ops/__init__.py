"""Public op functions. Each module here is one op family (see ARCHITECTURE)."""

from .box_iou import *  # noqa: F401,F403
from .box_iou import __all__ as _box_iou_all
from .conv_transpose2d import *  # noqa: F401,F403
from .conv_transpose2d import __all__ as _conv_transpose2d_all

__all__ = [*_box_iou_all, *_conv_transpose2d_all]
