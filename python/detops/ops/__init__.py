"""Public op functions. Each module here is one op family (see ARCHITECTURE)."""

from .box_iou import *  # noqa: F401,F403
from .box_iou import __all__ as _box_iou_all

__all__ = [*_box_iou_all]
