#!/usr/bin/env bash
# The GPU suite, for a lent GPU machine (torch, nvcc, Triton, CMake, ninja,
# pybind11 and scikit-build-core installed; no package index reachable):
# build detops against that machine's own torch, run the test suite (CUDA
# included), run the benchmarks, and leave logs and results in OUTDIR.
# Designed to finish within 10 minutes on one H100.
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

{ nvidia-smi; nvcc --version; "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
  >"$OUT/environment.txt" 2>&1

echo "== build ($(date +%T))"
start=$(date +%s)
# Warnings stay warnings here: another compiler's new opinion must not stop a measurement.
if ! timeout 300 "$PY" -m pip install --no-build-isolation --no-deps --no-index -v . \
    -Ccmake.define.DETOPS_WERROR=OFF >"$OUT/build.log" 2>&1; then
  echo "build FAILED: see $OUT/build.log"; tail -n 40 "$OUT/build.log"; exit 1
fi
echo "   build took $(( $(date +%s) - start )) s"
"$PY" -c "import detops, json; print(json.dumps(detops.build_info()))" | tee "$OUT/build_info.json"

echo "== tests ($(date +%T))"
# Run from a copy-free path: the installed package, the repository's tests.
timeout 240 "$PY" -m pytest tests -q -p no:cacheprovider --junitxml="$OUT/junit.xml" --durations=20 \
  >"$OUT/tests.log" 2>&1 || status=1
tail -n 25 "$OUT/tests.log"

echo "== benchmarks ($(date +%T))"
timeout 240 "$PY" -m detops.bench --device cuda --out "$OUT" >"$OUT/bench.log" 2>&1 || status=1
grep -v "benchmarks:" "$OUT/bench.log" | tail -n 60
echo "== done ($(date +%T)), status $status"
exit $status
