"""Public op functions. Each module here is one op family, the Python side of
the op's five places (CONTRIBUTING.md: One op, five places)."""

from typing import TYPE_CHECKING

from .anchor_generator import *  # noqa: F401,F403
from .anchor_generator import __all__ as _anchor_generator_all
from .box_coder import *  # noqa: F401,F403
from .box_coder import __all__ as _box_coder_all
from .box_iou import *  # noqa: F401,F403
from .box_iou import __all__ as _box_iou_all
from .boxes import *  # noqa: F401,F403
from .boxes import __all__ as _boxes_all
from .conv_transpose2d import *  # noqa: F401,F403
from .conv_transpose2d import __all__ as _conv_transpose2d_all
from .corner_pool import *  # noqa: F401,F403
from .corner_pool import __all__ as _corner_pool_all
from .nms import *  # noqa: F401,F403
from .nms import __all__ as _nms_all
from .paste_masks import *  # noqa: F401,F403
from .paste_masks import __all__ as _paste_masks_all
from .ps_roi_align import *  # noqa: F401,F403
from .ps_roi_align import __all__ as _ps_roi_align_all
from .ps_roi_pool import *  # noqa: F401,F403
from .ps_roi_pool import __all__ as _ps_roi_pool_all
from .roi_align import *  # noqa: F401,F403
from .roi_align import __all__ as _roi_align_all
from .roi_pool import *  # noqa: F401,F403
from .roi_pool import __all__ as _roi_pool_all
from .sigmoid_focal_loss import *  # noqa: F401,F403
from .sigmoid_focal_loss import __all__ as _sigmoid_focal_loss_all
from ._common import DeviceError, DtypeError, ShapeError

_public = ["ShapeError", "DtypeError", "DeviceError", *_anchor_generator_all, *_box_coder_all, *_box_iou_all, *_boxes_all, *_conv_transpose2d_all, *_corner_pool_all, *_nms_all, *_paste_masks_all, *_ps_roi_align_all, *_ps_roi_pool_all, *_roi_align_all, *_roi_pool_all, *_sigmoid_focal_loss_all]
if not TYPE_CHECKING:  # type checkers cannot read a computed __all__; without one they export every public name
    __all__ = _public

# FX: symbolic tracing records calls through this namespace (detops.ops.<op>) as
# graph nodes; each op module wraps its own names the same way.
import inspect as _inspect  # noqa: E402

import torch.fx as _fx  # noqa: E402

for _name in _public:
    if _inspect.isfunction(globals()[_name]):
        _fx.wrap(_name)
