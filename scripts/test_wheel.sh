#!/usr/bin/env bash
# Build the wheel a user would install, check it, install it into a fresh
# virtual environment that holds nothing but torch and torchvision (and the
# test runner), and run the op tests against the installed package from a
# directory that holds only a copy of the tests: anything missing from the
# wheel fails here. Then: mypy --strict on examples/typed_usage.py against the
# installed wheel, and the wheel under a torch it was not built for (torch 2.13
# CPU) must fail to import with an ImportError that names the torch it needs.
#
# Run by scripts/test.sh (after the in-tree suite); needs the development
# environment of scripts/setup.sh. Extra arguments go to pytest.
#   DETOPS_VENV             the development environment (default .venv)
#   DETOPS_WHEEL_WORK       scratch folder (default build/wheel-test; wiped)
#   DETOPS_OTHER_TORCH      the mismatched torch to try (default torch==2.13.0;
#                           empty to skip that step)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEV_PY=$ROOT/${DETOPS_VENV:-.venv}/bin/python
WORK=${DETOPS_WHEEL_WORK:-$ROOT/build/wheel-test}
OTHER_TORCH=${DETOPS_OTHER_TORCH-torch==2.13.0}
rm -rf "$WORK" && mkdir -p "$WORK"
t0=$SECONDS

echo "== building the wheel and repairing it (scripts/build_wheel.sh, as the docs show)"
# Same build folder as the editable install of scripts/setup.sh (build/<wheel
# tag>), so after set-up this is incremental.
if ! PYTHON="$DEV_PY" bash scripts/build_wheel.sh "$WORK/wheelhouse" >"$WORK/build_wheel.log" 2>&1; then
  cat "$WORK/build_wheel.log"; echo "== building or repairing the wheel FAILED"; exit 1
fi
WHEEL=$(ls "$WORK"/wheelhouse/detops-*manylinux*.whl)
"$DEV_PY" -m auditwheel show "$WHEEL" | tr '\n' ' ' | sed 's/  */ /g'; echo
"$DEV_PY" scripts/wheel_env.py check "$WHEEL"

echo "== a fresh virtual environment with only torch and torchvision (and pytest)"
# torch and torchvision come from the development environment through a .pth
# file naming a folder of links to exactly their distributions and what they
# require (no second multi-gigabyte install); detops comes only from the wheel.
"$DEV_PY" -m venv --without-pip "$WORK/venv"
VPY=$WORK/venv/bin/python
SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
"$DEV_PY" scripts/wheel_env.py link torch torchvision pytest expecttest --into "$WORK/deps"
echo "$WORK/deps" > "$SITE/detops-test-deps.pth"
# --no-index: the wheel's requirements (torch==X.Y.*, numpy) must be met by what
# is there, not downloaded.
"$DEV_PY" -m pip --python "$VPY" install -q --no-index "$WHEEL"
"$VPY" -c "import detops, json; print('detops.build_info():', json.dumps(detops.build_info()))"

echo "== the op tests against the installed wheel"
mkdir -p "$WORK/run/tests"
cp -r tests/__init__.py tests/conftest.py tests/helpers.py tests/ops "$WORK/run/tests/"
cp pyproject.toml "$WORK/run/"   # pytest's settings (markers) only; the run has no source
(
  cd "$WORK/run"
  "$VPY" - "$WORK/venv" <<'PY'
import sys, detops
venv = sys.argv[1]
assert detops.__file__.startswith(venv), f"detops imported from {detops.__file__}, not from the wheel in {venv}"
print(f"detops {detops.__version__} from {detops.__file__}")
PY
  "$VPY" -m pytest tests/ops -q -p no:cacheprovider -x "$@"
)

echo "== mypy --strict examples/typed_usage.py against the installed wheel"
"$DEV_PY" -m mypy --strict --no-incremental --python-executable "$VPY" examples/typed_usage.py
(cd "$WORK/run" && "$VPY" "$ROOT/examples/typed_usage.py")

if [ -n "$OTHER_TORCH" ]; then
  echo "== the wheel under $OTHER_TORCH: a clear ImportError, not a loader error"
  "$DEV_PY" -m venv --without-pip "$WORK/venv-other"
  OPY=$WORK/venv-other/bin/python
  OSITE=$("$OPY" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
  # torch's pure-Python requirements are shared with the development
  # environment; torch itself is the other version (installed, not linked).
  "$DEV_PY" scripts/wheel_env.py link filelock typing-extensions sympy networkx jinja2 fsspec numpy pytest \
    --into "$WORK/deps-other"
  echo "$WORK/deps-other" > "$OSITE/detops-test-deps.pth"
  # --no-deps: with its requirements, pip would replace this torch by the one
  # the wheel pins; --no-compile: no bytecode for torch's thousands of modules.
  "$DEV_PY" -m pip --python "$OPY" install -q --no-deps --no-compile "$OTHER_TORCH"
  "$DEV_PY" -m pip --python "$OPY" install -q --no-deps "$WHEEL"
  (cd "$WORK/run" && cp "$ROOT/tests/test_packaging.py" tests/ &&
   DETOPS_EXPECT_TORCH_MISMATCH=1 "$OPY" -m pytest tests/test_packaging.py -q -p no:cacheprovider --noconftest \
     -k under_another_torch)
fi
echo "== wheel checks passed in $((SECONDS - t0)) s: $(basename "$WHEEL")"
