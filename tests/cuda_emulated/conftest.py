"""The emulated CUDA tests need the ASan/UBSan test library and a process that
preloaded the sanitizer runtimes, so they run only under
scripts/test_cuda_emulated.sh (which sets DETOPS_EMU_LIB), or on a GPU with DETOPS_EMU_DEVICE=cuda
(bench/gpu_suite.sh); the plain test run (scripts/test.sh's first pytest)
skips this folder."""

import os

import pytest
import torch

if not os.environ.get("DETOPS_EMU_LIB") and os.environ.get("DETOPS_EMU_DEVICE", "cpu") == "cpu":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session", autouse=True)
def emulated_library():
    """Loads build/cuda_emulated/libdetops_emu.so: torch.ops.detops_emu.*."""
    path = os.environ.get("DETOPS_EMU_LIB")
    if path:
        torch.ops.load_library(path)
    yield path
