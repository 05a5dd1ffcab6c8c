"""Where detops' dense transposed convolution (kernel == stride: U-Net, Mask
R-CNN) should hand a layer to oneDNN's deconvolution (torch's own kernel):
times each side of the size dispatches in ``csrc/conv_transpose2d`` with
the algorithm forced (``DETOPS_CT_DENSE_FORWARD`` / ``DETOPS_CT_DENSE_BACKWARD``
= ``columns`` or ``onednn``; ``DETOPS_CT_DENSE_GEMM`` = ``matmul`` or
``conv1x1`` for the float32 forward's product) against
``torch.nn.functional.conv_transpose2d``, over the sweep's U-Net ladder::

    .venv/bin/python bench/conv_transpose2d_crossover.py [--repeats 9]
    .venv/bin/python bench/conv_transpose2d_crossover.py --fp32   # detops.conv_transpose2d's routing
    .venv/bin/python bench/conv_transpose2d_crossover.py --gemm   # the NCHW forward's product

Prints, per size, the median time of each algorithm and of torch (alternating
samples, so machine load hits them alike); the crossovers written in the op's
docstring come from this table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

import detops


def _median_times(fns: dict, repeats: int, sample_time: float = 0.02) -> dict:
    inner = {}
    for name, fn in fns.items():
        fn()
        n, start = 1, time.perf_counter()
        while True:
            start = time.perf_counter()
            for _ in range(n):
                fn()
            if time.perf_counter() - start >= sample_time or n >= 4096:
                break
            n *= 2
        inner[name] = n
    samples: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {name: statistics.median(v) for name, v in samples.items()}


def _forced(variable: str, value: str, fn):
    def run():
        os.environ[variable] = value
        try:
            return fn()
        finally:
            del os.environ[variable]

    return run


def _kernel(x, w, b, act: int):
    """detops' dense kernel itself, past :func:`detops.conv_transpose2d`'s size dispatch."""
    size = [2 * x.shape[2], 2 * x.shape[3]]
    return torch.ops.detops.conv_transpose2d(x, w, b, None, [2, 2], [0, 0], size, [0, 0], 1, act)


def fp32_crossover(repeats: int) -> None:
    """float32 dense layers: detops' kernel against torch's (oneDNN), by input pixels N*H*W."""
    g = torch.Generator().manual_seed(0)
    layers = {"unet 256->128": (256, 128, 0), "mask head 256->256+relu": (256, 256, 1)}
    shapes = {"unet 256->128": [(1, 8), (1, 16), (2, 16), (1, 24), (1, 32), (2, 32), (1, 48)],
              "mask head 256->256+relu": [(1, 14), (2, 14), (4, 14), (6, 14), (8, 14)]}
    print("float32 dense: torch time / detops kernel time (above 1: the kernel wins)")
    for layer, (cin, cout, act) in layers.items():
        w = (torch.randn(cin, cout, 2, 2, generator=g) * 0.05).requires_grad_()
        b = torch.randn(cout, generator=g).requires_grad_()

        def ref(x, w_, b_, act=act):
            out = F.conv_transpose2d(x, w_, b_, stride=2)
            return F.relu(out) if act else out

        for n, hw in shapes[layer]:
            cells = []
            for cl in (False, True):
                x = torch.randn(n, cin, hw, hw, generator=g)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                x.requires_grad_()

                def step(fn, x=x):
                    def run():
                        out = fn(x, w, b)
                        return torch.autograd.grad(out, (x, w, b), torch.ones_like(out))

                    return run

                with torch.no_grad():
                    t = _median_times({"ours": lambda x=x: _kernel(x, w, b, act), "torch": lambda x=x: ref(x, w, b)},
                                      repeats)
                cells.append(f"fwd {t['torch'] / t['ours']:.2f}x")
                t = _median_times({"ours": step(lambda a, w_, b_: _kernel(a, w_, b_, act)), "torch": step(ref)}, repeats)
                cells.append(f"fwd+bwd {t['torch'] / t['ours']:.2f}x")
            print(f"{layer:24s} {n}x{hw}x{hw} ({n * hw * hw:5d} px): NCHW {cells[0]} {cells[1]}  "
                  f"channels-last {cells[2]} {cells[3]}", flush=True)


def gemm_crossover(repeats: int) -> None:
    """float32 NCHW forward: one matrix product or the 1x1 convolution before the
    shuffle, by columns N * Cout * kH * kW * H * W (the op switches at 2**20)."""
    g = torch.Generator().manual_seed(0)
    print("float32 NCHW forward: torch time / detops time with each product (above 1: detops wins)")
    for (n, cin, cout, hw) in [(1, 256, 128, 16), (1, 256, 128, 32), (1, 256, 128, 45), (1, 256, 128, 64),
                               (1, 256, 256, 14), (4, 256, 256, 14), (8, 256, 256, 14)]:
        x = torch.randn(n, cin, hw, hw, generator=g)
        w = torch.randn(cin, cout, 2, 2, generator=g) * 0.05
        b = torch.randn(cout, generator=g)
        with torch.no_grad():
            t = _median_times({
                "matmul": _forced("DETOPS_CT_DENSE_GEMM", "matmul", lambda: _kernel(x, w, b, 0)),
                "conv1x1": _forced("DETOPS_CT_DENSE_GEMM", "conv1x1", lambda: _kernel(x, w, b, 0)),
                "torch": lambda: F.conv_transpose2d(x, w, b, stride=2),
            }, repeats)
        columns = n * cout * 4 * hw * hw
        print(f"{n}x{cin}x{hw}x{hw} -> {cout} ({columns:8d} columns): matmul {t['torch'] / t['matmul']:.2f}x  "
              f"conv1x1 {t['torch'] / t['conv1x1']:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--sizes", default="4,8,16,32,64", help="U-Net input map sides")
    parser.add_argument("--fp32", action="store_true", help="only the float32 crossover table")
    parser.add_argument("--gemm", action="store_true", help="only the float32 NCHW forward's product table")
    args = parser.parse_args()
    if args.fp32:
        fp32_crossover(args.repeats)
        return
    if args.gemm:
        gemm_crossover(args.repeats)
        return
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 128, 2, 2, generator=g) * 0.05
    b = torch.randn(128, generator=g)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per call (median of {args.repeats})")
    for hw in (int(s) for s in args.sizes.split(",")):
        x = torch.randn(1, 256, hw, hw, generator=g)
        # bf16 NCHW forward: the columns path against oneDNN.
        xh, wh, bh = x.bfloat16(), w.bfloat16(), b.bfloat16()
        fwd = {
            "columns": _forced("DETOPS_CT_DENSE_FORWARD", "columns",
                               lambda: torch.ops.detops.conv_transpose2d(xh, wh, bh, None, [2, 2], [0, 0],
                                                                         [2 * hw, 2 * hw], [0, 0], 1, 0)),
            "onednn": _forced("DETOPS_CT_DENSE_FORWARD", "onednn",
                              lambda: torch.ops.detops.conv_transpose2d(xh, wh, bh, None, [2, 2], [0, 0],
                                                                        [2 * hw, 2 * hw], [0, 0], 1, 0)),
            "default": lambda: detops.conv_transpose2d(xh, wh, bh, stride=2),
            "torch": lambda: F.conv_transpose2d(xh, wh, bh, stride=2),
        }
        t = _median_times(fwd, args.repeats)
        print(f"bf16 NCHW fwd    256x{hw}x{hw}: " + "  ".join(f"{k} {v * 1e3:8.4f}" for k, v in t.items())
              + f"  torch/default {t['torch'] / t['default']:.2f}x")
        # fp32 channels-last forward + backward: the backward's columns path against oneDNN.
        for dtype in (torch.float32,):
            xc = x.to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
            wc, bc = w.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()

            def step(fn):
                def run():
                    out = fn(xc, wc, bc)
                    return torch.autograd.grad(out, (xc, wc, bc), torch.ones_like(out))

                return run

            ours = step(lambda a, b_, c: detops.conv_transpose2d(a, b_, c, stride=2))
            bwd = {
                "columns": _forced("DETOPS_CT_DENSE_BACKWARD", "columns", ours),
                "onednn": _forced("DETOPS_CT_DENSE_BACKWARD", "onednn", ours),
                "default": ours,
                "torch": step(lambda a, b_, c: F.conv_transpose2d(a, b_, c, stride=2)),
            }
            t = _median_times(bwd, args.repeats)
            print(f"fp32 CL fwd+bwd  256x{hw}x{hw}: " + "  ".join(f"{k} {v * 1e3:8.4f}" for k, v in t.items())
                  + f"  torch/default {t['torch'] / t['default']:.2f}x")


if __name__ == "__main__":
    main()
