"""What this installation of detops was built with, and whether the torch
imported now can run it."""

from __future__ import annotations

import os
from typing import Any

import torch

from . import _build_config as _config


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def torch_mismatch() -> str | None:
    """Why the imported torch cannot load this build's ``detops._C``, or None.

    The extension links against one torch's C++ ABI (same major.minor) and,
    for a CUDA build, against that torch's CUDA libraries (same CUDA major);
    a mismatch would otherwise surface as an undefined symbol or a missing
    ``libc10_cuda.so`` when ``_C`` loads.
    """
    runtime = torch.__version__
    runtime_cuda = torch.version.cuda
    problems = []
    if _major_minor(runtime) != _major_minor(_config.TORCH_VERSION):
        problems.append(f"it links against torch {_config.TORCH_VERSION}'s C++ ABI")
    if _config.CUDA:
        if runtime_cuda is None:
            problems.append("its CUDA kernels need a CUDA build of torch, and this torch is CPU-only")
        elif runtime_cuda.split(".")[0] != str(_config.TORCH_CUDA_VERSION).split(".")[0]:
            problems.append(f"its CUDA kernels link against CUDA {_config.TORCH_CUDA_VERSION}, "
                            f"and this torch uses CUDA {runtime_cuda}")
    if not problems:
        return None
    cuda_word = f"a CUDA {_config.TORCH_CUDA_VERSION} build of " if _config.CUDA else ""
    return (
        f"detops {_config.VERSION} needs {cuda_word}{_config.TORCH_REQUIREMENT} "
        f"but torch {runtime} is installed: {'; '.join(problems)}. Either install the torch it needs "
        f"(pip install '{_config.TORCH_REQUIREMENT}'"
        + (f" from the CUDA {_config.TORCH_CUDA_VERSION} wheel index" if _config.CUDA else "")
        + "), or use a detops wheel built for this torch: its version label names the torch and CUDA "
        "(+torchX.Y.cuNNN or +torchX.Y.cpu), and `pip wheel --no-build-isolation --no-deps . -w dist` "
        "in a detops checkout builds one against the installed torch (docs: Building a wheel)."
    )


def check_torch() -> None:
    """Raise ImportError, in words, when ``detops._C`` cannot run under this torch."""
    reason = torch_mismatch()
    if reason is not None:
        raise ImportError(reason)


def triton_available() -> bool:
    """True when Triton kernels can run here: a CUDA device, or the interpreter."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def build_info() -> dict[str, Any]:
    """Report what was compiled.

    Returns a dict with ``version`` (the package version; its local label names
    the torch and CUDA of the build, e.g. ``0.1.0+torch2.14.cu130``),
    ``torch_requirement`` (``torch==2.14.*``), ``cuda`` (CUDA kernels compiled),
    ``cuda_version`` (the CUDA they were built with, or None), ``cuda_archs``
    (the architectures they were compiled for), ``torch_version`` (the torch
    the extension was built against), ``torch_runtime`` (the torch imported
    now), ``triton`` (whether Triton kernels can run here) and ``compiler``.
    """
    from . import _C

    info: dict[str, Any] = {"version": _config.VERSION, "torch_requirement": _config.TORCH_REQUIREMENT}
    info.update(_C.build_info())
    info["cuda_version"] = _config.TORCH_CUDA_VERSION if _config.CUDA else None
    info["torch_runtime"] = torch.__version__
    info["triton"] = triton_available()
    try:
        import triton

        info["triton_version"] = triton.__version__
    except ImportError:
        info["triton_version"] = None
    return info
