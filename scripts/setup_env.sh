#!/usr/bin/env bash
# Create .venv and install the toolkit into it (editable). With "test": the test extra,
# plus the Core ML -> ONNX converter used to check exports. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install --quiet -e ".[test]"
  # onnxmltools 1.12+ has a broken Core ML converter, and 1.11.2's declared
  # dependencies would pull an onnx that lacks a helper it needs: pin, no deps.
  .venv/bin/python -m pip install --quiet --no-deps "onnxmltools==1.11.2" \
      "onnxconverter-common==1.13.0" "onnx>=1.16,<1.18"
  # imgaug carries the one real annotated photo (quokka) used by the detector tests;
  # importing imgaug needs OpenCV, but its data files are read directly: no deps.
  .venv/bin/python -m pip install --quiet --no-deps "imgaug==0.4.0"
else
  .venv/bin/python -m pip install --quiet -e ".[data]"
fi
