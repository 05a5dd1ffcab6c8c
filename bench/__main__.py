"""Benchmarks of detops against torchvision: ``python -m detops.bench``.

Times every case of every ``bench/ops/<op>.py`` on one device, in one process
(median of repeats), prints a table of times and speed-ups, and writes a JSON
results file and a PNG chart of the speed-ups.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from detops._extras import optional_import

from .harness import BenchCase, median_ms, pair_speedup, time_callable, time_pair


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    import detops

    try:
        import torchvision

        tv_version = torchvision.__version__
    except ImportError:
        tv_version = None
    try:
        import subprocess

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "device": device,
        "detops_commit": commit,
        "device_name": device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": tv_version,
        "python": platform.python_version(),
        "detops": detops.__version__,
        "build": detops.build_info(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def discover_ops() -> list[str]:
    from . import ops as ops_pkg

    return sorted(m.name for m in pkgutil.iter_modules(ops_pkg.__path__) if not m.name.startswith("_"))


def run_case(case: BenchCase, device: str, args) -> dict:
    row = {"op": case.op, "name": case.name, "size": case.size, "baseline_name": case.baseline_name,
           "params": case.params}
    # Alternating samples of the two sides: a drift of a shared machine hits both.
    ours, ref = time_pair(case.detops, case.baseline, device, budget=0.0, sample_time=args.min_time,
                          min_samples=args.repeats, max_samples=args.repeats)
    row["detops_ms"] = median_ms(ours)
    row["baseline_ms"] = median_ms(ref)
    row["speedup"] = pair_speedup(ours, ref)
    if case.compiled is not None and args.compile:
        try:
            compiled = case.compiled()
            samples = time_callable(compiled, device, repeats=args.repeats, min_time=args.min_time)
            row["compiled_ms"] = median_ms(samples)
            row["speedup_vs_compiled"] = row["compiled_ms"] / row["detops_ms"]
        except Exception as exc:  # a rival that fails to compile is reported, not fatal
            row["compiled_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def format_table(rows: list[dict]) -> str:
    header = f"{'op':<20} {'case':<34} {'size':<24} {'detops ms':>10} {'baseline ms':>12} {'speed-up':>9} {'compiled ms':>12} {'vs compiled':>11}"
    lines = [header, "-" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['op']:<20} ERROR: {r['error']}")
            continue
        comp = f"{r['compiled_ms']:12.3f} {r['speedup_vs_compiled']:10.2f}x" if "compiled_ms" in r else f"{'-':>12} {'-':>11}"
        base = f"{r['baseline_ms']:12.3f} {r['speedup']:8.2f}x"
        name = f"{r['name']} (vs {r['baseline_name']})" if r["baseline_name"] != "torchvision" else r["name"]
        lines.append(f"{r['op']:<20} {name:<34} {r['size']:<24} {r['detops_ms']:10.3f} {base} {comp}")
    return "\n".join(lines)


def plot(rows: list[dict], env: dict, path: Path) -> bool:
    """Draw the chart; False (after a note naming the extra) without matplotlib."""
    matplotlib = optional_import("matplotlib", "bench", "the speed-up chart")
    if matplotlib is None:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if "speedup" in r]
    if not good:
        return False
    labels = [f"{r['name']} {r['size']}" for r in good]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(good) + 1.5))
    y = list(range(len(good)))
    has_compiled = any("speedup_vs_compiled" in r for r in good)
    offset = 0.2 if has_compiled else 0.0
    bars = ax.barh([i + offset for i in y], [r["speedup"] for r in good], height=0.4,
                   label="vs the eager baseline")
    ax.bar_label(bars, labels=[f"{r['speedup']:.1f}x" for r in good], fontsize=7, padding=2)
    if has_compiled:
        ax.barh([i - offset for i in y], [r.get("speedup_vs_compiled", 0) for r in good], height=0.4,
                label="vs torch.compile(baseline)")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speed-up of detops (higher is better, log scale)")
    ax.set_title(f"detops vs torchvision on {env['device_name']} ({env['device']})", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detops.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", default="", help="comma-separated op names (default: all); see --list")
    parser.add_argument("--list", action="store_true", help="list the benchmarked ops and exit")
    parser.add_argument("--quick", action="store_true", help="small sizes, no torch.compile rivals")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time torch.compile of the baseline (default: on unless --quick)")
    parser.add_argument("--repeats", type=int, default=7, help="samples per timing; the median is reported")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per sample (calls are batched)")
    parser.add_argument("--out", default="bench-out", help="folder for the JSON results and the PNG chart")
    parser.add_argument("--sweep", action="store_true",
                        help="the size sweep (bench/sweep.py): every op from tiny to full sizes; "
                             "writes OUT/sweep-<device>.json and .png")
    parser.add_argument("--budget", type=float, default=1.5, help="--sweep: seconds of timing per point")
    parser.add_argument("--max-call", type=float, default=float("inf"),
                        help="--sweep: where one call takes longer (seconds), time that point once per side")
    args = parser.parse_args(argv)
    if args.compile is None:
        args.compile = not args.quick
    all_ops = discover_ops()
    if args.list:
        print("\n".join(all_ops))
        return 0
    ops = [o for o in args.ops.split(",") if o] or all_ops
    unknown = sorted(set(ops) - set(all_ops))
    if unknown:
        parser.error(f"unknown ops {unknown}; choose from {all_ops}")

    if args.sweep:
        from .sweep import run_sweep

        return run_sweep(args.device, ops, Path(args.out), args.budget, environment(args.device), args.max_call)

    tqdm = optional_import("tqdm", "bench", "the progress bar")
    env = environment(args.device)
    print(f"detops bench on {env['device_name']} ({args.device}), torch {env['torch']}, "
          f"torchvision {env['torchvision']}, {'quick' if args.quick else 'full'} sizes", flush=True)
    cases: list[BenchCase] = []
    rows: list[dict] = []
    for op in ops:
        try:
            module = importlib.import_module(f"{__package__}.ops.{op}")
            cases.extend(module.cases(args.device, args.quick))
        except Exception as exc:
            rows.append({"op": op, "error": f"setup failed: {type(exc).__name__}: {exc}"[:300]})
            traceback.print_exc()
    progress = cases if tqdm is None else tqdm.tqdm(cases, desc="benchmarks", unit="case", file=sys.stderr)
    for case in progress:
        try:
            rows.append(run_case(case, args.device, args))
        except Exception as exc:
            rows.append({"op": case.op, "name": case.name, "error": f"{type(exc).__name__}: {exc}"[:300]})
            traceback.print_exc()
    print(format_table(rows))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{args.device.split(':')[0]}{'-quick' if args.quick else ''}"
    (out / f"{stem}.json").write_text(json.dumps({"environment": env, "results": rows}, indent=2))
    drawn = plot(rows, env, out / f"{stem}.png")
    print(f"wrote {out / (stem + '.json')}" + (f" and {out / (stem + '.png')}" if drawn else ""))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
