"""detops: fast custom ops for object detection and segmentation in PyTorch.

Every op is a real operator, ``torch.ops.detops.<name>``, with a C++ CPU kernel
and a GPU kernel (CUDA C++ or Triton), and a Python function here with
torchvision's signature. Boxes are ``(x1, y1, x2, y2)`` unless a docstring says
otherwise.
"""

import torch  # noqa: F401  (libtorch must be loaded before the extension)

from . import _C  # noqa: F401  (registers torch.ops.detops.*)
from ._build import build_info
from .ops import *  # noqa: F401,F403
from . import nn  # noqa: F401
from .ops import __all__ as _ops_all
from .patch import patch_torchvision, unpatch_torchvision  # noqa: F401

__version__ = "0.1.0"
__all__ = ["build_info", "patch_torchvision", "unpatch_torchvision", *_ops_all]
