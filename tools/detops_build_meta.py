"""scikit-build-core metadata provider: the version and the torch requirement
of a detops build, taken from the torch that builds it.

The extension links against one torch's C++ ABI, so a wheel must say which
torch it needs (``torch==2.14.*``) and its file name must tell a CPU build from
a CUDA one: the version carries a local label, ``0.1.0+torch2.14.cu130`` or
``0.1.0+torch2.14.cpu``. CMakeLists.txt reads the label back
(SKBUILD_PROJECT_VERSION_FULL) and refuses to build something else, and writes
it into ``detops/_build_config.py``, which ``import detops`` checks against the
running torch before it loads ``detops._C``.

Whether the CUDA kernels are built is decided here, with the same rules as
CMake: torch is a CUDA build, ``DETOPS_WITH_CUDA`` (environment) is not 0/OFF,
and nvcc is found ($CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin, PATH).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_FALSE = {"", "0", "off", "false", "no", "n"}


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # the build runs without isolation, inside the user's environment
        raise RuntimeError(
            "detops builds against the torch already installed: install torch first, then build with "
            "`pip wheel --no-build-isolation --no-deps . -w dist` (docs: Building a wheel)"
        ) from exc
    return torch


def find_nvcc() -> str | None:
    hints = [os.path.join(os.environ[v], "bin") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    hints.append("/usr/local/cuda/bin")
    for folder in hints:
        candidate = Path(folder) / "nvcc"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("nvcc")


def variant() -> tuple[str, str | None]:
    """(torch major.minor, CUDA tag such as "cu130", or None for a CPU-only build)."""
    torch = _torch()
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    cuda = torch.version.cuda
    wanted = os.environ.get("DETOPS_WITH_CUDA", "1").strip().lower() not in _FALSE
    if cuda and wanted and find_nvcc():
        return f"{major}.{minor}", "cu" + cuda.replace(".", "")
    return f"{major}.{minor}", None


def dynamic_metadata(field: str, settings: Mapping[str, Any]) -> str | list[str]:
    torch_mm, cuda = variant()
    if field == "version":
        base = settings.get("base")
        if not isinstance(base, str):
            raise RuntimeError("tool.scikit-build.metadata.version needs base = \"X.Y.Z\"")
        return f"{base}+torch{torch_mm}.{cuda or 'cpu'}"
    if field == "dependencies":
        extra = settings.get("extra", [])
        return [f"torch=={torch_mm}.*", *extra]
    raise RuntimeError(f"detops_build_meta provides version and dependencies, not {field!r}")
