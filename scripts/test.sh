#!/usr/bin/env bash
# Set up from nothing (scripts/setup.sh) and run the whole test suite on every
# device present (CPU always; CUDA when there is a GPU; Triton kernels under
# TRITON_INTERPRET=1 on CPU tensors when there is not). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${DETOPS_VENV:-.venv}/bin/python" -m pytest tests -q -p no:cacheprovider --durations=15 "$@"
