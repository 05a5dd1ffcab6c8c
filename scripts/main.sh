#!/usr/bin/env bash
# Set up from nothing (scripts/setup.sh) and run the main job: every op against
# torchvision on the current device (CUDA when present, else CPU), printing the
# table and writing bench-out/bench-<device>.json and .png. Extra arguments go
# to `python -m detops.bench` (e.g. --quick, --ops box_iou,nms).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${DETOPS_VENV:-.venv}/bin/python" -m detops.bench "$@"
