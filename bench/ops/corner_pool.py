"""Corner pooling vs its torch reference (``cummax``, with ``flip`` for top and
left): CornerNet's pooling map, [2, 128, 128, 128] (quick: [1, 32, 64, 64]);
a vertical and a horizontal direction; NCHW and channels-last; forward and
forward+backward."""

from __future__ import annotations

import torch

import detops
from detops.bench.harness import BenchCase



def _fwd_bwd(fn, x: torch.Tensor):
    """Forward and input gradient, with the incoming gradient in the input's layout
    (as a channels-last network's gradients arrive)."""
    leaf = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    grad = torch.randn_like(x, memory_format=torch.preserve_format)
    return lambda: torch.autograd.grad(fn(leaf), leaf, grad)


def _reference(direction: str):
    dim = 2 if direction in ("top", "bottom") else 3
    if direction in ("bottom", "right"):
        return lambda t: t.cummax(dim).values
    return lambda t: t.flip(dim).cummax(dim).values.flip(dim)


def cases(device: str, quick: bool) -> list[BenchCase]:
    out: list[BenchCase] = []
    shape = (1, 32, 64, 64) if quick else (2, 128, 128, 128)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=g).to(device)
    for direction in ("top", "left"):
        ref = _reference(direction)

        def ours(t, direction=direction):
            return detops.corner_pool(t, direction)

        for cl in (False, True):
            x = base.contiguous(memory_format=torch.channels_last) if cl else base
            size = f"{direction}, {list(shape)} {'channels-last' if cl else 'NCHW'} fp32"
            params = {"direction": direction, "channels_last": cl}
            out.append(BenchCase(
                op="corner_pool", name="corner_pool fwd", size=size, baseline_name="torch cummax",
                detops=lambda x=x, f=ours: f(x), baseline=lambda x=x, f=ref: f(x),
                compiled=lambda x=x, f=ref: (lambda c=torch.compile(f): (lambda: c(x)))(),
                params=params,
            ))
            out.append(BenchCase(
                op="corner_pool", name="corner_pool fwd+bwd", size=size, baseline_name="torch cummax",
                detops=_fwd_bwd(ours, x), baseline=_fwd_bwd(ref, x), params=params,
            ))
    return out
