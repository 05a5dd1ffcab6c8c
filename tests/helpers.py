"""Random inputs and comparisons shared by the op tests."""

from __future__ import annotations

import socket
import subprocess
import sys

import torch


def random_boxes(n: int, *, scale: float = 100.0, dtype=torch.float32, device="cpu", generator=None) -> torch.Tensor:
    """``[n, 4]`` valid ``(x1, y1, x2, y2)`` boxes with corners in ``[0, scale]``-ish."""
    xy = torch.rand(n, 2, dtype=torch.float64, generator=generator) * scale
    wh = torch.rand(n, 2, dtype=torch.float64, generator=generator) * scale / 2 + scale / 1000
    return torch.cat([xy, xy + wh], dim=1).to(dtype=dtype, device=device)


def assert_close(actual, expected, *, rtol=1e-6, atol=1e-6, msg=""):
    """Same shape and dtype, values close, NaN where expected is NaN."""
    assert actual.shape == expected.shape, f"{msg} shape {actual.shape} != {expected.shape}"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, msg=msg or None)


def run_poisoning_cuda_call(code: str) -> subprocess.CompletedProcess:
    """Runs ``code`` (after ``import torch, detops``) in a fresh interpreter and
    synchronises: for calls that trip a device-side assertion, which leaves the
    CUDA context unusable for the rest of the process."""
    script = f"import torch, detops\n{code}\ntorch.cuda.synchronize()\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)


def free_port() -> int:
    """A free TCP port on 127.0.0.1, for a test's torch.distributed rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
