#!/usr/bin/env bash
# Set up from nothing (scripts/setup.sh) and run the whole test suite on every
# device present (CPU always; CUDA when there is a GPU; Triton kernels under
# TRITON_INTERPRET=1 on CPU tensors when there is not); then the docs, the
# wheel (scripts/test_wheel.sh), the CUDA kernels under the emulator
# (scripts/test_cuda_emulated.sh) and the CUDA resource gate. Extra arguments
# go to the in-tree pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${DETOPS_VENV:-.venv}/bin/python" -m pytest tests -q -p no:cacheprovider --durations=15 "$@"
# The docs: built with warnings as errors, every example in them run
bash scripts/docs.sh
# The wheel a user installs: built, installed into a fresh environment, op tests against it
bash scripts/test_wheel.sh
# The CUDA kernels on the CPU under the emulator (ASan + UBSan), then the
# resource gate (ptxas -v; it says so and passes where there is no nvcc),
# which reads the emulated launch log for the block sizes.
bash scripts/test_cuda_emulated.sh
"${DETOPS_VENV:-.venv}/bin/python" scripts/cuda_resource_gate.py
