"""The benchmark harness: each ``bench/ops/<op>.py`` exposes

    def cases(device: str, quick: bool) -> list[BenchCase]

and ``python -m detops.bench`` times every case's detops function against its
baseline (torchvision, or torch where torchvision has no such op) and, where
given, against ``torch.compile`` of the baseline, in one process.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class BenchCase:
    """One timed comparison. Inputs are made once, outside the callables."""

    op: str  # the op family, e.g. "box_iou"
    name: str  # what is timed, e.g. "box_iou fwd"
    size: str  # the problem size in words, e.g. "2000x2000"
    detops: Callable[[], Any]
    baseline: Callable[[], Any]
    baseline_name: str = "torchvision"
    # A zero-argument factory returning torch.compile of the baseline (built
    # lazily: compiling is slow and skipped with --quick or --no-compile).
    compiled: Callable[[], Callable[[], Any]] | None = None
    params: dict = field(default_factory=dict)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_callable(fn: Callable[[], Any], device: str, *, repeats: int, min_time: float) -> list[float]:
    """Median-ready samples in seconds: warm up, find how many calls last at
    least ``min_time`` (doubling, as timeit's autorange does), then take
    ``repeats`` samples of that many calls each."""
    fn()
    synchronize(device)
    inner = 1
    while True:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or inner >= 1 << 20:
            break
        inner *= 2
    samples = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) / inner)
    return samples


def _calibrate(fn: Callable, device: str, sample_time: float) -> tuple[int, float]:
    """Calls per sample so that a sample lasts about sample_time; and one call's time."""
    fn()  # warm-up (allocator, lazy init)
    synchronize(device)
    inner = 1
    while True:
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= sample_time or inner >= 1 << 16:
            return inner, elapsed / inner
        inner = max(inner * 2, min(1 << 16, int(inner * sample_time / max(elapsed, 1e-9))))


def _sample(fn: Callable, inner: int, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / inner


def time_pair(ours: Callable, ref: Callable, device: str, budget: float, sample_time: float = 0.02,
              min_samples: int = 3, max_samples: int = 25,
              max_call: float = math.inf) -> tuple[list[float], list[float]]:
    """Alternating samples (seconds per call) of ours and ref until ``budget``
    seconds are spent (at least ``min_samples`` each). Where one call of either
    side takes longer than ``max_call`` seconds, the calibration's single calls
    are the only samples."""
    inner_a, one_a = _calibrate(ours, device, sample_time)
    inner_b, one_b = _calibrate(ref, device, sample_time)
    if max(one_a, one_b) > max_call:
        return [one_a], [one_b]
    a: list[float] = []
    b: list[float] = []
    start = time.perf_counter()
    while len(a) < max_samples:
        # Alternate which side goes first, so neither always follows the other's cache footprint.
        if len(a) % 2:
            b.append(_sample(ref, inner_b, device))
            a.append(_sample(ours, inner_a, device))
        else:
            a.append(_sample(ours, inner_a, device))
            b.append(_sample(ref, inner_b, device))
        if len(a) >= min_samples and time.perf_counter() - start >= budget:
            break
    return a, b


def pair_speedup(ours: list[float], ref: list[float]) -> float:
    """The median of the per-pair ratios ref / ours: each pair is taken back to
    back, so a drift of the machine between pairs cancels."""
    return statistics.median(r / o for o, r in zip(ours, ref))


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3
