#!/usr/bin/env bash
# The GPU suite, for a lent GPU machine (torch, nvcc, Triton, CMake, ninja,
# pybind11 and scikit-build-core installed; no package index reachable):
# build detops against that machine's own torch, run the test suite (CUDA
# included), run the emulated suite's cases on the GPU (tests/cuda_emulated
# with DETOPS_EMU_DEVICE=cuda: hardware against the CPU kernels, as the
# emulator was), compute-sanitizer memcheck and racecheck over those cases,
# run the benchmarks, and leave logs and results in OUTDIR. Each stage gets
# at most what is left of a 10-minute budget (it is cut off, not the suite).
#
#   bash bench/gpu_suite.sh OUTDIR
#
# Commit OUTDIR's results.json/.png under bench/results/<card>/ afterwards.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/gpu_suite.sh OUTDIR}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}   # this card only: a faster build
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
status=0
suite_start=$(date +%s)
# Seconds a stage may take: its cap, or what is left of the 570 s budget.
left() { local cap=$1 rest=$(( 570 - ($(date +%s) - suite_start) )); [ "$rest" -lt "$cap" ] && cap=$rest; [ "$cap" -lt 10 ] && cap=10; echo "$cap"; }

{ nvidia-smi; nvcc --version; "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
  >"$OUT/environment.txt" 2>&1

echo "== build ($(date +%T))"
start=$(date +%s)
# Warnings stay warnings here: another compiler's new opinion must not stop a measurement.
if ! timeout "$(left 240)" "$PY" -m pip install --no-build-isolation --no-deps --no-index -v . \
    -Ccmake.define.DETOPS_WERROR=OFF >"$OUT/build.log" 2>&1; then
  echo "build FAILED: see $OUT/build.log"; tail -n 40 "$OUT/build.log"; exit 1
fi
echo "   build took $(( $(date +%s) - start )) s"
"$PY" -c "import detops, json; print(json.dumps(detops.build_info()))" | tee "$OUT/build_info.json"

echo "== tests ($(date +%T))"
# Run from a copy-free path: the installed package, the repository's tests.
timeout "$(left 180)" "$PY" -m pytest tests -q -p no:cacheprovider --junitxml="$OUT/junit.xml" --durations=20 \
  >"$OUT/tests.log" 2>&1 || status=1
tail -n 25 "$OUT/tests.log"

echo "== emulated suite's cases on the GPU ($(date +%T))"
export DETOPS_EMU_DEVICE=cuda
timeout "$(left 60)" "$PY" -m pytest tests/cuda_emulated -q -p no:cacheprovider --junitxml="$OUT/junit-emulated-cases.xml" \
  >"$OUT/emulated-cases.log" 2>&1 || status=1
tail -n 5 "$OUT/emulated-cases.log"

# compute-sanitizer over the same small cases: every CUDA kernel, forward and
# backward, each dtype and layout (the device-assert test skips itself).
if command -v compute-sanitizer >/dev/null || [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
  CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer --tool $tool ($(date +%T))"
    timeout "$(left 75)" "$CS" --tool "$tool" --error-exitcode 99 --print-limit 50 \
      "$PY" -m pytest tests/cuda_emulated -q -p no:cacheprovider -x >"$OUT/sanitizer-$tool.log" 2>&1 || status=1
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed" "$OUT/sanitizer-$tool.log" | tail -n 3
  done
else
  echo "compute-sanitizer not found: memcheck/racecheck SKIPPED" | tee "$OUT/sanitizer-skipped.txt"
fi
unset DETOPS_EMU_DEVICE

echo "== benchmarks ($(date +%T))"
timeout "$(left 150)" "$PY" -m detops.bench --device cuda --out "$OUT" >"$OUT/bench.log" 2>&1 || status=1
grep -v "benchmarks:" "$OUT/bench.log" | tail -n 60
echo "== done ($(date +%T)), status $status"
exit $status
