"""What this installation of detops was built with."""

from __future__ import annotations

from typing import Any

import torch

from . import _C


def triton_available() -> bool:
    """True when Triton kernels can run here: a CUDA device, or the interpreter."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    import os

    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def build_info() -> dict[str, Any]:
    """Report what was compiled.

    Returns a dict with ``cuda`` (CUDA kernels compiled), ``cuda_archs`` (the
    architectures they were compiled for), ``torch_version`` (the torch the
    extension was built against), ``torch_runtime`` (the torch imported now),
    ``triton`` (whether Triton kernels can run here) and ``compiler``.
    """
    info = dict(_C.build_info())
    info["torch_runtime"] = torch.__version__
    info["triton"] = triton_available()
    try:
        import triton

        info["triton_version"] = triton.__version__
    except ImportError:
        info["triton_version"] = None
    return info
