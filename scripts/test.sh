#!/usr/bin/env bash
# Set up from nothing (scripts/setup.sh) and run the whole test suite on every
# device present (CPU always; CUDA when there is a GPU; Triton kernels under
# TRITON_INTERPRET=1 on CPU tensors when there is not). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
status=0
"${DETOPS_VENV:-.venv}/bin/python" -m pytest tests -q -p no:cacheprovider --durations=15 "$@" || status=$?
# The CUDA kernels on the CPU under the emulator (ASan + UBSan), then the
# resource gate (ptxas -v; skipped without nvcc), which reads the launch log.
bash scripts/test_cuda_emulated.sh || status=1
"${DETOPS_VENV:-.venv}/bin/python" scripts/cuda_resource_gate.py || status=1
exit $status
