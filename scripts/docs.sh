#!/usr/bin/env bash
# Build the documentation (HTML into build/docs-html) and run every example in
# it: the guides' testcode blocks and the docstrings' >>> examples (Sphinx's
# doctest builder). Offline: no intersphinx, the bundled theme. Warnings are
# errors, and so is a public name without a docstring. Needs the docs extra
# (pip install -e .[docs]; scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${DETOPS_VENV:-.venv}/bin/python
"$PY" -m sphinx -W --keep-going -q -b html docs build/docs-html
"$PY" -m sphinx -W --keep-going -q -b doctest docs build/docs-doctest
tail -n 5 build/docs-doctest/output.txt
echo "== docs: build/docs-html/index.html"
