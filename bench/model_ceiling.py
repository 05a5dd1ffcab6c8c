"""How far detops can speed up a detection model: the time its network layers
take (torch's convolutions, linear layers, batch norm, pooling and ReLU, the
same calls on the same tensors with and without detops) against the rest
(anchors, box coding, matching, sampling, losses, RoI pooling, NMS, mask
pasting: what detops replaces).

For each model and part (after the backbone, eval; the training step), both
sides are timed (interleaved, median of ``--repeats``) and torchvision's side
is profiled once. The layers' share of its profiled time (the profiler slows
small ops more than large ones, so the share, not the profiled milliseconds,
is what carries over to the timed run) gives the ceiling, 1 / share: the
speed-up detops would reach if everything it replaces took no time at all::

    python -m detops.bench.model_ceiling --out DIR     # DIR/model-ceiling-<device>.json and .txt
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, Callable

import torch

from .__main__ import environment
from .harness import pair_speedup, synchronize, time_pair
from .ops import detection_models as dm
from .ops import tv_models as tvm

# The network's layers: identical work on both sides.
LAYER_OPS = {
    "aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward",
    "aten::_slow_conv2d_backward", "aten::addmm", "aten::mm", "aten::native_batch_norm",
    "aten::native_batch_norm_backward", "aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward",
    "aten::threshold_backward", "aten::relu_", "aten::clamp_min_", "aten::clamp_min",
}


def layer_ms(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    """(time in the network's layers, total self time) of one profiled call, in ms."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        synchronize(device)
    events = prof.key_averages()
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    layers = sum(getattr(e, attr) for e in events if e.key in LAYER_OPS) / 1e3
    total = sum(getattr(e, attr) for e in events) / 1e3
    return layers, total


def _no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run():
        with torch.no_grad():
            return fn()
    return run


def cases(device: str, side: int):
    """(model, part, detops callable, torchvision callable)."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, side, side, generator=g).to(device) for _ in range(2)]
    for name in dm.MODELS:
        tv, ours = dm._pair(name, side, device)
        tv.eval()
        ours.eval()
        tv_after, ours_after = dm._after_backbone(name, tv, ours, images)
        yield f"detops.models {name}", "after backbone", _no_grad(ours_after), _no_grad(tv_after)
        tv_after_tv = tvm._after_backbone(tv, images)
        yield f"torchvision {name} patched", "after backbone", tvm._patched(tv_after_tv), tv_after_tv
        tv_t, ours_t = dm._pair(name, side, device)
        tv_t.train()
        ours_t.train()
        targets = dm._targets(images, name == "maskrcnn", device)
        yield f"detops.models {name}", "train step", dm._train_step(ours_t, images, targets), \
            dm._train_step(tv_t, images, targets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--side", type=int, default=512, help="image side (2 images per batch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args(argv)
    rows = []
    header = f"{'model':32} {'part':15} {'torchvision ms':>15} {'detops ms':>10} {'speed-up':>9} {'layers ms':>10} {'layers %':>9} {'ceiling':>8}"
    print(header)
    for model, part, ours, tv in cases(args.device, args.side):
        ours_s, tv_s = time_pair(ours, tv, args.device, budget=0.0, sample_time=0.0, min_samples=args.repeats,
                                 max_samples=args.repeats)
        ours_ms, tv_ms = statistics.median(ours_s) * 1e3, statistics.median(tv_s) * 1e3
        tv_layers, tv_total = layer_ms(tv, args.device)
        share = tv_layers / tv_total
        row = dict(model=model, part=part, torchvision_ms=tv_ms, detops_ms=ours_ms, speedup=pair_speedup(ours_s, tv_s),
                   layers_ms=share * tv_ms, layers_fraction_of_torchvision=share, ceiling=1.0 / share)
        rows.append(row)
        print(f"{model:32} {part:15} {tv_ms:15.1f} {ours_ms:10.1f} {row['speedup']:8.2f}x {row['layers_ms']:10.1f} "
              f"{100 * row['layers_fraction_of_torchvision']:8.0f}% {row['ceiling']:7.2f}x", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"model-ceiling-{args.device}"
    stem.with_suffix(".json").write_text(json.dumps(
        dict(environment=environment(args.device), side=args.side, repeats=args.repeats,
             layer_ops=sorted(LAYER_OPS), rows=rows), indent=1))
    lines = [header] + [f"{r['model']:32} {r['part']:15} {r['torchvision_ms']:15.1f} {r['detops_ms']:10.1f} "
                        f"{r['speedup']:8.2f}x {r['layers_ms']:10.1f} {100 * r['layers_fraction_of_torchvision']:8.0f}% "
                        f"{r['ceiling']:7.2f}x" for r in rows]
    stem.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and {stem}.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
