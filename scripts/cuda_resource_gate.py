"""Resource gate for the CUDA kernels: compiles every csrc/*/*_cuda.cu for the
shipped architectures with ``-Xptxas -v`` and fails on

* register spills (spill stores or loads),
* local-memory stack use (a stack frame: arrays indexed at run time, big structs),
* shared memory over sm_90's 227 KiB per block,
* a kernel whose launch configuration cannot fit its registers (registers,
  allocated per warp in units of 256, times the warps of its largest block,
  over the 64 Ki registers of a multiprocessor). The block sizes come from the
  emulated test run's launch log (DETOPS_EMU_LAUNCH_LOG, written by
  scripts/test_cuda_emulated.sh); kernels it never saw are reported, not gated.

Writes the table (registers, shared memory, stack, spills, largest block per
kernel and architecture) to --out (default build/cuda-resources.md; the
committed copy is bench/results/cuda-resources.md).
Without nvcc it says so and exits 0 (the CPU-only CI tier has no toolkit).

    python scripts/cuda_resource_gate.py [--archs 9.0a,7.5] [--launch-log FILE] [--out FILE]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_REGS_PER_SM = 65536
MAX_SMEM = 227 * 1024
DEFAULT_ARCHS = "9.0a,7.5"  # TORCH_CUDA_ARCH_LIST's default "9.0a;7.5+PTX": sm_90a code, PTX JIT'd from 7.5

ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(\S+)'")
PROPS = re.compile(r"Function properties for (\S+)")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers")
SMEM = re.compile(r"(\d+) bytes smem")


def find_nvcc() -> str | None:
    for base in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if base and (Path(base) / "bin" / "nvcc").exists():
            return str(Path(base) / "bin" / "nvcc")
    return shutil.which("nvcc")


def gencode(arch: str) -> list[str]:
    num = arch.replace(".", "")
    return ["-gencode", f"arch=compute_{num},code=sm_{num}"]


def compile_one(nvcc: str, src: Path, arch: str) -> str:
    # The main build's flags (CMakeLists.txt), one architecture at a time;
    # through ccache when present (it keeps ptxas's report with the object).
    obj = Path(tempfile.gettempdir()) / f"detops-gate-{os.getpid()}-{src.stem}-{arch}.o"
    cmd = [nvcc, "-std=c++20", "-O3", "--expt-relaxed-constexpr", "-Xptxas", "-v", *gencode(arch),
           f"-I{ROOT / 'csrc'}", "-c", str(src), "-o", str(obj)]
    if shutil.which("ccache"):
        cmd.insert(0, "ccache")
    p = subprocess.run(cmd, capture_output=True, text=True)
    obj.unlink(missing_ok=True)
    if p.returncode != 0:
        raise SystemExit(f"nvcc failed on {src} ({arch}):\n{p.stderr}")
    return p.stderr


def parse(log: str) -> dict[str, dict]:
    """{mangled name: {regs, smem, stack, spill_st, spill_ld}} from ptxas -v output."""
    kernels: dict[str, dict] = {}
    entries = set()
    current = None
    for line in log.splitlines():
        if m := ENTRY.search(line):
            entries.add(m.group(1))
        elif m := PROPS.search(line):
            current = m.group(1)
            kernels.setdefault(current, {"regs": 0, "smem": 0, "stack": 0, "spill_st": 0, "spill_ld": 0})
        elif (m := FRAME.search(line)) and current:
            kernels[current].update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        elif (m := USED.search(line)) and current:
            smem = SMEM.search(line)
            kernels[current].update(regs=int(m.group(1)), smem=int(smem.group(1)) if smem else 0)
    return {k: v for k, v in kernels.items() if k in entries}


def demangle(names: list[str]) -> dict[str, str]:
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out))


def without_params(pretty: str) -> str:
    """Drops the parameter list: the first "(" outside template arguments (a
    template argument such as "(detops::box_iou::Variant)0" has one inside)."""
    depth = 0
    for i, ch in enumerate(pretty):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            return pretty[:i]
    return pretty


def base_name(pretty: str) -> str:
    """'void detops::nms::(anonymous namespace)::mask_kernel<float>(...)' -> 'nms::mask_kernel'."""
    s = re.sub(r"^void ", "", pretty).replace("(anonymous namespace)::", "").replace("{anonymous}::", "")
    depth, cut = 0, len(s)
    for i, ch in enumerate(s):  # drop template arguments and the parameter list
        if ch in "<(" and depth == 0:
            cut = i
            break
    s = s[:cut]
    parts = [p for p in re.split(r"::", s) if p and "anonymous" not in p and p not in ("detops", "detops_emu")]
    return "::".join(parts[-2:])


def launch_sizes(path: Path | None) -> dict[str, int]:
    """Largest block (threads) per kernel base name from the emulator's launch log."""
    sizes: dict[str, int] = {}
    if path is None or not path.exists():
        return sizes
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            name = base_name(parts[0].replace("{anonymous}::", ""))
            sizes[name] = max(sizes.get(name, 0), int(parts[1]))
    return sizes


def regs_fit(regs: int, threads: int) -> bool:
    per_warp = ((max(regs, 1) * 32 + 255) // 256) * 256
    return per_warp * ((threads + 31) // 32) <= MAX_REGS_PER_SM and regs <= 255


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default=os.environ.get("DETOPS_GATE_ARCHS", DEFAULT_ARCHS))
    ap.add_argument("--launch-log", type=Path, default=ROOT / "build" / "cuda_emulated" / "launches.tsv")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "cuda-resources.md")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    nvcc = find_nvcc()
    if nvcc is None:
        print("cuda_resource_gate: nvcc not found, gate SKIPPED")
        return 0
    sources = sorted((ROOT / "csrc").glob("*/*_cuda.cu"))
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    jobs = [(src, arch) for src in sources for arch in archs]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        logs = list(pool.map(lambda j: compile_one(nvcc, *j), jobs))
    sizes = launch_sizes(args.launch_log)
    rows, failures = [], []
    for (src, arch), log in zip(jobs, logs):
        kernels = parse(log)
        pretty = demangle(list(kernels))
        for mangled, k in sorted(kernels.items(), key=lambda kv: pretty[kv[0]]):
            name = pretty[mangled]
            short = without_params(name.replace("void ", "").replace("(anonymous namespace)::", ""))
            short = short.replace("detops::", "")
            threads = sizes.get(base_name(name))
            fit = "-" if threads is None else ("yes" if regs_fit(k["regs"], threads) else "NO")
            problems = []
            if k["spill_st"] or k["spill_ld"]:
                problems.append(f"spills {k['spill_st']}/{k['spill_ld']} bytes")
            if k["stack"]:
                problems.append(f"{k['stack']} bytes stack frame (local memory)")
            if k["smem"] > MAX_SMEM:
                problems.append(f"{k['smem']} bytes shared memory")
            if fit == "NO":
                problems.append(f"{k['regs']} registers x {threads} threads do not fit")
            if problems:
                failures.append(f"{arch} {short}: " + ", ".join(problems))
            rows.append((src.parent.name, arch, short, k["regs"], k["smem"], k["stack"], k["spill_st"], k["spill_ld"],
                         threads if threads is not None else "-", fit))
    nvcc_version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    lines = [
        "# CUDA kernel resources (ptxas -v)",
        "",
        f"Generated by `python scripts/cuda_resource_gate.py` ({nvcc_version}; archs {', '.join(archs)}).",
        "Block = the largest block the emulated tests launched the kernel with; fit = its registers fit",
        "one multiprocessor's 64 Ki registers at that block size.",
        "",
        "| op | arch | kernel | registers | smem (B) | stack (B) | spill st (B) | spill ld (B) | block | fit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"cuda_resource_gate: {len(rows)} kernels x archs, table in {args.out}")
    if not sizes:
        print(f"cuda_resource_gate: no launch log at {args.launch_log}: register fit not checked")
    if failures:
        print("cuda_resource_gate: FAILED\n  " + "\n  ".join(failures))
        return 1
    print("cuda_resource_gate: no spills, no stack frames, every checked launch fits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
