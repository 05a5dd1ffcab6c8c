#!/usr/bin/env bash
# Set up from nothing (scripts/setup.sh) and run the main job: every op against
# torchvision on the current device (CUDA when present, else CPU), printing the
# table and writing bench-out/bench-<device>.json and .png. Extra arguments go
# to `python -m detops.bench` (e.g. --quick, --ops box_iou,nms). Then the demo
# (python -m detops.demo): a detection training step and inference with detops
# in place of torchvision, checked equal, timed, scored, drawn to bench-out/demo.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${DETOPS_VENV:-.venv}/bin/python" -m detops.bench "$@"
"${DETOPS_VENV:-.venv}/bin/python" -m detops.demo
