"""Public op functions. Each module here is one op family (see ARCHITECTURE)."""

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
from .nms import *  # noqa: F401,F403
from .nms import __all__ as _nms_all
from .roi_align import *  # noqa: F401,F403
from .roi_align import __all__ as _roi_align_all
from .roi_pool import *  # noqa: F401,F403
from .roi_pool import __all__ as _roi_pool_all
from .sigmoid_focal_loss import *  # noqa: F401,F403
from .sigmoid_focal_loss import __all__ as _sigmoid_focal_loss_all

__all__ = [*_anchor_generator_all, *_box_coder_all, *_box_iou_all, *_boxes_all, *_conv_transpose2d_all, *_nms_all, *_roi_align_all, *_roi_pool_all, *_sigmoid_focal_loss_all]
