# Type stub of the compiled extension (csrc/detops.cpp). Its ops are reached
# through torch.ops.detops.*; the module itself only reports the build.
from typing import Any

def build_info() -> dict[str, Any]: ...
