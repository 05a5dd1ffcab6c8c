"""detops: fast custom ops for object detection and segmentation in PyTorch.

Every op is a real operator, ``torch.ops.detops.<name>``, with a C++ CPU kernel
and a GPU kernel (CUDA C++ or Triton), and a Python function here with
torchvision's signature. Boxes are ``(x1, y1, x2, y2)`` unless a docstring says
otherwise.
"""

from typing import TYPE_CHECKING

import torch  # noqa: F401  (libtorch must be loaded before the extension)

from ._build import check_torch as _check_torch

_check_torch()  # an incompatible torch is an ImportError in words, not a loader error from _C

from . import _C  # noqa: F401  (registers torch.ops.detops.*)
from ._build import build_info as build_info
from ._build_config import VERSION as _VERSION
from .ops import *  # noqa: F401,F403
from . import nn  # noqa: F401
from .ops import __all__ as _ops_all
from .patch import patch_torchvision, unpatch_torchvision  # noqa: F401

# FX: calls through detops.<op> become graph nodes when traced (see detops.ops).
for _name in _ops_all:
    if callable(globals()[_name]) and not isinstance(globals()[_name], type):
        torch.fx.wrap(_name)

__version__ = _VERSION
if not TYPE_CHECKING:  # type checkers cannot read a computed __all__; without one they export every public name
    __all__ = ["build_info", "patch_torchvision", "unpatch_torchvision", *_ops_all]

# What the docs say of public data (they have no docstrings of their own).
__data_docs__ = {
    "CORNER_POOL_DIRECTIONS": "The directions :func:`corner_pool` takes: ``'top'``, ``'left'``, ``'bottom'``, ``'right'``.",
}
