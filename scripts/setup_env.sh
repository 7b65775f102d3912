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
  # onnxmltools 1.11.2 imports pkg_resources, which setuptools 81 and later no longer
  # ship (a package such as torch from the bench extra may pull a newer one in).
  .venv/bin/python -m pip install --quiet "setuptools<81"
  # imgaug carries the one real annotated photo (quokka) used by the detector tests;
  # importing imgaug needs OpenCV, but its data files are read directly: no deps.
  .venv/bin/python -m pip install --quiet --no-deps "imgaug==0.4.0"
  # tests/test_explore.py opens the explore() reports in the system's chromium, driven by
  # playwright (its own browser download is not used). Install it when missing and we
  # may; otherwise those tests skip and say why.
  if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
        >/dev/null) || echo "setup_env.sh: could not install chromium; the browser tests will skip"
    else
      echo "setup_env.sh: no chromium found (install it, e.g. 'sudo apt-get install chromium'," \
           "or set TOOLKIT_CHROMIUM); the browser tests will skip"
    fi
  fi
else
  .venv/bin/python -m pip install --quiet -e ".[data]"
fi
