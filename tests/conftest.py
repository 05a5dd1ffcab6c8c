"""Shared fixtures. Triton kernels run on CPU tensors under the interpreter when
there is no GPU: TRITON_INTERPRET must be set before any kernel is decorated,
so it is set here, before detops is imported."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import detops  # noqa: E402,F401

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Every test that takes `device` runs on the CPU and on CUDA (skipped
    without a GPU)."""
    return request.param


@pytest.fixture
def triton_device() -> str:
    """Where Triton kernels run in this session: cuda, or cpu under the interpreter."""
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")
    return "cpu"


def dtypes_for(device: str) -> list[torch.dtype]:
    """Kernel dtypes testable on a device (bfloat16 runs on CPU C++ and GPU)."""
    return [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def triton_dtypes(device: str) -> list[torch.dtype]:
    """bfloat16 is broken in the Triton interpreter, so only GPU runs test it."""
    base = [torch.float32, torch.float16]
    return base + ([torch.bfloat16, torch.float64] if device == "cuda" else [torch.float64])

