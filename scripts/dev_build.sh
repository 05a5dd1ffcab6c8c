#!/usr/bin/env bash
# Rebuild detops in place (editable install) during development. Several
# people or agents may share one checkout, so builds take a lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec flock "${TMPDIR:-/tmp}/detops-build.lock" \
  "$PY" -m pip install --no-build-isolation --no-deps -q -e . "$@"
