#!/usr/bin/env bash
# Set up detops from nothing: a virtual environment (.venv) with torch,
# torchvision and the build/test tools, then build detops into it (editable).
# The C++ CPU kernels are always built; the CUDA kernels too when torch is a
# CUDA build and nvcc is found ($CUDA_HOME/bin, the usual toolkit folder, or
# PATH). Safe to run again: it reuses .venv and rebuilds incrementally.
#
#   DETOPS_VENV         where the environment goes (default .venv)
#   DETOPS_TORCH        the torch requirement (default torch==2.14.1)
#   DETOPS_TORCHVISION  the torchvision requirement (default torchvision==0.29.1)
#   TORCH_CUDA_ARCH_LIST  CUDA architectures (default "9.0a;7.5+PTX")
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${DETOPS_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

echo "== installing torch, torchvision and the build/test tools"
"$VPY" -m pip install -q "${DETOPS_TORCH:-torch==2.14.1}" "${DETOPS_TORCHVISION:-torchvision==0.29.1}"
"$VPY" -m pip install -q -r requirements-dev.txt

echo "== building detops (verbose: the compiler lines, nvcc included, are shown)"
mkdir -p build
log=build/build.log
if ! "$VPY" -m pip install --no-build-isolation --no-deps -v -e . -Cbuild.verbose=true >"$log" 2>&1; then
  tail -n 80 "$log"
  echo "== build FAILED (full log: $log)"
  exit 1
fi
grep -E "detops:|Building|nvcc|warning: |Successfully installed" "$log" || true
"$VPY" -c "import detops, json; print('== detops.build_info():', json.dumps(detops.build_info()))"
