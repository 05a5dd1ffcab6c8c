"""The benchmark harness: each ``bench/ops/<op>.py`` exposes

    def cases(device: str, quick: bool) -> list[BenchCase]

and ``python -m detops.bench`` times every case's detops function against its
baseline (torchvision, or torch where torchvision has no such op) and, where
given, against ``torch.compile`` of the baseline, in one process.
"""

from __future__ import annotations

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


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3
