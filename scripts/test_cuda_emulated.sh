#!/usr/bin/env bash
# The CUDA kernels on the CPU: builds tests/cuda_emulated (every csrc/*/*_cuda.cu
# under csrc/common/cuda_emulator.h, with ASan and UBSan) into
# build/cuda_emulated and runs tests/cuda_emulated against the CPU kernels.
# Needs the environment of scripts/setup.sh (.venv with torch, cmake, ninja)
# and g++ >= 12. Extra arguments go to pytest.
#
#   DETOPS_EMU_SEED   seed of the emulator's block order (default fixed)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DETOPS_VENV:-.venv}
PY="$VENV/bin/python"
export PATH="$PWD/$VENV/bin:$PATH"   # the venv's cmake and ninja
BUILD=build/cuda_emulated
CXX=${CXX:-g++}

launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
echo "== building the emulated CUDA kernels ($BUILD)"
cmake -S tests/cuda_emulated -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER="$CXX" \
  -DPython_EXECUTABLE="$PWD/$PY" "${launcher[@]}" >"$BUILD.configure.log" 2>&1 \
  || { cat "$BUILD.configure.log"; exit 1; }
# One build at a time on a shared machine: the lock scripts/dev_build.sh takes.
if command -v flock >/dev/null; then
  flock "${TMPDIR:-/tmp}/detops-build.lock" cmake --build "$BUILD"
else
  cmake --build "$BUILD"
fi

# The sanitizer runtimes must be loaded before anything else in the process.
preload="$($CXX -print-file-name=libasan.so) $($CXX -print-file-name=libubsan.so)"
echo "== emulated CUDA tests (ASan + UBSan)"
: >"$BUILD/launches.tsv"   # kernel, block threads, shared bytes per launch (for the resource gate)
DETOPS_EMU_LAUNCH_LOG="$PWD/$BUILD/launches.tsv" \
DETOPS_EMU_LIB="$PWD/$BUILD/libdetops_emu.so" \
LD_PRELOAD="$preload" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:${ASAN_OPTIONS:-}" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}" \
  "$PY" -m pytest tests/cuda_emulated -q -p no:cacheprovider "$@"
